"""Training loop: resume after interruption, early stopping, divergence, determinism."""
import dataclasses
import math

import pytest
import torch

from fgexp.nn import data as datasets
from fgexp.nn import runs as nets
from fgexp.nn.train import TrainConfig, TrainState, evaluate, next_state
from fgexp.paper import parse_gradient

# The FC smoke preset, shrunk further onto the synthetic set.
CFG = dataclasses.replace(nets.PRESETS["fc_mnist"]["smoke"], datasets=("synthetic",),
                          widths=(16,), max_epochs=4, batch_size=32)
DATA = datasets.synthetic(sizes=(128, 32, 32))


def history(run, lr=0.05, cfg=CFG, checkpoint=None, on_epoch=None):
    rows = nets.run_rows(run, cfg, DATA, lr, checkpoint, on_epoch=on_epoch)
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


@pytest.mark.parametrize("token", ["bp", "frog:2"])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, token):
    run = nets.Run("fc", "synthetic", 16, *parse_gradient(token), seed=3)
    straight = history(run, checkpoint=tmp_path / "a.pt")

    def kill_after_second(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        history(run, checkpoint=ckpt, on_epoch=kill_after_second)
    assert torch.load(ckpt, weights_only=False)["state"]["epoch"] == 2
    seen = []
    resumed = history(run, checkpoint=ckpt, on_epoch=lambda row: seen.append(row["epoch"]))
    assert seen == [3, 4]  # only the missing epochs ran
    assert resumed == straight and len(straight) == 4
    assert straight[-1]["train_loss"] < straight[0]["train_loss"]  # it did learn


def test_same_seed_same_history_other_seed_differs():
    run = nets.Run("fc", "synthetic", 16, "fg-mean", 2, seed=0)
    assert history(run) == history(run)
    assert history(run) != history(dataclasses.replace(run, seed=1))


def test_divergence_stops_the_run():
    run = nets.Run("fc", "synthetic", 16, "bp", None, seed=0)
    rows = history(run, lr=1e4)
    assert rows[-1]["status"] == "diverged" and len(rows) < CFG.max_epochs


def test_early_stopping_and_status_bookkeeping():
    cfg = TrainConfig(lr=0.1, max_epochs=50, patience=2)
    state = TrainState()
    for val in (1.0, 0.5, 0.6, 0.7):
        state = next_state(state, {"val_loss": val}, False, cfg)
    assert state.status == "early_stopped" and state.best_val == 0.5 and state.epoch == 4
    assert next_state(TrainState(), {"val_loss": math.nan}, False, cfg).status == "diverged"
    assert next_state(TrainState(), {"val_loss": 11.0}, False, cfg).status == "diverged"
    assert next_state(TrainState(), {"val_loss": 1.0}, True, cfg).status == "diverged"
    last = TrainState(epoch=49, best_val=2.0)
    assert next_state(last, {"val_loss": 1.0}, False, cfg).status == "completed"


def test_evaluate_matches_a_direct_computation():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    loss, acc = evaluate(model, DATA.val, batch_size=7)
    logits = model(DATA.val.x)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, DATA.val.y).item(),
                                 rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == DATA.val.y).float().mean().item())


def test_validation_only_epochs_train_the_same_numbers():
    """The LR search evaluates the validation split alone: same weights, same val loss."""
    from fgexp.nn.train import epochs
    run = nets.Run("fc", "synthetic", 16, "frog", 2, seed=0)
    cfg = nets.train_config(CFG, run, 0.05, max_epochs=2)
    full, val_only = ([row for row, _, _ in epochs(nets.build_model(run, DATA, 0), DATA,
                                                   nets.spec_of(run, CFG), cfg, 0,
                                                   splits=splits)]
                      for splits in (("train", "val", "test"), ("val",)))
    assert [r["val_loss"] for r in val_only] == [r["val_loss"] for r in full]
    assert "train_loss" not in val_only[0] and "test_acc" not in val_only[0]
    with pytest.raises(ValueError, match="must include 'val'"):
        next(epochs(nets.build_model(run, DATA, 0), DATA, nets.spec_of(run, CFG), cfg, 0,
                    splits=("train",)))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="unknown gradient"):
        parse_gradient("adam:2")
    with pytest.raises(ValueError, match="width"):
        nets.validate(dataclasses.replace(CFG, widths=(0,)))
