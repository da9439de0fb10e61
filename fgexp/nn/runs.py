"""Network training experiments (paper Sections 4.4 and 4.5) as configuration.

One config dataclass serves both experiments: FC networks on MNIST are models=("fc",) over
widths, ResNet18/ViT are models=("resnet18", "vit") over data sets. A run is one (model,
data set, width, gradient, k, seed); its rows (one per epoch) go to the CSV when it ends,
and a checkpoint per epoch lets a killed run resume.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fgexp.directional import GradientSpec
from fgexp.nn import data as datasets
from fgexp.nn.train import Checkpoint, TrainConfig, train
from fgexp.paper import MODELS, PAPER_GRADIENTS, parse_gradient

COLUMNS = ("model", "dataset", "width", "gradient", "k", "mode", "perturbation", "seed", "lr",
           "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
           "status")
TIMING_COLUMNS = ("epoch_seconds",)  # wall time: to DIR/<name>.timing.csv, not the result CSV
KEY_COLUMNS = ("model", "dataset", "width", "gradient", "k", "mode", "perturbation", "seed",
               "epoch")
SAMPLER = "normal"


@dataclass(frozen=True)
class NetConfig:
    models: tuple[str, ...] = ("fc",)            # names for fgexp.nn.models.build
    datasets: tuple[str, ...] = ("mnist",)       # names in fgexp.nn.data.DATASETS
    widths: tuple[int | None, ...] = (None,)     # FC / ViT hidden size (None: the model's
    #   default, 1024 / 256); ResNet18 ignores it
    vit_patch: int | None = None                 # ViT patch size in pixels (None: the paper's
    #   4); the other models ignore it
    gradients: tuple[str, ...] = PAPER_GRADIENTS  # "bp" or "label:k" tokens
    seeds: tuple[int, ...] = (0, 1, 2)           # drive init, batch order and tangents
    mode: str = "simulated"                      # paper simulates FG by backprop (Appendix B)
    perturbation: str = "activity"               # paper: activity perturbation
    max_epochs: int = 200                        # paper: 200, early stopping after `patience`
    patience: int = 10                           # epochs without validation improvement
    batch_size: int | None = None                # None: 64 for MNIST-like data, 128 for CIFAR-10
    train_limit: int | None = None               # use only the first N training images
    eval_limit: int | None = None                # ... and N validation and N test images
    search_epochs: int | None = None             # LR search epoch cap (paper: 50 for ResNet/ViT)
    lr_table: str = "results/lrs/fc_mnist.csv"   # learning rates from the LR search
    lr: float | None = None                      # one rate for every run (overrides the table)
    lr_rule: str | None = None                   # forward-gradient rates from this rule of
    #   fgexp.lr.rules applied to bp's table rate (docs/lr_rules.md); None: all from the table
    activity_tangents: str | None = None         # activity tangent scheme, a name in
    #   fgexp.nn.activity.SCHEMES (docs/network_gradients.md); None: each model's default
    data_root: str = "data"                      # where torchvision finds MNIST/CIFAR10
    download: bool = False                       # let torchvision download missing files


@dataclass(frozen=True)
class Run:
    model: str
    dataset: str
    width: int | None
    gradient: str
    k: int | None  # None for bp
    seed: int

    @property
    def cell_id(self) -> str:
        """Also the SLURM job name: every field of the sweep point, readable."""
        width = f"-w{self.width}" if self.width else ""
        k = f"-k{self.k}" if self.k else ""
        return f"{self.model}{width}_{self.dataset}_{self.gradient}{k}_seed{self.seed}"

    def setting(self) -> dict:
        """The LR-table setting of this run (all seeds share one rate)."""
        return {"model": self.model, "dataset": self.dataset,
                "width": "" if self.width is None else self.width,
                "gradient": self.gradient, "k": "" if self.k is None else self.k,
                "sampler": SAMPLER}


# Models whose size `width` sets: the FC hidden width, the ViT hidden size (ResNet18: fixed).
WIDTH_MODELS = ("fc", "vit")


def widths_of(cfg: NetConfig, model: str) -> tuple[int | None, ...]:
    """The widths a model runs at: cfg.widths for fc and vit, (None,) for resnet18."""
    return tuple(cfg.widths) if model in WIDTH_MODELS else (None,)


def runs(cfg: NetConfig) -> list[Run]:
    return [Run(m, d, w, *parse_gradient(g), s) for m in cfg.models for d in cfg.datasets
            for w in widths_of(cfg, m) for g in cfg.gradients for s in cfg.seeds]


def spec_of(run: Run, cfg: NetConfig) -> GradientSpec:
    from fgexp.nn.activity import ActivitySpec
    return ActivitySpec(run.gradient, run.k or 1, SAMPLER, cfg.mode,
                        perturbation=cfg.perturbation, activity_tangents=cfg.activity_tangents)


def batch_size(cfg: NetConfig, dataset: str) -> int:
    return cfg.batch_size or (128 if dataset == "cifar10" else 64)


def validate(cfg: NetConfig) -> None:
    """Every bad input as one ValueError/FileNotFoundError, before any compute or write."""
    for m in cfg.models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; allowed: {', '.join(MODELS)}")
    for w in cfg.widths:
        if w is not None and w < 1:
            raise ValueError(f"width must be >= 1, got {w}")
    if cfg.vit_patch is not None and "vit" in cfg.models:
        for d in cfg.datasets:
            size = datasets.INPUT_SHAPES.get(d, (None, None))[1]
            if cfg.vit_patch < 1 or (size and size % cfg.vit_patch):
                raise ValueError(f"vit_patch must divide the image size of {d} ({size}), "
                                 f"got {cfg.vit_patch}")
    for name in ("max_epochs", "patience", "batch_size", "train_limit", "eval_limit"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for d in cfg.datasets:
        datasets.check(d, cfg.data_root, cfg.download)
    for g in cfg.gradients:
        parse_gradient(g)
    for name in ("models", "datasets", "widths", "gradients", "seeds"):
        if not getattr(cfg, name):
            raise ValueError(f"no {name} given")
    if min(cfg.seeds) < 0:
        raise ValueError(f"every seed must be >= 0, got {list(cfg.seeds)}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {cfg.lr}")
    spec_of(runs(cfg)[0], cfg)  # mode/perturbation names
    if cfg.lr_rule is not None:
        from fgexp.closed_form import check_rule
        check_rule(cfg.lr_rule)
        if cfg.lr is not None:
            raise ValueError(f"--lr-rule takes bp's rate from the LR table, but one rate "
                             f"lr={cfg.lr} is set for every run (by --lr or the preset)")


def learning_rates(cfg: NetConfig, task: str, todo: Sequence[Run]) -> dict[Run, float]:
    """The rate of every run: cfg.lr, or the LR table (MissingLearningRate names the search)."""
    if cfg.lr is not None:
        return {r: cfg.lr for r in todo}
    from fgexp.lr.table import lookup_lr
    if cfg.lr_rule is None:
        return {r: lookup_lr(cfg.lr_table, r.setting(),
                             search_command(task, r.setting(), cfg.lr_table)) for r in todo}
    from fgexp.lr.rules import predict
    rates = {}
    for r in todo:  # every rate from bp's rate of the same model, data set and width
        bp = {**r.setting(), "gradient": "bp", "k": "", "sampler": SAMPLER}
        rates[r] = predict({**r.setting(), "perturbation": cfg.perturbation},
                           lookup_lr(cfg.lr_table, bp, search_command(task, bp, cfg.lr_table)),
                           cfg.lr_rule)
    return rates


def search_command(task: str, setting: Mapping, lr_table: str | None = None) -> str:
    """The command that makes a setting's missing rate: the recipe of the committed table
    where one covers `task` ("name:preset") (the one whose table `lr_table` is, where
    several do), else the generic search of the task."""
    from fgexp.lr.recipes import RECIPES
    folder = Path(lr_table).parent.name if lr_table is not None else ""
    # A recipe whose own folder holds the table first; else the experiment's own (no subdir).
    covering = sorted((r for r in RECIPES.values() if any(s.task == task for s in r.stages)),
                      key=lambda r: (r.subdir != folder, r.subdir != ""))
    if covering:
        select = " ".join(f"--select {key}={setting[key]}"
                          for key in ("model", "width", "gradient", "k")
                          if setting.get(key) not in (None, ""))
        return f"make lrs-{covering[0].name} ARGS='{select}'"
    return f"make lr-search TASK={task}"


def load_data(cfg: NetConfig, dataset: str) -> datasets.DataSet:
    full = datasets.load(dataset, cfg.data_root, cfg.download)
    return full.limit(cfg.train_limit, cfg.eval_limit)


def build_model(run: Run, data: datasets.DataSet, seed: int, device=None,
                vit_patch: int | None = None) -> torch.nn.Module:
    """The run's model, initialized from its seed (vit_patch: NetConfig.vit_patch)."""
    from fgexp.nn.models import build
    torch.manual_seed(seed)
    model = build(run.model, in_channels=data.in_channels, image_size=data.image_size,
                  num_classes=data.num_classes, width=run.width,
                  patch=vit_patch if run.model == "vit" else None)
    return model.to(device)


