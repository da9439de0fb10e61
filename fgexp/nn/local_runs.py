"""LocalMixer experiments (Ren et al., Table 3) as configuration: config, presets, runs, the
training loop and the learning-rate search (docs/local_losses.md).

A run is one (setup, gradient, seed); a setup is "SIZE@DATASET" (e.g. "M/1/16@mnist5k"), a
gradient token is "METHOD" or "METHOD:AGGREGATION:K" (e.g. "lg-fg-a:projection:16"; bare
forward-gradient methods mean one tangent). SGD with momentum and a cosine schedule over
`epochs`, no early stopping; each epoch's train/validation/test loss and accuracy are rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fgexp.nn import data as datasets
from fgexp.nn.local_losses import LocalSpec, METHODS, set_local_gradients
from fgexp.nn.mixer import SIZES, check_size, local_mixer
from fgexp.nn.train import (TrainConfig, TrainState, evaluate, next_state, seeded_generators,
                            train_epoch)

COLUMNS = ("size", "dataset", "method", "aggregation", "k", "scope", "mode", "seed", "lr",
           "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
           "status")
KEY_COLUMNS = ("size", "dataset", "method", "aggregation", "k", "seed", "epoch")
SEARCH_COLUMNS = ("size", "dataset", "method", "aggregation", "k", "lr", "epochs", "val_loss",
                  "val_acc", "status")
SEARCH_KEY_COLUMNS = ("size", "dataset", "method", "aggregation", "k", "lr")
TABLE3_GRADIENTS = ("bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a")
MULTI_TANGENT = ("lg-fg-a:mean:4", "lg-fg-a:mean:16", "lg-fg-a:projection:4",
                 "lg-fg-a:projection:16")


@dataclass(frozen=True)
class LocalConfig:
    setups: tuple[str, ...] = ("S/1/1@mnist", "M/1/16@mnist", "M/8/16@cifar10")  # SIZE@DATASET
    gradients: tuple[str, ...] = TABLE3_GRADIENTS  # METHOD or METHOD:AGGREGATION:K
    seeds: tuple[int, ...] = (0, 1, 2)       # drive init, batch order and tangents
    epochs: int = 200                        # cosine schedule length; every run trains all
    batch_size: int = 128                    # training batch
    momentum: float = 0.9                    # SGD momentum
    weight_decay: float = 1e-4               # torch SGD weight decay (on every parameter)
    mode: str = "forward"                    # forward-gradient directional derivatives
    scope: str = "group"                     # local losses per (block, token, group)
    lr: float | None = None                  # one rate for every run (skips the search)
    search_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # grid per gradient
    search_epochs: int = 10                  # epochs of each search run (cosine over them)
    search_refine: bool = True               # then also try best / sqrt(10) and best * sqrt(10)
    search_seed: int = 0                     # the seed of the search runs
    train_limit: int | None = None           # use only the first N training images
    eval_limit: int | None = None            # ... and N validation and N test images
    data_root: str = "data"                  # where torchvision finds MNIST/CIFAR10
    download: bool = False                   # let torchvision download missing files


@dataclass(frozen=True)
class Run:
    size: str
    dataset: str
    spec: LocalSpec
    seed: int

    @property
    def gradient(self) -> str:
        return gradient_token(self.spec)

    @property
    def cell_id(self) -> str:
        return f"{self.size.replace('/', '-')}_{self.dataset}_{self.gradient}_seed{self.seed}"


def parse_setup(token: str) -> tuple[str, str]:
    size, sep, dataset = token.partition("@")
    if not sep or size not in SIZES or dataset not in datasets.DATASETS:
        raise ValueError(f"expected a setup SIZE@DATASET with SIZE in {', '.join(SIZES)} and "
                         f"DATASET in {', '.join(datasets.DATASETS)}, got {token!r}")
    return size, dataset


def parse_gradient(token: str, cfg: LocalConfig) -> LocalSpec:
    """'lg-fg-a:projection:16' -> LocalSpec; ValueError with one line for a bad token."""
    parts = token.strip().split(":")
    if parts[0] not in METHODS or len(parts) not in (1, 3):
        raise ValueError(f"expected a gradient METHOD or METHOD:AGGREGATION:K with METHOD in "
                         f"{', '.join(METHODS)}, got {token!r}")
    if len(parts) == 3 and "fg" not in parts[0]:
        raise ValueError(f"{parts[0]} is exact; it takes no aggregation or k, got {token!r}")
    aggregation, k = (parts[1], parts[2]) if len(parts) == 3 else ("mean", "1")
    try:
        k_value = int(k)
    except ValueError:
        raise ValueError(f"k must be an integer in {token!r}") from None
    return LocalSpec(parts[0], k_value, aggregation, cfg.mode, cfg.scope)


def gradient_token(spec: LocalSpec) -> str:
    if spec.perturbation is None:
        return spec.method
    return f"{spec.method}:{spec.aggregation}:{spec.k}"


def runs(cfg: LocalConfig, seeds=None) -> list[Run]:
    return [Run(*parse_setup(s), parse_gradient(g, cfg), seed) for s in cfg.setups
            for g in cfg.gradients for seed in (cfg.seeds if seeds is None else seeds)]


def validate(cfg: LocalConfig) -> None:
    """Every bad input as one ValueError/FileNotFoundError, before any compute or write."""
    for name in ("setups", "gradients", "seeds"):
        if not getattr(cfg, name):
            raise ValueError(f"no {name} given")
    for name in ("epochs", "batch_size", "search_epochs", "train_limit", "eval_limit"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if min(cfg.seeds) < 0:
        raise ValueError(f"every seed must be >= 0, got {list(cfg.seeds)}")
    for value, name in ((cfg.lr, "lr"), *((v, "search learning rate") for v in cfg.search_lrs)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if cfg.lr is None and not cfg.search_lrs:
        raise ValueError("no learning rate: give lr or search_lrs")
    if not (0 <= cfg.momentum < 1) or cfg.weight_decay < 0:
        raise ValueError("momentum must lie in [0, 1) and weight_decay be >= 0")
    for setup in cfg.setups:
        size, dataset = parse_setup(setup)
        datasets.check(dataset, cfg.data_root, cfg.download)
        image = 32 if dataset == "cifar10" else 8 if dataset == "synthetic" else 28
        check_size(size, image)
    for g in cfg.gradients:
        parse_gradient(g, cfg)


# Training

def load_data(cfg: LocalConfig, dataset: str) -> datasets.DataSet:
    return datasets.load(dataset, cfg.data_root, cfg.download).limit(cfg.train_limit,
                                                                     cfg.eval_limit)


def train_rows(size: str, data: datasets.DataSet, spec: LocalSpec, cfg: LocalConfig, lr: float,
               seed: int, epochs: int, device=None, bar=None) -> tuple[list[dict], TrainState]:
    """Train one LocalMixer for `epochs` epochs; one row per epoch, and the final state."""
    torch.manual_seed(seed)
    model = local_mixer(size, in_channels=data.in_channels, image_size=data.image_size,
                        num_classes=data.num_classes).to(device)
    train_cfg = TrainConfig(lr=lr, max_epochs=epochs, patience=epochs, batch_size=cfg.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    batch_gen, tangent_gen = seeded_generators(seed, device)
    state, rows = TrainState(), []
    while state.status is None:
        diverged = train_epoch(model, data.train, spec, optimizer, train_cfg, batch_gen,
                               tangent_gen, device, set_local_gradients, bar)
        row = {"epoch": state.epoch + 1}
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
            row[f"{name}_loss"], row[f"{name}_acc"] = evaluate(model, split, 1024, device)
        state = next_state(state, row, diverged, train_cfg)
        schedule.step()
        rows.append(row)
    return rows, state


def search_rows(size: str, dataset: str, data, spec: LocalSpec, cfg: LocalConfig, lr: float,
                device=None, bar=None) -> list[dict]:
    """One search run: the last epoch's validation loss and accuracy at this rate."""
    history, state = train_rows(size, data, spec, cfg, lr, cfg.search_seed, cfg.search_epochs,
                                device, bar)
    last = history[-1]
    return [{"size": size, "dataset": dataset, "method": spec.method,
             "aggregation": spec.aggregation, "k": spec.k, "lr": lr,
             "epochs": len(history), "val_loss": last["val_loss"], "val_acc": last["val_acc"],
             "status": state.status}]


