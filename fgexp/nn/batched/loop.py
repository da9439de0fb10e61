"""The training loop of fgexp.nn.train for R FC runs at once.

Each run keeps what it has alone: its model initialization (the caller builds each model
from its seed), its batch order and tangent generators (fgexp.nn.train.seeded_generators),
its learning rate, its TrainConfig's stopping rules and its checkpoint (the single-run
format: either loop resumes the other's). A run that diverges inside an epoch is frozen
for the rest of it; a run that ends leaves the batch while the others go on.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from fgexp.directional import GradientSpec
from fgexp.nn.batched.gradients import step_gradients
from fgexp.nn.batched.stacked import StackedFC, evaluate, stack, write_back
from fgexp.nn.data import DataSet
from fgexp.nn.train import (Checkpoint, TrainConfig, TrainState, is_bad, load_checkpoint,
                            next_state, save_checkpoint, seeded_generators)
from fgexp.tangents import NormalBuffer

SPLITS = ("train", "val", "test")


def check_batch(models: Sequence[nn.Module], specs: Sequence[GradientSpec],
                cfgs: Sequence[TrainConfig], seeds: Sequence[int]) -> None:
    """One ValueError line for a batch that cannot train together (before any compute)."""
    if len(models) < 1:
        raise ValueError("a batch needs at least one run (R >= 1), got R = 0")
    if not len(models) == len(specs) == len(cfgs) == len(seeds):
        raise ValueError(f"a batch needs one spec, config and seed per model, got {len(models)} "
                         f"models, {len(specs)} specs, {len(cfgs)} configs, {len(seeds)} seeds")
    sizes = {(c.batch_size, c.eval_batch_size) for c in cfgs}
    if len(sizes) > 1:
        raise ValueError(f"runs of one batch need one batch size, got (train, eval) sizes "
                         f"{sorted(sizes)}")
    independent = [i for i, s in enumerate(specs)
                   if getattr(s, "activity_tangents", None) == "independent"]
    if independent:
        raise ValueError(f"run {independent[0]} asks for independent activity tangents; the "
                         "batched engine shares each run's tangents across its batch")
    stack(models)  # shapes (ValueError naming the odd run)


def _resume(models, seeds, checkpoints, device):
    states, gens = [], []
    for model, seed, ckpt in zip(models, seeds, checkpoints):
        state, g = load_checkpoint(ckpt, model, seed, device) if ckpt else (None, None)
        states.append(state or TrainState())
        gens.append(g or seeded_generators(seed, device))
    return states, gens


def _sgd(stacked: StackedFC, grads: dict, lrs_r: torch.Tensor, frozen_r: torch.Tensor) -> None:
    """p <- p - lr_r g for every run not frozen (plain SGD, as torch.optim.SGD without momentum)."""
    for name, p in stacked.params().items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        step = grads[name] * lrs_r.view(shape)
        if frozen_r.any():
            step = torch.where(frozen_r.view(shape), torch.zeros((), dtype=p.dtype), step)
        p.sub_(step)


def train_epoch(stacked: StackedFC, x_nxd, y_n, specs, lrs_r, cfgs, gens, bar=None,
                draws: NormalBuffer | None = None) -> list[bool]:
    """One pass of every run over the training split in its own order; diverged flags (R,).
    `draws`: the batch's reused weight-tangent buffers."""
    n, bs = len(y_n), cfgs[0].batch_size
    order_rxn = torch.stack([torch.randperm(n, generator=g[0]) for g in gens]).to(x_nxd.device)
    frozen = [False] * len(specs)
    frozen_r = torch.zeros(len(specs), dtype=torch.bool, device=x_nxd.device)
    tangent_gens = [g[1] for g in gens]
    for start in range(0, n, bs):
        idx = order_rxn[:, start:start + bs]
        losses_r, grads = step_gradients(stacked, x_nxd[idx], y_n[idx], specs, tangent_gens,
                                         draws)
        for r, loss in enumerate(losses_r.tolist()):
            if not frozen[r] and is_bad(loss, cfgs[r].diverge_loss):
                frozen[r] = True
                frozen_r[r] = True
        if all(frozen):
            break
        _sgd(stacked, grads, lrs_r, frozen_r)
        if bar is not None:
            bar.update(idx.shape[1] * (len(frozen) - sum(frozen)))
    return frozen


def train_runs(models: Sequence[nn.Module], data: DataSet, specs: Sequence[GradientSpec],
               cfgs: Sequence[TrainConfig], seeds: Sequence[int],
               checkpoints: Sequence[Checkpoint | Path | None] | None = None, device=None,
               progress: bool = False, desc: str = "",
               on_epoch: Callable[[int, dict], None] | None = None,
               on_end: Callable[[int, TrainState], None] | None = None) -> list[TrainState]:
    """Train R runs to their ends (resuming each from its checkpoint); their final states.

    models[i] is trained in place (its weights are written back when run i ends or saves a
    checkpoint). on_end(i, state) runs when run i has ended (also for a run that had ended
    before); on_epoch(i, row) after run i's epoch checkpoint (tests use it to interrupt).
    """
    from tqdm import tqdm
    check_batch(models, specs, cfgs, seeds)
    checkpoints = [c if c is None or isinstance(c, Checkpoint) else Checkpoint(Path(c))
                   for c in (checkpoints or [None] * len(models))]
    states, gens = _resume(models, seeds, checkpoints, device)
    live = [i for i, s in enumerate(states) if s.status is None]
    for i in (i for i, s in enumerate(states) if s.status is not None):
        if on_end:
            on_end(i, states[i])
    x_nxd = data.train.x.flatten(1).to(device)
    y_n = data.train.y.to(device)
    evals = {name: (getattr(data, name).x.to(device), getattr(data, name).y.to(device))
             for name in SPLITS}
    stacked = stack([models[i] for i in live]) if live else None
    total = sum(cfgs[i].max_epochs - states[i].epoch for i in live) * len(y_n)
    draws = NormalBuffer()  # weight tangents, reused across the batch's steps
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        while live:
            start = time.perf_counter()
            lrs_r = torch.tensor([cfgs[i].lr for i in live], dtype=stacked.weights[0].dtype,
                                 device=x_nxd.device)
            diverged = train_epoch(stacked, x_nxd, y_n, [specs[i] for i in live], lrs_r,
                                   [cfgs[i] for i in live], [gens[i] for i in live], bar,
                                   draws)
            scores = {name: evaluate(stacked, x, y, cfgs[live[0]].eval_batch_size)
                      for name, (x, y) in evals.items()}
            seconds = (time.perf_counter() - start) / len(live)  # per run: the batch's share
            keep = []
            for r, i in enumerate(live):
                row = {"epoch": states[i].epoch + 1}
                for name in SPLITS:
                    row[f"{name}_loss"], row[f"{name}_acc"] = (scores[name][0][r],
                                                               scores[name][1][r])
                row["epoch_seconds"] = seconds
                states[i] = next_state(states[i], row, diverged[r], cfgs[i])
                ended = states[i].status is not None
                if checkpoints[i] or ended:
                    write_back(stacked, r, models[i])
                if checkpoints[i]:
                    save_checkpoint(checkpoints[i], models[i], states[i], gens[i])
                if on_epoch:
                    on_epoch(i, row)
                if ended:
                    bar.update((cfgs[i].max_epochs - states[i].epoch) * len(y_n))
                    if on_end:
                        on_end(i, states[i])
                else:
                    keep.append(r)
            live = [live[r] for r in keep]
            if live and len(keep) < stacked.runs:
                stacked = stacked.select(keep)
            bar.set_postfix(runs=len(live), refresh=False)
    return states
