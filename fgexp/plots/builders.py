"""The registry's machinery: every figure and table builder by name, the CSV schemas they read,
and how their outputs are written. Plot modules register here with `@builder(...)`;
fgexp.plots.registry imports them all, so that BUILDERS is complete once it is imported.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib import pyplot as plt

from fgexp.plots.data import read_results
from fgexp.plots.style import save

Outputs = dict[str, "plt.Figure | str"]  # figure stem -> Figure, or file name -> its text

_NETWORK_COLUMNS = (("model", "dataset", "gradient", "mode", "perturbation", "status"),
                    ("width", "k", "seed", "epoch", "test_acc", "test_loss"))
# CSV under the results directory -> (text columns, numeric columns) the figures read.
SCHEMAS = {
    "approximation_quality.csv": (("method", "sampler"),
                                  ("n", "k", "angle_deg", "samples", "cos_mean", "cos_ci95",
                                   "norm_ratio_mean", "norm_ratio_ci95")),
    "closed_form.csv": (("function", "gradient", "sampler"),
                        ("n", "k", "angle_deg", "seed", "lr", "best_value")),
    "fc_mnist.csv": _NETWORK_COLUMNS,
    "resnet_vit.csv": _NETWORK_COLUMNS,
    "benchmarks/nn_steps.csv": (("machine", "device", "model", "method"),
                                ("batch", "threads", "time_ratio_to_bp", "memory_ratio_to_bp")),
}


@dataclass(frozen=True)
class Builder:
    csvs: tuple[str, ...]  # file names under the results directory
    build: Callable[[Path], Outputs]
    doc: str


BUILDERS: dict[str, Builder] = {}


def builder(name: str, *csvs: str):
    def register(fn: Callable[[Path], Outputs]) -> Callable[[Path], Outputs]:
        BUILDERS[name] = Builder(csvs, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return register


def load(results_dir: Path, name: str) -> pd.DataFrame:
    """results_dir / name, checked against SCHEMAS[name]."""
    from fgexp.results import current_csv
    text, numeric = SCHEMAS[name]
    # A store's CSV is derived from its cell shards: rebuilt here if cut short, edited or stale.
    path = current_csv((results_dir / name).parent, Path(name).stem)
    return read_results(path, text, numeric)


def write_outputs(outputs: Outputs, figures_dir: Path) -> list[Path]:
    """Save figures as PDF and PNG and write texts; returns the paths written."""
    from fgexp.results import atomic_write_text
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, value in outputs.items():
        if isinstance(value, str):
            atomic_write_text(figures_dir / name, value)
            paths.append(figures_dir / name)
        else:
            paths += save(value, figures_dir, name)
    return paths
