"""Training: plain SGD (no momentum, no weight decay) at a constant learning rate, with early
stopping, divergence detection, per-epoch evaluation and a checkpoint at each epoch end.

`epochs(...)` is the loop, a generator of one history row per epoch (the LR search consumes
it directly); `train(...)` adds checkpoints, resume and a progress bar around it.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fgexp.directional import GradientSpec
from fgexp.nn.data import DataSet, Split, batches

STATUSES = ("completed", "early_stopped", "diverged")  # max_epochs reached, patience, NaN/loss>10
LOSSES = ("train_loss", "val_loss", "test_loss")  # NaN or inf in any of them: diverged
SPLITS = ("train", "val", "test")  # evaluated after every epoch (the LR search: "val" alone)


@dataclass(frozen=True)
class TrainConfig:
    lr: float                    # constant SGD learning rate
    max_epochs: int = 200        # paper: 200
    patience: int = 10           # epochs without validation-loss improvement before stopping
    batch_size: int = 64         # paper: 64 for MNIST, 128 for CIFAR-10
    eval_batch_size: int = 1024  # evaluation only; does not change results
    diverge_loss: float = 10.0   # a training-batch or validation loss above this (or NaN) stops

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive number, got {self.lr!r}")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("max_epochs, patience and batch_size must be >= 1")


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model weights."""
    epoch: int = 0                                       # epochs finished
    history: list[dict] = field(default_factory=list)    # one row per finished epoch
    best_val: float = math.inf
    bad_epochs: int = 0                                  # epochs since best_val improved
    status: str | None = None                            # a STATUSES entry once the run ended


