"""Learning-rate search: extraction, tables, lookup, grid backend, pruning, CLI, real MPI runs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from fgexp.lr.grid import GridConfig, grid_search
from fgexp.lr.propulate_backend import PropulateConfig
from fgexp.lr.pruning import PruningRule
from fgexp.lr.registry import get_task, parse_selection, select_settings
from fgexp.lr.table import MissingLearningRate, extract_best, lookup_lr, merge_rows

from lr_cli import COLUMNS, TINY  # tests/lr_cli.py, shared with test_lr_recipes.py
from lr_cli import lr_search as run_script


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- extraction --------------------------------------------------------------------------------

def test_extract_best_picks_rate_nearest_the_log_mean_of_the_near_best():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    losses = [5.0, 1.02, 1.0, 1.04, 9.0]   # 1e-3, 1e-2, 1e-1 lie within 5% of 1.0
    assert extract_best(lrs, losses) == pytest.approx(1e-2)
    # A rate outside the 5% band does not pull the mean: 1.06 > 1.05.
    assert extract_best([1e-3, 1e-2, 1.0], [1.0, 1.06, 1.0]) == pytest.approx(1e-3)


def test_extract_best_is_not_simply_the_argmin():
    lrs = [1e-3, 2e-3, 1e-2, 5e-2, 1e-1]
    losses = [1.01, 1.0, 1.03, 1.02, 1.04]  # argmin 2e-3; log-mean of all five is ~1.2e-2
    assert extract_best(lrs, losses) == pytest.approx(1e-2)
    assert extract_best(lrs, losses, tolerance=0.0) == pytest.approx(2e-3)


def test_extract_best_ignores_non_finite_and_refuses_none_left():
    assert extract_best([1e-3, 1e-2, 1e-1], [math.nan, 2.0, math.inf]) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="finite"):
        extract_best([1e-3], [math.nan])
    with pytest.raises(ValueError, match="tolerance"):
        extract_best([1e-3], [1.0], tolerance=-1)


# --- tables and lookup -------------------------------------------------------------------------

def row(function, n, gradient, k, lr, sampler="normal"):
    return {"function": function, "n": n, "angle_deg": None, "gradient": gradient, "k": k,
            "sampler": sampler, "lr": lr, "loss": 0.5, "evaluations": 100, "backend": "grid"}


def test_merge_keeps_other_rows_and_replaces_the_same_setting(tmp_path):
    table = tmp_path / "lrs" / "closed_form.csv"
    merge_rows(table, COLUMNS, [row("sphere", 4, "fg-mean", 1, 0.1),
                                row("sphere", 8, "frog", 4, 0.2)])
    merge_rows(table, COLUMNS, [row("sphere", 4.0, "fg-mean", "1", 0.3),   # same setting
                                row("rosenbrock", 2, "bp", None, 0.05, sampler=None)])
    rows = read_table(table)
    assert list(rows[0]) == [*COLUMNS, "gradient", "k", "sampler", "lr", "loss", "evaluations",
                             "backend"]
    by_key = {(r["function"], r["n"], r["gradient"]): float(r["lr"]) for r in rows}
    assert by_key == {("sphere", "8", "frog"): 0.2, ("sphere", "4", "fg-mean"): 0.3,
                      ("rosenbrock", "2", "bp"): 0.05}


def test_lookup_matches_setting_and_names_the_command_when_missing(tmp_path):
    table = tmp_path / "closed_form.csv"
    merge_rows(table, COLUMNS, [row("sphere", 4, "fg-mean", 1, 0.1),
                                row("sphere", 4, "fg-mean", 2, 0.2),
                                row("sphere", 4, "bp", None, 0.4, sampler=None)])
    setting = {"function": "sphere", "n": 4, "angle_deg": None, "gradient": "fg-mean", "k": 2,
               "sampler": "normal"}
    assert lookup_lr(table, setting, "make it") == 0.2
    # bp has one rate whatever k and sampler the caller fills in; a missing column is empty.
    bp = {"function": "sphere", "n": "4", "gradient": "bp", "k": 1, "sampler": "normal"}
    assert lookup_lr(table, bp, "make it") == 0.4
    command = "make lr-search TASK=closed_form:paper ARGS='--select n=4'"
    with pytest.raises(MissingLearningRate, match="n=4") as err:
        lookup_lr(table, {**setting, "k": 16}, command)
    assert command in str(err.value) and str(table) in str(err.value)
    with pytest.raises(MissingLearningRate, match="no learning-rate table"):
        lookup_lr(tmp_path / "absent.csv", setting, command)


# --- settings ----------------------------------------------------------------------------------

def test_selection_of_paper_settings():
    task = get_task("closed_form:paper")
    assert len(task.settings()) == 3 * 11 * 8 and task.name == "closed_form"
    assert get_task("closed_form").name == "closed_form_smoke"  # never the paper table
    chosen = select_settings(task, parse_selection(["function=sphere", "n=4,8", "gradient=frog"]))
    assert [(s["n"], s["k"]) for s in chosen] == [(4, 2), (4, 4), (4, 16), (8, 2), (8, 4), (8, 16)]
    with pytest.raises(ValueError, match="unknown gradient"):
        select_settings(task, parse_selection(["gradient=fg-nope"]))
    with pytest.raises(ValueError, match="cannot select on"):
        select_settings(task, parse_selection(["width=3"]))
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


# --- grid backend ------------------------------------------------------------------------------

def tiny_task(**overrides):
    return get_task("closed_form", max_steps=40, interim=8, **overrides)


def test_batched_grid_equals_each_rate_alone_and_the_objective():
    task = tiny_task(gradients=("frog:2",))
    setting = task.settings()[0]
    lrs, seeds = [1e-3, 3e-2, 0.3, 3.0], [0, 1, 2]
    batched_lxs = task.batched(setting, lrs, seeds)
    assert batched_lxs.shape == (4, 3)
    alone_lxs = torch.cat([task.batched(setting, [lr], seeds) for lr in lrs])
    torch.testing.assert_close(batched_lxs, alone_lxs, rtol=1e-6, atol=1e-12)
    interim = list(task.objective(setting, 3e-2, 1))
    assert len(interim) <= task.horizon(setting)
    assert interim[-1] == pytest.approx(float(batched_lxs[1, 1]), rel=1e-6, abs=1e-12)
    assert all(a >= b for a, b in zip(interim, interim[1:]))  # best so far never rises
    assert float(batched_lxs[0].min()) > float(batched_lxs[1].max())  # tiny rate: barely moves


class QuadraticTask:
    """No `batched`: the grid falls back to the objectives; loss minimal at lr = 10^-2.5."""
    name = "quadratic"
    setting_columns = ("case",)

    def settings(self):
        return [{"case": "a", "gradient": "bp", "k": None, "sampler": None}]

    def objective(self, setting, lr, seed):
        yield 100.0
        yield (math.log10(lr) + 2.5) ** 2 + 1.0


def test_grid_search_without_batched_and_refinement_narrows(tmp_path):
    task = QuadraticTask()
    coarse = grid_search(task, task.settings()[0], GridConfig(points_per_decade=1,
                                                                        seeds=(0,)))
    fine = grid_search(task, task.settings()[0], GridConfig(points_per_decade=1,
                                                                      refine=3, seeds=(0,)))
    assert coarse["evaluations"] == 7 and fine["evaluations"] == 7 + 3 * 9
    assert abs(math.log10(fine["lr"]) + 2.5) < abs(math.log10(coarse["lr"]) + 2.5)
    assert abs(math.log10(fine["lr"]) + 2.5) < 0.05


def test_grid_cli_writes_many_settings_in_one_call(tmp_path):
    result = run_script(*TINY, "--preset", "paper", "--select", "function=sphere",
                        "--select", "n=2", "--select", "gradient=fg-mean,bp",
                        "--points-per-decade", "2", "--seeds", "0,1", "--lr-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_table(tmp_path / "closed_form.csv")
    assert sorted((r["gradient"], r["k"]) for r in rows) == [
        ("bp", ""), ("fg-mean", "1"), ("fg-mean", "16"), ("fg-mean", "2"), ("fg-mean", "4")]
    assert {r["evaluations"] for r in rows} == {str(13 * 2)} and {r["backend"] for r in rows} == {"grid"}
    assert all(1e-6 <= float(r["lr"]) <= 1 for r in rows)


# --- pruning -----------------------------------------------------------------------------------

def test_pruning_rule_cancels_runs_twice_as_bad_for_over_5_percent_of_steps():
    rule = PruningRule(factor=2.0, fraction=0.05, horizon=40)
    rule.start_run()
    best = [10.0 / (t + 1) for t in range(40)]
    assert not any(rule.cancel(v) for v in best)
    rule.update(best[-1])
    assert rule.best_curve == best
    rule.start_run()  # 2 violations of 40 steps is exactly 5%: allowed; the third cancels
    verdicts = [rule.cancel(3 * b) for b in best[:3]]
    assert verdicts == [False, False, True]
    rule.update(3 * best[2])
    assert rule.best_curve == best  # a cancelled run never becomes the reference
    rule.start_run()
    assert not any(rule.cancel(1.9 * b) for b in best)  # within the factor: never cancelled


def test_pruning_merge_commutes():
    a, b = PruningRule(), PruningRule()
    a.merge({"loss": 1.0, "curve": [3.0, 1.0]})
    b.merge({"loss": 0.5, "curve": [2.0, 0.5]})
    data_a, data_b = a.data(), b.data()
    a.merge(data_b)
    b.merge(data_a)
    assert a.data() == b.data() == {"loss": 0.5, "curve": [2.0, 0.5]}


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    ([*TINY, "--select", "gradient=fg-nope"], "unknown gradient fg-nope"),
    ([*TINY, "--lo", "0", "--hi", "-6"], "lo < hi"),
    ([*TINY, "--set", "max_step=3"], "unknown option max_step"),
    ([*TINY, "--backend", "propulate", "--population", "0"], "--population >= 1"),
    ([*TINY, "--tolerance", "-1"], "--tolerance must be a finite number >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_script(*args, "--lr-dir", tmp_path / "lrs")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lrs").exists()


def test_single_rank_with_mpich_is_refused(tmp_path):
    """A separate process: importing mpi4py starts MPI, which the test process must not do."""
    result = run_script(*TINY, "--backend", "propulate", "--lr-dir", tmp_path / "lrs")
    assert result.returncode == 2
    assert "at least 2 MPI ranks with MPICH" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "lrs").exists()


@pytest.mark.mpi
def test_mpi_refuses_unwritable_checkpoints_on_every_rank(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_script(*TINY, "--backend", "propulate", "--ranks", "2", "--checkpoints",
                        blocker / "ck", "--lr-dir", tmp_path / "lrs", mpi_ranks=2, timeout=60)
    assert result.returncode == 2 and "is not a directory" in result.stderr
    assert not (tmp_path / "lrs").exists()


# --- real Propulate runs over MPI --------------------------------------------------------------

@pytest.mark.mpi
def test_propulate_two_ranks_near_grid_optimum_and_resumes(tmp_path):
    task = get_task("closed_form", max_steps=50, interim=10)  # TINY's task
    grid_lr = grid_search(task, task.settings()[0],
                                    GridConfig(points_per_decade=8, seeds=(0,)))["lr"]

    common = [*TINY, "--backend", "propulate", "--ranks", "2", "--seeds", "0",
              "--checkpoints", tmp_path / "ck", "--lr-dir", tmp_path / "lrs"]
    first = run_script(*common, "--evaluations", "8", mpi_ranks=2)
    assert first.returncode == 0, first.stderr
    assert read_table(tmp_path / "lrs" / "closed_form_smoke.csv")[0]["evaluations"] == "8"
    second = run_script(*common, "--evaluations", "24", mpi_ranks=2)
    assert second.returncode == 0, second.stderr
    (found,) = read_table(tmp_path / "lrs" / "closed_form_smoke.csv")
    assert found["evaluations"] == "24" and found["backend"] == "propulate"
    (log,) = (tmp_path / "ck" / "closed_form_smoke").glob("*/propulate.log")
    assert "Resuming from generation 4" in log.read_text()  # 8 evaluations = 4 per rank
    assert abs(math.log10(float(found["lr"]) / grid_lr)) < 1, (found["lr"], grid_lr)


def test_generations_count_per_rank():
    assert PropulateConfig(evaluations=100).generations(4) == 25
    assert PropulateConfig(evaluations=9).generations(2) == 5
    with pytest.raises(ValueError, match="lo < hi"):
        PropulateConfig(lo=1.0, hi=1.0).validate()


@pytest.mark.mpi
@pytest.mark.slow
def test_propulate_resumes_after_a_kill_mid_checkpoint(tmp_path):
    """A truncated checkpoint falls back to Propulate's backup, which may lack a rank's runs."""
    common = [*TINY, "--backend", "propulate", "--ranks", "2", "--seeds", "0",
              "--checkpoints", tmp_path / "ck", "--lr-dir", tmp_path / "lrs"]
    assert run_script(*common, "--evaluations", "4", mpi_ranks=2).returncode == 0
    (ckpt,) = (tmp_path / "ck" / "closed_form_smoke").glob("*/island_0_ckpt.pickle")
    assert ckpt.with_suffix(".bkp").is_file()
    ckpt.write_bytes(ckpt.read_bytes()[:40])  # the kill came while the file was written
    resumed = run_script(*common, "--evaluations", "8", mpi_ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "was incomplete; resuming from its backup" in resumed.stderr
    (found,) = read_table(tmp_path / "lrs" / "closed_form_smoke.csv")
    assert found["evaluations"] == "8"
