"""The local-guesses experiment as configuration (docs/local_guesses.md).

A preset is a tuple of GuessConfig parts (FC over widths, ResNet18 reduced), run in order into
one run directory. A run is one (model, width, method, k, aggregation, seed); its rows, one per
epoch, go to the store when it ends. Every method of a model trains at one fixed rate: bp's
rate from the LR table (not searched per method; docs/local_guesses.md says why).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fgexp.nn import data as datasets
from fgexp.nn.guesses import METHODS, TANGENT_SETS, GuessedNet, GuessSpec, Measures, guess_step
from fgexp.nn.runs import Run as NetRun
from fgexp.nn.runs import load_data as net_load_data
from fgexp.nn.train import TrainConfig, TrainState, evaluate, next_state, seeded_generators, \
    train_epoch

COLUMNS = ("model", "dataset", "width", "method", "k", "aggregation", "mode", "seed", "lr",
           "epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "cos_true",
           "mutual_cos", "status")
KEY_COLUMNS = ("model", "dataset", "width", "method", "k", "aggregation", "mode", "seed",
               "epoch")
TIMING_COLUMNS = ("epoch_seconds",)


@dataclass(frozen=True)
class GuessConfig:
    model: str = "fc"                          # "fc" or "resnet18" (fgexp.nn.models.build)
    dataset: str = "mnist5k"                   # a name in fgexp.nn.data.DATASETS
    widths: tuple[int | None, ...] = (256,)    # FC hidden widths; (None,) for ResNet18
    methods: tuple[str, ...] = ("bp", "local", "random:4", "guess:4", "blocks:4")  # "set:k"
    aggregations: tuple[str, ...] = ("mean", "projection")  # k = 1: they coincide, one run
    seeds: tuple[int, ...] = (0,)              # drive init, batch order and random tangents
    mode: str = "simulated"                    # "forward" (jvps) or "simulated" (tested equal)
    max_epochs: int = 10                       # epochs, early stopping after `patience`
    patience: int = 10                         # epochs without validation improvement
    batch_size: int = 64                       # paper: 64 for MNIST, 128 for CIFAR-10
    train_limit: int | None = None             # use only the first N training images
    eval_limit: int | None = None              # ... and N validation and N test images
    lr: float | None = None                    # one rate for every run; None: bp's table rate
    lr_table: str = "results/lrs/fc_mnist.csv"  # where bp's rate of the model is looked up
    data_root: str = "data"                    # torchvision root for mnist / cifar10
    download: bool = False                     # let torchvision download missing files


@dataclass(frozen=True)
class Run:
    model: str
    dataset: str
    width: int | None
    method: str
    k: int
    aggregation: str  # "" for bp and local
    seed: int

    @property
    def cell_id(self) -> str:
        width = f"-w{self.width}" if self.width else ""
        agg = f"-{self.aggregation}" if self.aggregation else ""
        return f"{self.model}{width}_{self.dataset}_{self.method}-k{self.k}{agg}_seed{self.seed}"

    def spec(self, mode: str) -> GuessSpec:
        return GuessSpec(self.method, self.k, self.aggregation or "projection", mode)


def parse_method(token: str) -> tuple[str, int]:
    """'guess:4' -> ('guess', 4); 'bp' -> ('bp', 1); ValueError naming a bad token."""
    method, sep, k = token.strip().partition(":")
    if method not in METHODS:
        raise ValueError(f"unknown tangent set {method!r} in {token!r}; allowed: "
                         f"{', '.join(METHODS)}")
    if method in TANGENT_SETS and not sep:
        raise ValueError(f"tangent set {method!r} needs a number of tangents, e.g. "
                         f"'{method}:4', got {token!r}")
    try:
        return method, int(k) if sep else 1
    except ValueError:
        raise ValueError(f"expected a method like '{method}:4', got {token!r}") from None


def runs(cfg: GuessConfig) -> list[Run]:
    out = []
    for width in cfg.widths:
        for token in cfg.methods:
            method, k = parse_method(token)
            aggs = ("",) if method not in TANGENT_SETS else \
                ("projection",) if k == 1 else cfg.aggregations
            out += [Run(cfg.model, cfg.dataset, width, method, k, a, s)
                    for a in aggs for s in cfg.seeds]
    return out


def build_net(run: Run, data: datasets.DataSet):
    from fgexp.nn.models import build
    return build(run.model, in_channels=data.in_channels, image_size=data.image_size,
                 num_classes=data.num_classes, width=run.width)


@functools.lru_cache(maxsize=None)
def num_blocks(model: str, width: int | None) -> int:
    """Blocks of a model built for MNIST-shaped input (the count does not depend on the data)."""
    from fgexp.nn.models import build
    return len(build(model, in_channels=1, image_size=28, num_classes=10, width=width).blocks)


def validate(parts: Sequence[GuessConfig]) -> None:
    """Every bad input as one ValueError/FileNotFoundError, before any compute or write."""
    if not parts:
        raise ValueError("no configuration parts given")
    for cfg in parts:
        datasets.check(cfg.dataset, cfg.data_root, cfg.download)
        for name in ("max_epochs", "patience", "batch_size", "train_limit", "eval_limit"):
            value = getattr(cfg, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("widths", "methods", "aggregations", "seeds"):
            if not getattr(cfg, name):
                raise ValueError(f"no {name} given")
        if min(cfg.seeds) < 0:
            raise ValueError(f"every seed must be >= 0, got {list(cfg.seeds)}")
        if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {cfg.lr}")
        for width in cfg.widths:
            blocks = num_blocks(cfg.model, width)
            for r in runs(cfg):
                r.spec(cfg.mode).check_blocks(blocks)
            for agg in cfg.aggregations:
                GuessSpec("random", 2, agg, cfg.mode)


# Fields that name the sweep (CSV columns) or say where things live: left out of the manifest,
# so that adding methods, widths or seeds to a run directory computes only the new cells.
SWEEP_FIELDS = ("widths", "methods", "aggregations", "seeds", "data_root", "download", "lr_table")


def config_record(cfg: GuessConfig) -> dict:
    """The manifest's record of a part: the fields that change a run's numbers."""
    record = dataclasses.asdict(cfg)
    for name in SWEEP_FIELDS:
        record.pop(name)
    return record


def learning_rate(cfg: GuessConfig, width: int | None) -> float:
    """cfg.lr, or bp's rate for the model (and width) in cfg.lr_table."""
    if cfg.lr is not None:
        return cfg.lr
    from fgexp.lr.table import lookup_lr
    setting = NetRun(cfg.model, cfg.dataset, width, "bp", None, 0).setting()
    return lookup_lr(cfg.lr_table, setting, "make lr-search (the bp setting of this model)")