def train_config(cfg: NetConfig, run: Run, lr: float, max_epochs: int | None = None):
    return TrainConfig(lr=lr, max_epochs=max_epochs or cfg.max_epochs, patience=cfg.patience,
                       batch_size=batch_size(cfg, run.dataset))


def run_rows(run: Run, cfg: NetConfig, data: datasets.DataSet, lr: float,
             checkpoint: Checkpoint | Path | None, device=None, progress: bool = False,
             on_epoch=None) -> list[dict]:
    """Train one run (resuming from its checkpoint) and return its CSV rows."""
    model = build_model(run, data, run.seed, device, cfg.vit_patch)
    state = train(model, data, spec_of(run, cfg), train_config(cfg, run, lr), run.seed,
                  checkpoint, device, progress, desc=run.cell_id, on_epoch=on_epoch)
    return rows_of(run, cfg, lr, state)


def rows_of(run: Run, cfg: NetConfig, lr: float, state) -> list[dict]:
    """A finished run's CSV rows (one per epoch) from its TrainState."""
    fixed = {"model": run.model, "dataset": run.dataset, "width": run.width,
             "gradient": run.gradient, "k": run.k, "mode": cfg.mode,
             "perturbation": cfg.perturbation, "seed": run.seed, "lr": lr,
             "status": state.status}
    return [{**fixed, **row} for row in state.history]


