"""Learning-rate search tasks for the network experiments (fgexp.lr.registry.Task).

A setting is (model, data set[, width], gradient, k, sampler); one evaluation trains the network
with the experiment's own loop (fgexp.nn.train.epochs) and yields, after each epoch, the best
validation loss so far (what early stopping keeps), inf once the run diverged. Epochs are
capped by the preset's `search_epochs` (paper: 50 for ResNet18/ViT; early stopping after
10 epochs without improvement applies as in training).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fgexp.config import coerce
from fgexp.lr.grid import last_value
from fgexp.lr.table import RATE_COLUMNS
from fgexp.nn import runs as nets
from fgexp.nn.train import epochs


@dataclass
class NetworkTask:
    name: str                         # LR table name: results/lrs/<name>.csv
    setting_columns: tuple[str, ...]  # besides gradient, k, sampler
    config: nets.NetConfig
    _data: dict = field(default_factory=dict, repr=False)  # data set name -> DataSet (cached)

    def settings(self) -> list[dict]:
        """One per (model, data set, width, gradient, k); all seeds share a rate."""
        out = {}
        for run in nets.runs(dataclasses.replace(self.config, seeds=(0,))):
            setting = {"model": run.model, "dataset": run.dataset, "width": run.width,
                       "gradient": run.gradient, "k": run.k, "sampler": nets.SAMPLER}
            out[run.cell_id] = {c: setting[c] for c in (*self.setting_columns, *RATE_COLUMNS)}
        return list(out.values())

    def data(self, dataset: str):
        if dataset not in self._data:
            self._data[dataset] = nets.load_data(self.config, dataset)
        return self._data[dataset]

    def run_of(self, setting: dict, seed: int) -> nets.Run:
        width = setting.get("width")
        k = setting.get("k")
        return nets.Run(setting["model"], setting["dataset"],
                        int(width) if width not in (None, "") else None, setting["gradient"],
                        int(float(k)) if k not in (None, "") else None, seed)

    def horizon(self, setting: dict) -> int:
        """Interim losses in a full evaluation (the pruning rule's step count)."""
        return self.config.search_epochs or self.config.max_epochs

    def objective(self, setting: dict, lr: float, seed: int) -> Iterator[float]:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the rank's GPU
        run = self.run_of(setting, seed)
        data = self.data(run.dataset)
        model = nets.build_model(run, data, seed, device, self.config.vit_patch)
        cfg = nets.train_config(self.config, run, lr, self.horizon(setting))
        # only the validation loss decides: the other splits are not evaluated
        for _, state, _ in epochs(model, data, nets.spec_of(run, self.config), cfg, seed,
                                  device=device, splits=("val",)):
            diverged = state.status == "diverged" or not math.isfinite(state.best_val)
            yield math.inf if diverged else state.best_val


    def batched(self, setting: dict, lrs: list[float], seeds: list[int]) -> list[list[float]]:
        """Losses (L, S) of every rate and seed, trained as one batch (FC models; others one
        by one): each run's best validation loss over the horizon, inf where it diverged."""
        if not nets.batchable(self.run_of(setting, seeds[0]), self.config):
            return [[last_value(self.objective(setting, lr, s)) for s in seeds] for lr in lrs]
        from fgexp.nn.batched import train_runs
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        runs = [self.run_of(setting, s) for _ in lrs for s in seeds]
        rates = [lr for lr in lrs for _ in seeds]
        data = self.data(runs[0].dataset)
        states = train_runs(
            [nets.build_model(r, data, r.seed, device, self.config.vit_patch) for r in runs],
            data,
            [nets.spec_of(r, self.config) for r in runs],
            [nets.train_config(self.config, r, lr, self.horizon(setting))
             for r, lr in zip(runs, rates)], [r.seed for r in runs], device=device)
        losses = [math.inf if st.status == "diverged" or not math.isfinite(st.best_val)
                  else st.best_val for st in states]
        return [losses[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(lrs))]


def _task(name: str, columns: tuple[str, ...], preset: str, overrides) -> NetworkTask:
    presets = nets.PRESETS[name]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {name}; allowed: {', '.join(presets)}")
    config = dataclasses.replace(presets[preset], lr=None)
    try:
        config = coerce(config, overrides)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad option for {name}: {err}") from None
    nets.validate(config)
    return NetworkTask(name, columns, config)


def fc_mnist(preset: str = "smoke", **overrides) -> NetworkTask:
    """FC networks (Section 4.4); a setting is (model, dataset, width, gradient, k, sampler)."""
    return _task("fc_mnist", ("model", "dataset", "width"), preset, overrides)


def resnet_vit(preset: str = "smoke", **overrides) -> NetworkTask:
    """ResNet18 and ViT (Section 4.5); a setting is (model, dataset, width, gradient, k,
    sampler), width the ViT's hidden size (empty for ResNet18 and the ViT's default)."""
    return _task("resnet_vit", ("model", "dataset", "width"), preset, overrides)


fc_mnist.presets = tuple(nets.PRESETS["fc_mnist"])
resnet_vit.presets = tuple(nets.PRESETS["resnet_vit"])


# The authors' published FC rates (paper Appendix B; shared/reference/paper_lrs/fc_nns.csv),
# in this suite's LR-table schema, as a separate table: never merged into a searched one.
PAPER_BACKEND = "paper-appendix-b"  # the backend column of every such row
PAPER_EVALUATIONS = 100             # Appendix B: 100 Propulate evaluations per setting


def paper_fc_rows(path) -> list[dict]:
    """Rows (fc, mnist, width, gradient, k, sampler, lr, loss, evaluations, backend) of the
    authors' fc_nns.csv (model 'fc_w=256', gradient_approach, k as '2.0', lr); their loss is
    not published (nan)."""
    import csv
    with open(path, newline="", encoding="utf-8") as fh:
        source = list(csv.DictReader(fh))
    rows = []
    for row in source:
        model, _, width = row["model"].partition("_w=")
        if model != "fc" or not width.isdigit():
            raise ValueError(f"{path}: model {row['model']!r} is not of the form fc_w=<width>")
        k = "" if row["gradient_approach"] == "bp" else int(float(row["k"]))
        rows.append({"model": "fc", "dataset": row["dataset"], "width": int(width),
                     "gradient": row["gradient_approach"], "k": k, "sampler": nets.SAMPLER,
                     "lr": float(row["lr"]), "loss": math.nan,
                     "evaluations": PAPER_EVALUATIONS, "backend": PAPER_BACKEND})
    return rows


def write_paper_table(source, lr_dir) -> str:
    """<lr_dir>/fc_mnist.csv from the authors' fc_nns.csv; returns its path."""
    from pathlib import Path

    from fgexp.lr.table import table_columns
    from fgexp.results import atomic_write_text, rows_to_csv
    path = Path(lr_dir) / "fc_mnist.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, rows_to_csv(paper_fc_rows(source),
                                        table_columns(("model", "dataset", "width"))))
    return str(path)