def load_data(cfg: GuessConfig) -> datasets.DataSet:
    """The part's data set, cut to train_limit / eval_limit (as the network experiments do)."""
    return net_load_data(cfg, cfg.dataset)


def run_rows(run: Run, cfg: GuessConfig, data: datasets.DataSet, lr: float,
             device=None, bar=None) -> list[dict]:
    """Train one run from scratch and return its rows, one per epoch."""
    torch.manual_seed(run.seed)
    net = build_net(run, data).to(device)
    model = GuessedNet(net, data.train.x[:cfg.batch_size].to(device), data.num_classes).to(device)
    spec = run.spec(cfg.mode)
    tcfg = TrainConfig(lr=lr, max_epochs=cfg.max_epochs, patience=cfg.patience,
                       batch_size=cfg.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    batch_gen, tangent_gen = seeded_generators(run.seed, device)
    state, fixed = TrainState(), {"model": run.model, "dataset": run.dataset, "width": run.width,
                                  "method": run.method, "k": run.k,
                                  "aggregation": run.aggregation, "mode": cfg.mode,
                                  "seed": run.seed, "lr": lr}
    while state.status is None:
        start, measures, losses = time.perf_counter(), Measures.empty(), []

        def step(*args, **kwargs):
            loss = guess_step(*args, measures=measures, **kwargs)
            losses.append(float(loss))
            return loss
        diverged = train_epoch(model, data.train, spec, optimizer, tcfg, batch_gen, tangent_gen,
                               device, step, bar)
        row = {"epoch": state.epoch + 1, "train_loss": sum(losses) / len(losses)}
        for name, split in (("val", data.val), ("test", data.test)):
            row[f"{name}_loss"], row[f"{name}_acc"] = evaluate(model, split,
                                                               tcfg.eval_batch_size, device)
        row |= measures.means()
        row["epoch_seconds"] = time.perf_counter() - start
        state = next_state(state, row, diverged, tcfg)
    return [{**fixed, **row, "status": state.status} for row in state.history]


# Presets. Methods: bp and pure local learning as references; each tangent set over k.
_FC_METHODS = ("bp", "local", "random:1", "random:4", "random:16", "guess:1", "guess:4",
               "guess:16", "blocks:3", "blocks:16", "guess+blocks:4", "guess+blocks:16")
_RESNET_METHODS = ("bp", "local", "random:16", "guess:1", "guess:16", "blocks:6", "blocks:16",
                   "guess+blocks:16")
_LR_CHECK_METHODS = ("bp", "local", "random:16", "guess:1", "guess:16", "blocks:16",
                     "guess+blocks:16")
_RESNET_LRS = "results/lrs/resnet_vit.csv"
PRESETS: dict[str, tuple[GuessConfig, ...]] = {
    # seconds: plumbing on 256 digits, one epoch, both models
    "smoke": (GuessConfig(widths=(32,), methods=("bp", "local", "random:2", "guess:2",
                                                 "blocks:3"),
                          max_epochs=1, train_limit=256, eval_limit=128, lr=0.05),
              GuessConfig(model="resnet18", widths=(None,), methods=("guess:2",),
                          aggregations=("projection",), max_epochs=1, train_limit=32,
                          eval_limit=32, lr=0.01)),
    # about 30 minutes of one CPU core: FC on all 3500 mnist5k training digits, 2 seeds,
    # 7 epochs; ResNet18 reduced to 1000 training and 500 validation/test digits, 2 epochs, 1
    # seed. Rates fixed, not searched: bp's rates of results/lrs/fc_mnist.csv at commit bd8215f
    # (0.092 at width 256, 0.19 at 1024); ResNet18: 0.1, bp's rate in results/lrs/resnet_vit.csv
    # of the working tree on 2026-12-01 (the committed 0.01 came from one epoch on 500 images)
    "cpu": (GuessConfig(widths=(256,), methods=_FC_METHODS, seeds=(0, 1), max_epochs=7,
                        lr=0.092),
            GuessConfig(widths=(1024,), methods=_FC_METHODS, seeds=(0, 1), max_epochs=7,
                        lr=0.19),
            GuessConfig(model="resnet18", widths=(None,), methods=_RESNET_METHODS,
                        max_epochs=2, train_limit=1000, eval_limit=500, lr=0.1)),
    # the learning-rate check of the cpu preset's FC runs (seed 0, the largest k of each set)
    # at lower and higher rates than the cpu preset's 0.092 (width 256) and 0.19 (width 1024):
    # `make guesses-lr-check`, ~7 min
    **{name: (GuessConfig(widths=(256, 1024), methods=_LR_CHECK_METHODS, seeds=(0,),
                          max_epochs=7, lr=lr),)
       for name, lr in (("cpu-lr-low", 0.03), ("cpu-lr-high", 0.3))},
    # SLURM: full MNIST and CIFAR-10, 3 seeds, up to 100 epochs with early stopping
    "paper": tuple(
        [GuessConfig(dataset=d, widths=(256, 1024), methods=_FC_METHODS, seeds=(0, 1, 2),
                     max_epochs=100) for d in ("mnist", "cifar10")]
        + [GuessConfig(model="resnet18", dataset=d, widths=(None,), methods=_RESNET_METHODS,
                       seeds=(0, 1, 2), max_epochs=100, batch_size=b, lr_table=_RESNET_LRS)
           for d, b in (("mnist", 64), ("cifar10", 128))]),
}

