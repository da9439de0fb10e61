"""Network checkpoints: keyed by resolved config and output directory; divergence recorded."""
import dataclasses
import shutil

import pytest
import torch

from fgexp.nn import data as datasets
from fgexp.nn import runs as nets

# The FC smoke preset, shrunk onto the synthetic set (as in test_nn_train.py).
CFG = dataclasses.replace(nets.PRESETS["fc_mnist"]["smoke"], datasets=("synthetic",),
                          widths=(16,), max_epochs=3, batch_size=32)
DATA = datasets.synthetic(sizes=(128, 32, 32))
RUN = nets.Run("fc", "synthetic", 16, "frog", 2, seed=1)


def _history(lr, checkpoint=None, on_epoch=None):
    rows = nets.run_rows(RUN, CFG, DATA, lr, checkpoint, on_epoch=on_epoch)
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def _killed_after_first_epoch(lr, checkpoint):
    def kill(row):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _history(lr, checkpoint, on_epoch=kill)


def test_checkpoint_of_another_config_or_out_is_never_resumed(tmp_path, capsys):
    """The issue's reproduction: a killed --lr 0.05 run, then --lr 0.01 --out other."""
    ckpts = tmp_path / "ckpt"
    killed = nets.checkpoint_for(ckpts, RUN, CFG, 0.05, tmp_path / "a")
    _killed_after_first_epoch(0.05, killed)
    assert killed.path.exists()
    other = nets.checkpoint_for(ckpts, RUN, CFG, 0.01, tmp_path / "other")
    elsewhere = nets.checkpoint_for(ckpts, RUN, CFG, 0.05, tmp_path / "other")
    longer = nets.checkpoint_for(ckpts, RUN, dataclasses.replace(CFG, max_epochs=4), 0.05,
                                 tmp_path / "a")
    assert len({killed.path, other.path, elsewhere.path, longer.path}) == 4
    assert _history(0.01, other) == _history(0.01)   # a clean lr 0.01 run
    # A file of another key at this run's path (copied by hand) is not trusted either.
    shutil.copy(killed.path, other.path)
    seen = []
    assert _history(0.01, other, on_epoch=lambda row: seen.append(row["epoch"])) \
        == _history(0.01)
    assert seen == [1, 2, 3] and "checkpoint of another config" in capsys.readouterr().err


def test_same_config_and_out_resumes(tmp_path):
    ckpt = nets.checkpoint_for(tmp_path / "ckpt", RUN, CFG, 0.05, tmp_path / "a")
    _killed_after_first_epoch(0.05, ckpt)
    assert torch.load(ckpt.path, weights_only=False)["key"]["lr"] == 0.05
    seen = []
    assert _history(0.05, ckpt, on_epoch=lambda row: seen.append(row["epoch"])) \
        == _history(0.05)
    assert seen == [2, 3]
    assert not [p for p in ckpt.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_damaged_checkpoint_is_retrained_not_trusted(tmp_path, capsys):
    ckpt = nets.checkpoint_for(tmp_path / "ckpt", RUN, CFG, 0.05, tmp_path / "a")
    _killed_after_first_epoch(0.05, ckpt)
    ckpt.path.write_bytes(ckpt.path.read_bytes()[:100])
    assert _history(0.05, ckpt) == _history(0.05)
    assert "unreadable checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("lr", [1e39, 1e30])
def test_overflowing_rate_is_recorded_as_diverged(lr):
    rows = _history(lr)
    assert rows[-1]["status"] == "diverged" and len(rows) < CFG.max_epochs + 1


def test_unwritable_checkpoints_are_refused_before_compute(tmp_path, script):
    out = tmp_path / "out"
    done = script("experiments/fc_mnist.py", "--preset", "smoke", "--out", out,
                  "--checkpoints", "/proc/fgexp-ckpt", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.startswith("error: checkpoint directory /proc/fgexp-ckpt is not writable")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (out / "fc_mnist.cells").exists() or not list((out / "fc_mnist.cells").iterdir())
