"""experiments/closed_form.py: smoke preset end to end, resume, LR lookup, bad input."""
import csv
import subprocess
import sys

import pytest

import closed_form
from fgexp.lr_search import lookup_lr, merge_rows


def _write_rates(path, cone: bool, lr: float = 1e-3):
    """An LR table with one rate for every smoke setting (fixed, not searched)."""
    config = closed_form.PRESETS["smoke"]
    rows = []
    for _, cell in closed_form.cells(config, cone):
        for s in cell["settings"]:
            rows.append({**s, "lr": lr, "loss": 0.0, "evaluations": 1, "backend": "grid"})
    merge_rows(path, ("function", "n", "angle_deg"), rows)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_smoke_preset_end_to_end_and_resume(tmp_path, capsys):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    _write_rates(table, cone=True)
    out = tmp_path / "out"
    base = ["--preset", "smoke", "--out", str(out), "--lr-table", str(table), "--no-progress"]
    assert closed_form.main(base) == 0
    assert closed_form.main([*base, "--cone"]) == 0
    rows = _rows(out / "closed_form.csv")
    with open(out / "closed_form.csv") as fh:
        assert fh.readline().strip() == ",".join(closed_form.COLUMNS)
    normal = [r for r in rows if r["sampler"] != "cone"]
    cone = [r for r in rows if r["sampler"] == "cone"]
    assert len(normal) == 3 * 2 * 4 * 2          # functions x n x gradients x seeds
    assert len(cone) == 1 * 1 * 2 * 2 * 2        # function x n x angles x gradients x seeds
    for r in rows:
        assert r["stop_reason"] in ("max_steps", "no_improvement", "diverged")
        assert int(r["steps"]) <= 200 and r["mode"] == "forward"
        assert float(r["best_value"]) <= float(r["final_value"]) or r["stop_reason"] != "max_steps"
    bp = [r for r in rows if r["gradient"] == "bp"]
    assert bp and all(r["k"] == "" and r["sampler"] == "" for r in bp)
    assert {r["angle_deg"] for r in cone} == {"45.0", "90.0"}
    # gradient descent made progress on the sphere
    sphere = [r for r in normal if r["function"] == "sphere" and r["gradient"] == "bp"]
    assert all(float(r["best_value"]) < 16.0 * 0.5 for r in sphere if r["n"] == "16")
    capsys.readouterr()
    assert closed_form.main(base) == 0
    assert "0 cells computed" in capsys.readouterr().out
    assert len(_rows(out / "closed_form.csv")) == len(rows)


def test_simulated_mode_gives_the_same_runs(tmp_path):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    results = {}
    for mode in ("forward", "simulated"):
        out = tmp_path / mode
        assert closed_form.main(["--functions", "rosenbrock", "--n", "16", "--mode", mode,
                                 "--max-steps", "100", "--out", str(out), "--lr-table",
                                 str(table), "--no-progress"]) == 0
        results[mode] = {(r["gradient"], r["k"], r["seed"]): float(r["best_value"])
                         for r in _rows(out / "closed_form.csv")}
    assert results["forward"].keys() == results["simulated"].keys()
    for key, value in results["forward"].items():
        assert value == pytest.approx(results["simulated"][key], rel=1e-4)


def test_missing_rate_names_the_search_command(tmp_path, capsys):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    out = tmp_path / "out"
    code = closed_form.main(["--functions", "sphere", "--n", "3", "--out", str(out),
                             "--lr-table", str(table)])
    err = capsys.readouterr().err
    assert code == 2
    assert "lr_search.py --backend grid" in err and "--select n=3" in err
    assert not out.exists()                          # nothing written before the check


@pytest.mark.parametrize("args,message", [
    (["--functions", "nope"], "unknown function"),
    (["--gradients", "frog:0"], "k must be >= 1"),
    (["--gradients", "magic:2"], "unknown gradient"),
    (["--angles", "30"], "only with --cone"),
    (["--cone", "--angles", "120"], "cone angles"),
    (["--cone", "--gradients", "bp"], "bp has no tangents"),
    (["--patience", "0"], "patience"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = closed_form.main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_help_runs_as_a_script(repo_root):
    proc = subprocess.run([sys.executable, str(repo_root / "experiments" / "closed_form.py"),
                           "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--cone" in proc.stdout and "--lr-table" in proc.stdout


def test_k_flag_replaces_every_forward_gradient_k():
    args = closed_form.parse(["--gradients", "bp,fg-mean:1,frog:4", "--k", "2,8"])
    config = closed_form.resolve(args)
    assert config.gradients == ("bp", "fg-mean:2", "fg-mean:8", "frog:2", "frog:8")


def test_committed_table_has_every_paper_rate(repo_root):
    """results/lrs/closed_form.csv covers Figure 4's and Figure 5b's settings."""
    config = closed_form.PRESETS["paper"]
    table = repo_root / "results" / "lrs" / "closed_form.csv"
    for cone in (False, True):
        for _, cell in closed_form.cells(config, cone):
            for s in cell["settings"]:
                assert lookup_lr(table, s, closed_form.search_command(s, cone)) > 0


def test_only_runs_a_subset_and_later_runs_add_the_rest(tmp_path, capsys):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    base = ["--preset", "smoke", "--out", str(tmp_path / "out"), "--lr-table", str(table),
            "--no-progress", "--max-steps", "20"]
    assert closed_form.main([*base, "--only", "function=sphere", "--only", "n=2"]) == 0
    rows = _rows(tmp_path / "out" / "closed_form.csv")
    assert {(r["function"], r["n"]) for r in rows} == {("sphere", "2")}
    capsys.readouterr()
    assert closed_form.main(base) == 0
    assert "5 cells computed, 1 already done" in capsys.readouterr().out
    assert closed_form.main([*base, "--only", "bogus=1"]) == 2


def test_full_horizon_refinement_merges_grid_full_rows(tmp_path):
    import closed_form_refine_lrs
    table = tmp_path / "lrs.csv"
    rows = [{"function": "sphere", "n": 2, "angle_deg": None, "gradient": g, "k": k,
             "sampler": None if g == "bp" else "normal", "lr": 0.01, "loss": 1.0,
             "evaluations": 1, "backend": "grid"} for g, k in (("bp", None), ("frog", 2))]
    merge_rows(table, ("function", "n", "angle_deg"), rows)
    assert closed_form_refine_lrs.main(["--function", "sphere", "--n", "2", "--gradients",
                                        "bp,frog:2", "--lr-table", str(table)]) == 0
    refined = _rows(table)
    assert {r["backend"] for r in refined} == {"grid-full"} and len(refined) == 2
    # on the Sphere a larger rate is better within [0.01 / 10^1.25, 0.01 * 10^0.25]
    assert all(float(r["lr"]) == pytest.approx(0.01 * 10 ** 0.25) for r in refined)
