"""LR recipes, diverging rates and bad LR-side inputs (fgexp.lr, experiments/lr_search.py)."""
from __future__ import annotations

import json
import math
import os

import pytest

from fgexp.lr import recipes
from fgexp.lr.closed_form import FullHorizonConfig, refine_full_horizon
from fgexp.lr.grid import GridConfig, grid_evaluate
from fgexp.lr.registry import get_task, parse_selection, select_settings
from fgexp.lr.table import (LRTableError, MissingLearningRate, lookup_lr, merge_rows, read_table,
                            setting_key)

from lr_cli import COLUMNS, ROOT, TINY, lr_search  # tests/lr_cli.py, shared with test_lr_search.py

LRS = ROOT / "results" / "lrs"
COLUMNS_FC = ("model", "dataset", "width")


def one_line(result, status: int = 2) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- recipes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_recipe_leaves_the_committed_tables_settings_backends_and_evaluations(name):
    """No compute: every committed row is the one the recipe's last covering stage writes."""
    recipe = recipes.get_recipe(name)
    task = recipe.stages[0].make_task()
    committed = {setting_key(r, task.setting_columns): (r["backend"], int(r["evaluations"]))
                 for r in read_table(recipe.lr_dir(LRS) / f"{recipe.table}.csv",
                                     task.setting_columns)}
    expected = recipes.expected_rows(recipe)
    assert committed.keys() == expected.keys()  # every setting searched, nothing else
    for key, (backend, evaluations) in committed.items():
        assert backend == expected[key][0] and evaluations in expected[key][1], key


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_each_committed_table_names_its_make_target(name):
    recipe = recipes.get_recipe(name)
    sidecar = json.loads((recipe.lr_dir(LRS) / f"{recipe.table}.recipe.json").read_text())
    assert sidecar["make_target"] == f"lrs-{name}" and sidecar["table"] == f"{recipe.table}.csv"
    assert len(sidecar["stages"]) == len(recipe.stages)
    makefile = (ROOT / "Makefile").read_text()
    assert f"\nlrs-{name}:" in makefile and f"--recipe {name}" in makefile


def test_fc_recipe_searches_the_full_training_horizon():
    listing = recipes.listing(recipes.get_recipe("fc-cpu"))
    stages = [line for line in listing if line.startswith("# stage")]
    assert len(stages) == 16 and all("horizon 200 epoch(s)" in s for s in stages)
    assert all("3 per decade, seeds 0," in s for s in stages)  # 3 rates, 0.3 decades apart
    assert sum(not line.startswith("#") for line in listing) == 16


def test_recipe_list_settings_cli_and_refusals(tmp_path):
    listed = lr_search("--recipe", "closed-form", "--select", "function=rosenbrock",
                       "--select", "n=2", "--list-settings")
    assert listed.returncode == 0, listed.stderr
    headers = [line for line in listed.stdout.splitlines() if line.startswith("# stage")]
    assert len(headers) == 2 and "horizon 2500 steps" in headers[0]
    assert "grid-full" in headers[1] and "horizon 25000 steps" in headers[1]
    assert "--lo" in one_line(lr_search("--recipe", "fc-cpu", "--lo", "-3"))
    assert "unknown recipe" in one_line(lr_search("--recipe", "nope"))


def test_closed_form_recipe_reproduces_committed_rates(tmp_path):
    """A cheap slice of make lrs-closed-form (Sphere, n = 2: 8 settings) into a scratch dir."""
    result = lr_search("--recipe", "closed-form", "--select", "function=sphere",
                       "--select", "n=2", "--lr-dir", tmp_path, "--no-progress")
    assert result.returncode == 0, result.stderr
    committed = {setting_key(r, COLUMNS): r for r in read_table(LRS / "closed_form.csv", COLUMNS)}
    rows = read_table(tmp_path / "closed_form.csv", COLUMNS)
    assert len(rows) == 8
    for row in rows:
        old = committed[setting_key(row, COLUMNS)]
        assert (row["lr"], row["evaluations"], row["backend"]) == \
            (old["lr"], old["evaluations"], old["backend"])
    sidecar = json.loads((tmp_path / "closed_form.recipe.json").read_text())
    assert sidecar["make_target"] == "lrs-closed-form" and "select" not in sidecar
    log = [json.loads(line) for line in (tmp_path / "closed_form.log.jsonl").open()]
    assert log[0]["recipe"] == "closed-form" and log[0]["make_target"] == "lrs-closed-form"
    assert log[0]["argv"][-5:-1] == ["--select", "n=2", "--lr-dir", str(tmp_path)]