def is_bad(loss: float, limit: float) -> bool:
    return not math.isfinite(loss) or loss > limit


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, batch_size: int, device=None):
    """Mean cross-entropy and accuracy over a split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in batches(split, batch_size, device=device):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


def next_state(state: TrainState, row: dict, diverged: bool, cfg: TrainConfig) -> TrainState:
    """Pure bookkeeping after an epoch: history, best validation loss, patience, status."""
    improved = row["val_loss"] < state.best_val
    bad = 0 if improved else state.bad_epochs + 1
    not_finite = any(not math.isfinite(row[k]) for k in LOSSES if k in row)
    status = ("diverged" if diverged or not_finite or is_bad(row["val_loss"], cfg.diverge_loss)
              else "early_stopped" if bad >= cfg.patience
              else "completed" if state.epoch + 1 >= cfg.max_epochs else None)
    return TrainState(state.epoch + 1, [*state.history, row],
                      row["val_loss"] if improved else state.best_val, bad, status)


def train_epoch(model, split: Split, spec: GradientSpec, optimizer, cfg: TrainConfig,
                batch_gen, tangent_gen, device, set_gradients, bar=None) -> bool:
    """One pass over the training split; True if it diverged (and stopped early)."""
    model.train()
    for x, y in batches(split, cfg.batch_size, batch_gen, device):
        optimizer.zero_grad(set_to_none=True)
        loss = float(set_gradients(model, x, y, spec, generator=tangent_gen))
        if is_bad(loss, cfg.diverge_loss):
            return True
        try:
            optimizer.step()
        except RuntimeError as err:  # lr * grad beyond the float range (e.g. lr 1e39 in float32)
            if "overflow" not in str(err):
                raise
            return True
        if bar is not None:
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    return False


def epochs(model, data: DataSet, spec: GradientSpec, cfg: TrainConfig, seed: int,
           state: TrainState | None = None, device=None, bar=None,
           gens: tuple | None = None, splits: tuple[str, ...] = SPLITS
           ) -> Iterator[tuple[dict, TrainState, tuple]]:
    """The training loop: yields (epoch row, state, (batch_gen, tangent_gen)) after each epoch.

    The seed drives batch order and tangents (the caller seeds the model's initialization);
    pass `state` and `gens` of a checkpoint to resume. `splits` are evaluated after each
    epoch ("val" is needed for early stopping; the others only fill the row).
    """
    if "val" not in splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits must include 'val' and be among {SPLITS}, got {splits}")
    from fgexp.nn.gradients import set_gradients
    from fgexp.tangents import NormalBuffer
    step = functools.partial(set_gradients, draws=NormalBuffer())  # the run's tangent buffer
    state = state or TrainState()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.0, weight_decay=0.0)
    batch_gen, tangent_gen = gens or seeded_generators(seed, device)
    while state.status is None:
        start = time.perf_counter()
        diverged = train_epoch(model, data.train, spec, optimizer, cfg, batch_gen, tangent_gen,
                               device, step, bar)
        row = {"epoch": state.epoch + 1}
        for name in splits:
            row[f"{name}_loss"], row[f"{name}_acc"] = evaluate(model, getattr(data, name),
                                                               cfg.eval_batch_size, device)
        row["epoch_seconds"] = time.perf_counter() - start
        state = next_state(state, row, diverged, cfg)
        yield row, state, (batch_gen, tangent_gen)


def seeded_generators(seed: int, device=None) -> tuple[torch.Generator, torch.Generator]:
    """Independent streams for batch order (CPU) and tangents (on the model's device)."""
    batch_gen = torch.Generator().manual_seed(seed)
    tangent_gen = torch.Generator(device=device or "cpu").manual_seed(10_000 + seed)
    return batch_gen, tangent_gen


@dataclass(frozen=True)
class Checkpoint:
    """Where a run's checkpoint lives and what it must match to be resumed: `key` holds the
    run's resolved config and output directory (its hash is in the file name)."""
    path: Path
    key: Mapping | None = None  # None: resume whatever is at `path` (tests only)


def save_checkpoint(ckpt: Checkpoint, model, state: TrainState, gens) -> None:
    """Atomic torch.save of weights (incl. BatchNorm buffers), state, generator states and the
    key; the temporary is unique per process, so concurrent writers never share one."""
    from fgexp.store import fsync_dir, temp_path
    ckpt.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(ckpt.path)
    try:
        torch.save({"model": model.state_dict(), "state": vars(state),
                    "gens": [g.get_state() for g in gens],
                    "key": None if ckpt.key is None else dict(ckpt.key)}, tmp)
        os.replace(tmp, ckpt.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(ckpt.path.parent)


def load_checkpoint(ckpt: Checkpoint, model, seed: int, device=None):
    """(state, gens) from a checkpoint (weights loaded into `model`), or (None, None) when there
    is none, it is unreadable, or it was made for another config or output directory."""
    if not ckpt.path.exists():
        return None, None
    try:
        saved = torch.load(ckpt.path, map_location=device, weights_only=False)
    except Exception as err:  # a damaged file: start afresh rather than trust it
        print(f"{ckpt.path}: unreadable checkpoint ({type(err).__name__}); training from scratch",
              file=sys.stderr)
        return None, None
    if ckpt.key is not None and saved.get("key") != json.loads(json.dumps(dict(ckpt.key))):
        print(f"{ckpt.path}: checkpoint of another config; training from scratch",
              file=sys.stderr)
        return None, None
    model.load_state_dict(saved["model"])
    gens = seeded_generators(seed, device)
    for g, s in zip(gens, saved["gens"]):
        g.set_state(s.cpu())
    return TrainState(**saved["state"]), gens


def train(model, data: DataSet, spec: GradientSpec, cfg: TrainConfig, seed: int,
          checkpoint: Checkpoint | Path | None = None, device=None, progress: bool = False,
          desc: str = "", on_epoch: Callable[[dict], None] | None = None) -> TrainState:
    """Train to the end (or resume from `checkpoint`); returns the final state and history.

    `on_epoch(row)` runs after each checkpoint is written (tests use it to interrupt a run).
    """
    from tqdm import tqdm
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(Path(checkpoint))
    state, gens = load_checkpoint(checkpoint, model, seed, device) if checkpoint else (None, None)
    if state is not None and state.status is not None:
        return state
    total = cfg.max_epochs * len(data.train)
    with tqdm(total=total, initial=(state.epoch if state else 0) * len(data.train), desc=desc,
              unit="img", disable=not progress, leave=False) as bar:
        for row, state, gens in epochs(model, data, spec, cfg, seed, state, device, bar, gens):
            if checkpoint:
                save_checkpoint(checkpoint, model, state, gens)
            if on_epoch is not None:
                on_epoch(row)
    return state
