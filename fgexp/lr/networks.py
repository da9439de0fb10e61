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
        model = nets.build_model(run, data, seed, device)
        cfg = nets.train_config(self.config, run, lr, self.horizon(setting))
        for _, state, _ in epochs(model, data, nets.spec_of(run, self.config), cfg, seed,
                                  device=device):
            diverged = state.status == "diverged" or not math.isfinite(state.best_val)
            yield math.inf if diverged else state.best_val


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
    """ResNet18 and ViT (Section 4.5); a setting is (model, dataset, gradient, k, sampler)."""
    return _task("resnet_vit", ("model", "dataset"), preset, overrides)


fc_mnist.presets = tuple(nets.PRESETS["fc_mnist"])
resnet_vit.presets = tuple(nets.PRESETS["resnet_vit"])