def test_full_horizon_refinement_merges_grid_full_rows(tmp_path):
    task = get_task("closed_form:paper")
    settings = select_settings(task, parse_selection(["function=sphere", "n=2",
                                                      "gradient=bp,frog", "k=,2"]))
    rows = [{**s, "lr": 0.01, "loss": 1.0, "evaluations": 1, "backend": "grid"}
            for s in settings]
    merge_rows(tmp_path / "closed_form.csv", COLUMNS, rows)
    refined, failed = refine_full_horizon(task, settings, FullHorizonConfig(), tmp_path,
                                          "make it", progress=False)
    assert not failed and len(refined) == 2
    table = read_table(tmp_path / "closed_form.csv", COLUMNS)
    assert {r["backend"] for r in table} == {"grid-full"} and len(table) == 2
    # on the Sphere a larger rate is better within [0.01 / 10^1.25, 0.01 * 10^0.25]
    assert all(float(r["lr"]) == pytest.approx(0.01 * 10 ** 0.25) for r in table)


def _anchored_recipe(stages):
    return recipes.Recipe("anchored-test", "fc_mnist", tuple(stages))


_BP = recipes.Stage("fc_mnist:smoke", ("gradient=bp",),
                    grid=GridConfig(lo=-2, hi=-1, points_per_decade=1, seeds=(0,)))
_FG = recipes.Stage("fc_mnist:smoke", ("gradient=fg-mean,frog",), anchor="isotropic",
                    grid=GridConfig(lo=-0.5, hi=0.5, points_per_decade=1, seeds=(0,)))


def test_anchored_stage_searches_around_the_rule_rate_from_bp(tmp_path):
    """Stage 2's grid is centred on the isotropic rule's rate from the bp rate stage 1 wrote:
    bp's for the projection, bp's x k / (n + k + 1) for the mean (FC-32: n = 32 + 32 + 10)."""
    rows, failed = recipes.run_recipe(_anchored_recipe([_BP, _FG]), tmp_path, progress=False)
    assert not failed
    table = {r["gradient"]: float(r["lr"]) for r in read_table(tmp_path / "fc_mnist.csv",
                                                                 COLUMNS_FC)}
    log = [json.loads(line) for line in (tmp_path / "fc_mnist.log.jsonl").open()]
    anchored = {e["rows"][0]["gradient"]: e for e in log if e.get("anchor")}
    lr_bp = table["bp"]
    assert anchored["frog"]["anchor_lr"] == pytest.approx(lr_bp)
    assert anchored["fg-mean"]["anchor_lr"] == pytest.approx(lr_bp / 76)
    for gradient, entry in anchored.items():
        (tried,) = entry["losses"].values()
        centre = entry["anchor_lr"]
        assert [lr for lr, _ in tried] == pytest.approx([centre / 10 ** 0.5, centre * 10 ** 0.5])
        assert table[gradient] in [lr for lr, _ in tried]
    (bp_entry,) = [e for e in log if not e.get("anchor")]
    assert [lr for lr, _ in next(iter(bp_entry["losses"].values()))] == pytest.approx([0.01, 0.1])


def test_anchored_stage_without_a_bp_rate_names_the_bp_search(tmp_path):
    with pytest.raises(MissingLearningRate, match="make lrs-anchored-test .*gradient=bp"):
        recipes.run_recipe(_anchored_recipe([_FG]), tmp_path, progress=False)
    assert not (tmp_path / "fc_mnist.csv").exists()  # nothing computed, nothing written
    listing = "\n".join(recipes.listing(_anchored_recipe([_BP, _FG])))
    assert "around the isotropic rule's rate" in listing


# --- diverging rates --------------------------------------------------------------------------

def test_diverged_runs_have_loss_inf_even_when_still_finite():
    task = get_task("closed_form", max_steps=300, gradients=("bp",))
    setting = task.settings()[0]
    # lr 1.05 on the Sphere: |1 - 2 lr| > 1, the iterate grows (still finite after 100 steps
    # of patience); 1e4 overflows; 0.1 converges.
    losses_lxs = task.batched(setting, [0.1, 1.05, 1e4], [0])
    assert math.isfinite(float(losses_lxs[0, 0])) and float(losses_lxs[0, 0]) < 1e-6
    assert float(losses_lxs[1, 0]) == math.inf and float(losses_lxs[2, 0]) == math.inf
    assert list(task.objective(setting, 1.05, 0))[-1] == math.inf


