"""Closed-form descent as an experiment: config, cells, the engine against the Sphere's closed
form, the script end to end (real processes), resume, LR lookup, bad input."""
import csv

import pytest

from fgexp import closed_form as cf
from fgexp.lr.table import lookup_lr, merge_rows

SCRIPT = "experiments/closed_form.py"


def _write_rates(path, cone: bool, lr: float = 1e-3, config=cf.PRESETS["smoke"]):
    """An LR table with one rate for every setting of `config` (fixed, not searched)."""
    rows = []
    for _, cell in cf.cells(config, cone):
        for s in cell["settings"]:
            rows.append({**s, "lr": lr, "loss": 0.0, "evaluations": 1, "backend": "grid"})
    merge_rows(path, ("function", "n", "angle_deg"), rows)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_smoke_preset_end_to_end_and_resume(tmp_path, script):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    _write_rates(table, cone=True)
    out = tmp_path / "out"
    base = ["--preset", "smoke", "--out", out, "--lr-table", table, "--no-progress"]
    for extra in ([], ["--cone"]):
        done = script(SCRIPT, *base, *extra)
        assert done.returncode == 0, done.stderr
    rows = _rows(out / "closed_form.csv")
    with open(out / "closed_form.csv") as fh:
        assert fh.readline().strip() == ",".join(cf.COLUMNS)
    normal = [r for r in rows if r["sampler"] != "cone"]
    cone = [r for r in rows if r["sampler"] == "cone"]
    assert len(normal) == 3 * 2 * 4 * 2          # functions x n x gradients x seeds
    assert len(cone) == 1 * 1 * 2 * 2 * 2        # function x n x angles x gradients x seeds
    minimum = {"sphere": 0.0, "rosenbrock": 0.0, "styblinski-tang": -39.16617}
    for r in rows:
        assert r["stop_reason"] in ("max_steps", "no_improvement", "diverged")
        assert int(r["steps"]) <= 200 and r["mode"] == "forward"
        # no run goes below the function's global minimum (per dimension for Styblinski-Tang)
        n = int(r["n"]) if r["function"] == "styblinski-tang" else 1
        assert float(r["best_value"]) >= minimum[r["function"]] * n - 1e-3
    bp = [r for r in rows if r["gradient"] == "bp"]
    assert bp and all(r["k"] == "" and r["sampler"] == "" for r in bp)
    assert {r["angle_deg"] for r in cone} == {"45.0", "90.0"}
    # bp on the Sphere from -1: x_t = (1 - 2 lr)^t x_0, so f after 200 steps is n (1 - 2 lr)^400
    for r in (r for r in bp if r["function"] == "sphere"):
        assert r["stop_reason"] == "max_steps" and r["steps"] == "200"
        exact = int(r["n"]) * (1 - 2e-3) ** 400
        assert float(r["best_value"]) == pytest.approx(exact, rel=1e-4)
        assert float(r["final_value"]) == pytest.approx(exact, rel=1e-4)
    before = (out / "closed_form.csv").read_bytes()
    again = script(SCRIPT, *base)
    assert again.returncode == 0 and "0 cells computed" in again.stdout
    assert (out / "closed_form.csv").read_bytes() == before


def test_simulated_mode_gives_the_same_runs(tmp_path):
    config = cf.resolve(cf.PRESETS["smoke"], {"functions": ["rosenbrock"], "n": [16],
                                              "max_steps": 100})
    (_, cell), = cf.cells(config)
    for s in cell["settings"]:
        s["lr"] = 1e-3
    runs = {}
    for mode in ("forward", "simulated"):
        rows = cf.run_cell(cf.resolve(config, {"mode": mode}), cell)
        runs[mode] = {(r["gradient"], r["k"], r["seed"]): r["best_value"] for r in rows}
    assert runs["forward"].keys() == runs["simulated"].keys() and len(runs["forward"]) == 8
    for key, value in runs["forward"].items():
        assert value == pytest.approx(runs["simulated"][key], rel=1e-4)