def batchable(run: Run, cfg: NetConfig) -> bool:
    """FC runs train on the batched engine (fgexp.nn.batched), which serves the activity
    tangents shared across the batch (every scheme but "independent" is that one for a model
    without BatchNorm; docs/network_gradients.md); ResNet18/ViT train one by one."""
    return run.model == "fc" and getattr(cfg, "activity_tangents", None) != "independent"


def batches_of(todo: Sequence[Run], size: int) -> list[list[Run]]:
    """Batches of at most `size` runs that share a model shape (model, data set, width)."""
    if size < 1:
        raise ValueError(f"runs per batch must be >= 1 (R >= 1), got {size}")
    shapes: dict[tuple, list[Run]] = {}
    for r in todo:
        shapes.setdefault((r.model, r.dataset, r.width), []).append(r)
    return [group[i:i + size] for group in shapes.values() for i in range(0, len(group), size)]


def train_batch(batch: Sequence[Run], cfg: NetConfig, data: datasets.DataSet,
                lrs: Mapping[Run, float], checkpoints: Sequence[Checkpoint | None],
                device=None, progress: bool = False, on_end=None, on_epoch=None) -> None:
    """Train runs of one model shape as one batch; on_end(run, rows) as each run ends."""
    from fgexp.nn.batched import train_runs
    models = [build_model(r, data, r.seed, device, cfg.vit_patch) for r in batch]
    train_runs(models, data, [spec_of(r, cfg) for r in batch],
               [train_config(cfg, r, lrs[r]) for r in batch], [r.seed for r in batch],
               checkpoints, device, progress, desc=f"{len(batch)} runs {batch[0].cell_id}",
               on_epoch=on_epoch and (lambda i, row: on_epoch(batch[i], row)),
               on_end=on_end and (lambda i, st: on_end(batch[i], rows_of(batch[i], cfg,
                                                                       lrs[batch[i]], st))))


