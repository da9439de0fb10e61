"""Batched FC runs (fgexp.nn.batched) against the same runs trained alone by fgexp.nn.train:
both modes, both perturbations, bp, the mean and the projection, a run that stops early
inside the batch, per-run resume after a kill, and bad batches."""
import dataclasses
from pathlib import Path

import pytest
import torch

from fgexp.nn import data as datasets
from fgexp.nn import runs as nets
from fgexp.nn.batched import train_runs
from fgexp.paper import parse_gradient

# The FC smoke preset, shrunk onto the synthetic set (as tests/test_nn_train.py does).
CFG = dataclasses.replace(nets.PRESETS["fc_mnist"]["smoke"], datasets=("synthetic",),
                          widths=(16,), max_epochs=3, batch_size=32)
DATA = datasets.synthetic(sizes=(128, 32, 32))
TOKENS = ("bp", "fg-mean:1", "frog:4")  # exact, mean, projection
DIVERGING = 1e4  # a rate at which a run diverges in its first epoch
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc")


def fc_run(token, seed, width=16):
    return nets.Run("fc", "synthetic", width, *parse_gradient(token), seed=seed)


def batched(cfg, runs, lrs, checkpoints=None, on_epoch=None):
    models = [nets.build_model(r, DATA, r.seed) for r in runs]
    states = train_runs(models, DATA, [nets.spec_of(r, cfg) for r in runs],
                        [nets.train_config(cfg, r, lr) for r, lr in zip(runs, lrs)],
                        [r.seed for r in runs], checkpoints, on_epoch=on_epoch)
    return [nets.rows_of(r, cfg, lr, s) for r, lr, s in zip(runs, lrs, states)]


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def assert_close(got, want):
    """Same epochs and status; losses and accuracies equal up to float32 rounding."""
    assert [(r["epoch"], r["status"]) for r in got] == [(r["epoch"], r["status"]) for r in want]
    for g, w in zip(got, want):
        for key in RESULTS:
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (key, g, w)


@pytest.mark.parametrize("mode", ["simulated", "forward"])
@pytest.mark.parametrize("perturbation", ["activity", "weight"])
def test_batch_equals_each_run_alone(mode, perturbation):
    cfg = dataclasses.replace(CFG, mode=mode, perturbation=perturbation)
    runs = [fc_run(t, s) for t in TOKENS for s in (0, 1)] + [fc_run("frog:4", 2)]
    lrs = [0.05, 0.1, 0.05, 0.1, 0.2, 0.3, DIVERGING]
    together = batched(cfg, runs, lrs)
    assert together[-1][-1]["status"] == "diverged" and len(together[-1]) == 1
    for run, lr, rows in zip(runs, lrs, together):
        assert_close(rows, nets.run_rows(run, cfg, DATA, lr, None))
    assert len(together[0]) == CFG.max_epochs  # the others went on after the stop


def test_a_run_does_not_depend_on_its_batch():
    runs = [fc_run(t, s) for t in TOKENS for s in (0, 1)]
    lrs = [0.05 * (1 + i) for i in range(len(runs))]
    together = batched(CFG, runs, lrs)
    for i in (0, 3, 5):
        alone = batched(CFG, [runs[i]], [lrs[i]])[0]
        assert_close(alone, together[i])


def test_killed_batch_resumes_each_run_to_the_same_numbers(tmp_path):
    runs = [fc_run(t, 4) for t in TOKENS]
    lrs = [0.05, 0.1, 0.3]
    straight = batched(CFG, runs, lrs)
    ckpts = [tmp_path / f"{i}.pt" for i in range(len(runs))]

    def kill(i, row):  # mid-way through the batch's second epoch bookkeeping
        if i == 1 and row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batched(CFG, runs, lrs, ckpts, on_epoch=kill)
    epochs = [torch.load(c, weights_only=False)["state"]["epoch"] for c in ckpts]
    assert epochs == [2, 2, 1]  # run 2 had not saved its second epoch
    seen = []
    resumed = batched(CFG, runs, lrs, ckpts, on_epoch=lambda i, row: seen.append((i, row["epoch"])))
    assert sorted(seen) == [(0, 3), (1, 3), (2, 2), (2, 3)]  # only the missing epochs ran
    for got, want in zip(resumed, straight):
        assert without_time(got) == without_time(want)
    # the single-run loop resumes a batched checkpoint as its own
    assert without_time(nets.run_rows(runs[0], CFG, DATA, lrs[0], ckpts[0])) == \
        without_time(straight[0])


def test_bad_batches_are_one_line_before_compute():
    spec = nets.spec_of(fc_run("bp", 0), CFG)
    cfg = nets.train_config(CFG, fc_run("bp", 0), 0.1)
    with pytest.raises(ValueError, match=r"at least one run \(R >= 1\)"):
        train_runs([], DATA, [], [], [])
    models = [nets.build_model(fc_run("bp", 0, w), DATA, 0) for w in (16, 32)]
    with pytest.raises(ValueError, match="runs of different shapes in one batch"):
        train_runs(models, DATA, [spec, spec], [cfg, cfg], [0, 0])
    other = dataclasses.replace(cfg, batch_size=16)
    with pytest.raises(ValueError, match="one batch size"):
        train_runs(models[:1] * 2, DATA, [spec, spec], [cfg, other], [0, 0])
    with pytest.raises(ValueError, match=r"R >= 1"):
        nets.batches_of([fc_run("bp", 0)], 0)


def test_batches_group_runs_by_model_shape():
    runs = [fc_run(t, s, w) for w in (16, 32) for t in TOKENS for s in (0, 1)]
    batches = nets.batches_of(runs, 4)
    assert [len(b) for b in batches] == [4, 2, 4, 2]
    assert all(len({r.width for r in b}) == 1 for b in batches)


@pytest.mark.parametrize("args,message", [
    pytest.param(["--runs-per-batch", "0"], "--runs-per-batch must be >= 1 (R >= 1), got 0",
                 marks=pytest.mark.slow),
    (["--lr-table", "MISSING"], "no learning rate for model=fc dataset=mnist5k width=256 "
                                "gradient=frog k=2"),
])
def test_fc_script_refuses_bad_batches_in_one_line(script, tmp_path, args, message):
    table = tmp_path / "fc_mnist.csv"  # the committed table without its frog k=2 row
    lines = (ROOT / "results" / "lrs" / "fc_mnist.csv").read_text().splitlines()
    table.write_text("\n".join(line for line in lines if ",256,frog,2," not in line) + "\n")
    args = [str(table) if a == "MISSING" else a for a in args]
    out = tmp_path / "out"
    done = script("experiments/fc_mnist.py", "--preset", "cpu", "--widths", "256", *args,
                  "--out", out, "--no-progress")
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


def test_one_batch_mixes_modes_and_perturbations():
    """Runs of different specs share a batch: each still gets its own estimator."""
    cfgs = [dataclasses.replace(CFG, mode=m, perturbation=p)
            for m in ("simulated", "forward") for p in ("activity", "weight")]
    runs = [fc_run("frog:4", seed) for seed in range(len(cfgs))]
    models = [nets.build_model(r, DATA, r.seed) for r in runs]
    states = train_runs(models, DATA, [nets.spec_of(r, c) for r, c in zip(runs, cfgs)],
                        [nets.train_config(c, r, 0.1) for r, c in zip(runs, cfgs)],
                        [r.seed for r in runs])
    for run, cfg, state in zip(runs, cfgs, states):
        assert_close(nets.rows_of(run, cfg, 0.1, state), nets.run_rows(run, cfg, DATA, 0.1, None))