def test_missing_rate_names_the_search_command(tmp_path, script):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    out = tmp_path / "out"
    done = script(SCRIPT, "--functions", "sphere", "--n", "3", "--out", out, "--lr-table", table)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "lr_search.py --backend grid" in done.stderr and "--select n=3" in done.stderr
    assert not out.exists()                          # nothing written before the check


@pytest.mark.parametrize("overrides,cone,message", [
    ({"functions": ["nope"]}, False, "unknown function"),
    ({"gradients": ["frog:0"]}, False, "k must be >= 1"),
    ({"gradients": ["magic:2"]}, False, "unknown gradient"),
    ({"k": [0]}, False, "every k must be >= 1"),
    ({"angles": [30.0]}, False, "only with --cone"),
    ({"angles": [120.0]}, True, "cone angles"),
    ({"gradients": ["bp"]}, True, "bp has no tangents"),
    ({"n": [1]}, True, "needs n >= 2"),
    ({"patience": 0}, False, "patience"),
    ({"max_steps": 0}, False, "max-steps"),
    ({"dtype": "float16"}, False, "dtype"),
])
def test_bad_settings_are_one_value_error(overrides, cone, message):
    with pytest.raises(ValueError, match=message):
        cf.validate(cf.resolve(cf.PRESETS["smoke"], overrides, cone), cone)


def test_gradients_and_k_follow_the_one_rule():
    paper = cf.PRESETS["paper"]
    # --k alone: every forward gradient of the preset takes each k (bp stays)
    assert cf.resolve(paper, {"k": [2, 8]}).gradients == (
        "bp", "fg-mean:2", "fg-mean:8", "frog:2", "frog:8")
    assert cf.resolve(paper, {"k": [8]}, cone=True).cone_gradients == ("fg-mean:8", "frog:8")
    # with --gradients: an explicit :k wins, a bare label takes --k (or k = 1 without it)
    assert cf.resolve(paper, {"gradients": ["bp", "fg-mean:1", "frog"], "k": [2, 8]}).gradients \
        == ("bp", "fg-mean:1", "frog:2", "frog:8")
    assert cf.resolve(paper, {"gradients": ["bp", "frog"]}).gradients == ("bp", "frog:1")
    assert cf.resolve(paper, {}).gradients == paper.gradients


def test_committed_table_has_every_paper_rate(repo_root):
    """results/lrs/closed_form.csv covers Figure 4's and Figure 5b's settings."""
    config = cf.PRESETS["paper"]
    table = repo_root / "results" / "lrs" / "closed_form.csv"
    for cone in (False, True):
        for _, cell in cf.cells(config, cone):
            for s in cell["settings"]:
                assert lookup_lr(table, s, cf.search_command(s, cone)) > 0


def test_select_cells():
    all_cells = cf.cells(cf.PRESETS["smoke"])
    chosen = cf.select_cells(all_cells, ["function=sphere,rosenbrock", "n=2"])
    assert [cid for cid, _ in chosen] == ["normal/sphere/n=2", "normal/rosenbrock/n=2"]
    for only, message in ((["bogus=1"], "expected --only"), (["n=3"], "no cell matches")):
        with pytest.raises(ValueError, match=message):
            cf.select_cells(all_cells, only)


def test_only_runs_a_subset_and_later_runs_add_the_rest(tmp_path, script):
    table = tmp_path / "lrs.csv"
    _write_rates(table, cone=False)
    base = ["--preset", "smoke", "--out", tmp_path / "out", "--lr-table", table,
            "--no-progress", "--max-steps", "20"]
    assert script(SCRIPT, *base, "--only", "function=sphere", "--only", "n=2").returncode == 0
    rows = _rows(tmp_path / "out" / "closed_form.csv")
    assert {(r["function"], r["n"]) for r in rows} == {("sphere", "2")}
    rest = script(SCRIPT, *base)
    assert rest.returncode == 0 and "5 cells computed, 1 already done" in rest.stdout