def test_grid_never_picks_a_diverged_rate(tmp_path):
    task = get_task("closed_form", max_steps=50, interim=10)
    lrs, losses = grid_evaluate(task, task.settings()[0],
                                GridConfig(lo=-2, hi=6, points_per_decade=1, seeds=(0,)))
    assert any(math.isinf(v) for v in losses) and any(math.isfinite(v) for v in losses)
    result = lr_search(*TINY, "--lo", "-2", "--hi", "6", "--points-per-decade", "1",
                       "--seeds", "0", "--lr-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = read_table(tmp_path / "closed_form_smoke.csv", COLUMNS)
    assert float(row["lr"]) < 1
    (log,) = [json.loads(line) for line in (tmp_path / "closed_form_smoke.log.jsonl").open()]
    (diverged,) = log["diverged_lrs"].values()
    assert min(diverged) >= 1


def test_grid_extends_past_the_edge_that_holds_the_best_loss():
    """Rates 1e-3 and 1e-2 are both too small for fg-mean on a 4-d Sphere (its one-step optimum
    is about 0.5 / 6): the grid goes on one decade at a time until the best rate is inside."""
    task = get_task("closed_form", max_steps=50, interim=10)
    setting = task.settings()[0]
    lrs, losses = grid_evaluate(task, setting, GridConfig(lo=-3, hi=-2, points_per_decade=1,
                                                          seeds=(0,), extend=4))
    assert lrs == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert min(range(4), key=lambda i: losses[i]) == 2 and losses[3] > losses[2]
    plain, _ = grid_evaluate(task, setting, GridConfig(lo=-3, hi=-2, points_per_decade=1,
                                                       seeds=(0,)))
    assert plain == pytest.approx([1e-3, 1e-2])
    with pytest.raises(ValueError, match="extend"):
        GridConfig(extend=-1).validate()


def test_grid_with_every_rate_diverged_writes_no_rate(tmp_path):
    line = one_line(lr_search(*TINY, "--lo", "3", "--hi", "6", "--lr-dir", tmp_path), status=1)
    assert "every rate diverged" in line and "no rate written" in line
    assert not (tmp_path / "closed_form_smoke.csv").exists()


@pytest.mark.mpi
def test_propulate_with_every_rate_diverged_writes_no_rate(tmp_path):
    result = lr_search(*TINY, "--backend", "propulate", "--ranks", "2", "--lo", "3", "--hi", "6",
                       "--evaluations", "4", "--checkpoints", tmp_path / "ck", "--lr-dir",
                       tmp_path / "lrs", mpi_ranks=2)
    assert result.returncode != 0
    assert "every rate diverged" in result.stderr and "no rate written" in result.stderr
    assert not (tmp_path / "lrs" / "closed_form_smoke.csv").exists()


# --- bad LR-side inputs: one line naming the file, exit 2, before compute, nothing touched -----

GOOD = "function,n,angle_deg,gradient,k,sampler,lr,loss,evaluations,backend\n" \
       "sphere,4,,fg-mean,1,normal,0.1,0.5,10,grid\n"


@pytest.mark.parametrize("text, message", [
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (GOOD.replace(",backend", "").encode(), "missing backend"),
    (GOOD.replace("0.1,0.5", "fast,0.5").encode(), "non-numeric"),
    (GOOD.replace("0.1,0.5", "-1,0.5").encode(), "finite rate > 0"),
    (GOOD.replace(",grid\n", "\n").encode(), "wrong number of fields"),
])
def test_malformed_table_is_refused_before_compute(tmp_path, text, message):
    table = tmp_path / "closed_form_smoke.csv"
    table.write_bytes(text)
    line = one_line(lr_search(*TINY, "--lr-dir", tmp_path))
    assert str(table) in line and message in line
    assert table.read_bytes() == text and not (tmp_path / "closed_form_smoke.log.jsonl").exists()
    with pytest.raises(LRTableError, match=str(table)):
        lookup_lr(table, {"function": "sphere", "n": 4, "gradient": "bp"}, "make it")


def test_garbled_log_and_checkpoint_options_are_refused(tmp_path):
    log = tmp_path / "lrs" / "closed_form_smoke.log.jsonl"
    log.parent.mkdir()
    log.write_text('{"ok": 1}\nnot json\n')
    assert f"search log {log}: line 2" in one_line(lr_search(*TINY, "--lr-dir", log.parent))
    log.unlink()
    options = tmp_path / "ck" / "closed_form_smoke"
    setting = "function=sphere_n=4_gradient=fg-mean_k=1_sampler=normal"
    (options / setting).mkdir(parents=True)
    (options / setting / "search.json").write_bytes(b"\x00{")
    line = one_line(lr_search(*TINY, "--backend", "propulate", "--checkpoints", tmp_path / "ck",
                              "--lr-dir", log.parent))
    assert str(options / setting / "search.json") in line
    assert not any(log.parent.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="os.access lies about /proc only for root")
def test_unwritable_lr_dir_is_found_by_creating_a_file():
    assert "/proc/x is not writable" in one_line(lr_search(*TINY, "--lr-dir", "/proc/x"))
