"""Smoke runs of experiments/fc_mnist.py and experiments/resnet_vit.py, their bad-input exits,
the LR-search tasks, and the Figure 6 / network-table builders."""
import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgexp.nn import runs as nets

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def script(name, *args, cwd=REPO):
    """A real subprocess run, as `make smoke` does it."""
    return subprocess.run([sys.executable, str(REPO / "experiments" / name), *args, "--no-progress"],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def module_of(name):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "experiments"))


def main_of(name):
    """A script's main(argv) in this process (no interpreter start-up: much faster)."""
    return module_of(name).main


def call(name, *args):
    return main_of(name)([*args, "--no-progress"])


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fc_smoke_writes_schema_and_resumes(tmp_path):
    done = script("fc_mnist.py", "--preset", "smoke", "--out", str(tmp_path),
                  "--checkpoints", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "fc_mnist.csv")
    assert list(table[0]) == list(nets.COLUMNS)
    assert len(table) == 3 * 2  # bp, fg k=1, frog k=2; two epochs each
    assert {r["k"] for r in table if r["gradient"] == "bp"} == {""}
    assert {(r["mode"], r["perturbation"]) for r in table} == {("simulated", "activity")}
    assert float(table[1]["train_loss"]) < float(table[0]["train_loss"])  # bp learns
    assert not list((tmp_path / "ckpt").glob("*.pt"))  # checkpoints go once a run is saved
    before = (tmp_path / "fc_mnist.csv").read_text()
    again = script("fc_mnist.py", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0 and (tmp_path / "fc_mnist.csv").read_text() == before


def test_forward_mode_matches_simulated_on_a_run(tmp_path):
    out = {}
    for mode in ("forward", "simulated"):
        assert call("fc_mnist", "--preset", "smoke", "--gradients", "frog:2", "--epochs", "1",
                    "--mode", mode, "--out", str(tmp_path / mode)) == 0
        out[mode] = rows(tmp_path / mode / "fc_mnist.csv")[0]
    assert float(out["forward"]["val_loss"]) == pytest.approx(float(out["simulated"]["val_loss"]),
                                                              rel=1e-3)


def test_resnet_vit_smoke(tmp_path):
    done = script("resnet_vit.py", "--preset", "smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "resnet_vit.csv")
    assert {(r["model"], r["gradient"]) for r in table} == {
        (m, g) for m in ("resnet18", "vit") for g in ("bp", "frog")}
    assert {r["width"] for r in table} == {""}


@pytest.mark.parametrize("args, message", [
    (["--models", "mlp"], "unknown model 'mlp'"),
    (["--datasets", "imagenet"], "unknown data set 'imagenet'"),
    (["--widths", "0"], "width must be >= 1"),
    (["--gradients", "fg-mean:0"], "k must be >= 1"),
    (["--preset", "paper", "--data-root", "/no/such/dir"], "does not exist"),
    (["--preset", "cpu", "--lr-table", "/no/such/table.csv"], "make lr-search TASK=fc_mnist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert call("fc_mnist", "--preset", "smoke", *args, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_mnist_files_name_the_place(tmp_path, capsys):
    assert call("fc_mnist", "--preset", "paper", "--data-root", str(tmp_path), "--lr", "0.1",
                "--out", str(tmp_path / "out")) == 2
    assert "MNIST/raw" in capsys.readouterr().err


def test_lr_tasks_yield_per_epoch_losses():
    from fgexp.lr_search import get_task
    task = get_task("fc_mnist", "smoke", max_epochs="2", search_epochs="none")
    assert [s["gradient"] for s in task.settings()] == ["bp", "fg-mean", "frog"]
    losses = list(task.objective(task.settings()[0], 0.1, seed=0))
    assert len(losses) == 2 and losses[1] <= losses[0]
    assert list(task.objective(task.settings()[0], 1e4, seed=0))[-1] == float("inf")
    assert get_task("resnet_vit", "paper", download="true").horizon(task.settings()[0]) == 50
    with pytest.raises(ValueError, match="unknown option"):
        get_task("fc_mnist", "smoke", depth="3")


def test_figure6_and_table_builders(tmp_path):
    out, fig = tmp_path / "res", tmp_path / "fig"
    assert call("fc_mnist", "--preset", "smoke", "--widths", "16,32", "--epochs", "1",
                "--out", str(out)) == 0
    (out / "resnet_vit.csv").write_text((out / "fc_mnist.csv").read_text())
    plot = main_of("plot")
    assert plot(["figure6", "--results", str(out), "--figures", str(fig)]) == 0
    assert (fig / "figure6.png").stat().st_size > 10_000
    assert plot(["table-networks", "--results", str(out), "--figures", str(fig)]) == 0
    table = rows(fig / "table_networks.csv")
    assert [(r["gradient"], r["k"]) for r in table] == [("bp", ""), ("fg-mean", "1"), ("frog", "2")]
    assert all(r["n"] == "2" for r in table)  # two widths stand in for two runs here
    assert "| bp |" in (fig / "table_networks.md").read_text()


def test_list_runs_gives_one_parseable_line_per_paper_run(capsys):
    assert call("resnet_vit", "--preset", "paper", "--download", "--list-runs") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 2 * 8 * 3  # models x data sets x gradients x seeds
    assert len(set(lines)) == len(lines)
    first = module_of("_networks").parser("", nets.PRESETS["resnet_vit"], "resnet_vit").parse_args(
        lines[0].split())
    assert (first.models, first.datasets, first.gradients, first.seeds) == (
        ["resnet18"], ["mnist"], ["bp"], [0])