def checkpoint_for(directory: Path | str, run: Run, cfg: NetConfig, lr: float,
                   out: Path | str, device=None) -> Checkpoint:
    """The run's checkpoint: keyed by everything that changes its numbers and by its output
    directory, so a checkpoint of another config or --out is never resumed."""
    import hashlib
    import json
    key = {"run": dataclasses.asdict(run), "config": dict(config_record(cfg)), "lr": lr,
           "batch_size": batch_size(cfg, run.dataset), "out": str(Path(out).resolve()),
           "device": torch.device(device or "cpu").type}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Checkpoint(Path(directory) / f"{run.cell_id}-{digest[:16]}.pt",
                      json.loads(json.dumps(key, default=str)))


# Fields that name the sweep (they are CSV columns) or say where things live: left out of the
# manifest's config, so runs of one sweep point (SLURM array tasks) can share a directory.
SWEEP_FIELDS = ("models", "datasets", "widths", "gradients", "seeds", "data_root", "download",
                "lr_table")


def config_record(cfg: NetConfig) -> Mapping:
    """The manifest's config: the fields that change a run's numbers for a given sweep point."""
    record = dataclasses.asdict(cfg)
    for name in SWEEP_FIELDS:
        record.pop(name)
    return record


# Presets of both experiments (the scripts and the LR-search tasks share them).
SMOKE_FC_GRADIENTS = ("bp", "fg-mean:1", "frog:2")
PRESETS = {
    "fc_mnist": {
        # seconds: plumbing check on 256 real digits at a fixed rate (no LR table needed)
        "smoke": NetConfig(datasets=("mnist5k",), widths=(32,), gradients=SMOKE_FC_GRADIENTS,
                           seeds=(0,), max_epochs=2, train_limit=256, eval_limit=128, lr=0.05),
        # the paper's horizon (200 epochs, patience 10) on 5000 offline digits (3500 train),
        # widths 256 and 1024; the LR search runs over the same horizon (make lrs-fc-cpu)
        "cpu": NetConfig(datasets=("mnist5k",), widths=(256, 1024)),
        # the paper: full MNIST, three widths, 200 epochs with early stopping
        "paper": NetConfig(datasets=("mnist",), widths=(256, 1024, 4096)),
    },
    # ResNet18 takes the paper's activity tangents (per-example, docs/network_gradients.md) in
    # every preset; for the ViT (no BatchNorm) that scheme is the shared one.
    "resnet_vit": {
        "smoke": NetConfig(models=("resnet18", "vit"), datasets=("mnist5k",),
                           gradients=("bp", "frog:2"), seeds=(0,), max_epochs=1, train_limit=32,
                           eval_limit=32, lr=0.05, lr_table="results/lrs/resnet_vit.csv",
                           activity_tangents="per-example"),
        # honest but reduced, sized for 2 CPU cores (docs/resnet_vit.md): the whole 3500-digit
        # split, one seed, at most 20 epochs, early stopping after 5 without validation
        # improvement, rates searched over 3 epochs (make lrs-resnet-vit-cpu); the ViT at
        # hidden size 128 and patch 7 (17 tokens): at the paper's 256 and patch 4 an epoch
        # costs about 8x more, and at patch 4 bp stalled near 50 % error for 8 epochs
        "cpu": NetConfig(models=("resnet18", "vit"), datasets=("mnist5k",), widths=(128,),
                         vit_patch=7, seeds=(0,), max_epochs=20, patience=5, search_epochs=3,
                         lr_table="results/lrs/resnet_vit.csv", activity_tangents="per-example"),
        # the paper: both models on MNIST and CIFAR-10, 200 epochs (LR search: at most 50)
        "paper": NetConfig(models=("resnet18", "vit"), datasets=("mnist", "cifar10"),
                           search_epochs=50, lr_table="results/lrs/resnet_vit.csv",
                           activity_tangents="per-example"),
    },
}