def best_rates(rows: list[dict]) -> dict[tuple, float]:
    """(size, dataset, method, aggregation, k) -> the searched rate of least validation loss
    (diverged runs excluded; ties: the smaller rate)."""
    best: dict[tuple, tuple[float, float]] = {}
    for r in rows:
        loss = float(r["val_loss"])
        if r["status"] == "diverged" or not math.isfinite(loss):
            continue
        key = (r["size"], r["dataset"], r["method"], r["aggregation"], int(r["k"]))
        candidate = (loss, float(r["lr"]))
        if key not in best or candidate < best[key]:
            best[key] = candidate
    return {key: lr for key, (_, lr) in best.items()}


def neighbours(lr: float) -> tuple[float, float]:
    """The half-decade neighbours of a grid rate (rounded to 3 digits), for the refinement."""
    return tuple(float(f"{lr * f:.3g}") for f in (10 ** -0.5, 10 ** 0.5))


def rate_key(run: Run) -> tuple:
    return (run.size, run.dataset, run.spec.method, run.spec.aggregation, run.spec.k)


def fixed_row(run: Run, lr: float, status: str) -> dict:
    s = run.spec
    return {"size": run.size, "dataset": run.dataset, "method": s.method,
            "aggregation": s.aggregation if s.perturbation else "", "k": s.k if s.perturbation
            else "", "scope": s.scope if s.is_local else "", "mode": s.mode if s.perturbation
            else "", "seed": run.seed, "lr": lr, "status": status}


# Presets (experiments/local_mixer.py)
CPU_SETUPS = ("S/1/1@mnist5k", "M/1/16@mnist5k")
PRESETS = {
    # seconds: plumbing on 256 real digits, fixed rate, no search
    "smoke": LocalConfig(setups=("M/1/16@mnist5k",), gradients=("bp", "lg-fg-a",
                                                                "lg-fg-a:projection:4"),
                         seeds=(0,), epochs=1, batch_size=64, lr=0.01, search_lrs=(),
                         train_limit=256, eval_limit=128),
    # honest but reduced, sized for about 30 minutes of one CPU core: mnist5k (3500 training
    # digits), Table 3's six methods and LG-FG-A with 4 and 16 tangents (mean, projection),
    # a search of 2 epochs per gradient (5 rates one decade apart, then the best one's two
    # half-decade neighbours), then 2 seeds of 12 epochs;
    # simulated directional derivatives (tested equal to forward mode, faster on a CPU)
    "cpu": LocalConfig(setups=CPU_SETUPS, gradients=TABLE3_GRADIENTS + MULTI_TANGENT,
                       seeds=(0, 1), epochs=12, batch_size=64, weight_decay=0.0,
                       mode="simulated", search_lrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                       search_epochs=2),
    # Ren et al.'s Table 3 setting as far as their public code shows it (for SLURM GPUs):
    # MNIST S/1/1 and M/1/16, CIFAR-10 M/8/16, SGD momentum 0.9, weight decay 1e-4, cosine
    "paper": LocalConfig(gradients=TABLE3_GRADIENTS + MULTI_TANGENT, search_refine=False),
}
