"""The step benchmark's figure: time and peak memory of a training step, as ratios to bp.

Input: results/benchmarks/nn_steps.csv (benchmarks/nn_steps.py via make bench), whose row order
is the order of the bars.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from fgexp.plots.style import stamp


def benchmark_steps(df: pd.DataFrame) -> plt.Figure:
    """Network training steps: time and peak memory as ratios to bp, one panel row per model
    and batch size."""
    cases = list(dict.fromkeys(zip(df["model"], df["batch"])))
    masks = [(df["model"] == model) & (df["batch"] == batch) for model, batch in cases]
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 0.28 * len(df) + 0.4 * len(cases) + 0.8),
                             squeeze=False,
                             gridspec_kw={"height_ratios": [int(m.sum()) for m in masks]})
    for row_axes, (model, batch), mask in zip(axes, cases, masks):
        sub = df[mask]
        labels = list(sub["method"])
        y = range(len(labels))
        for ax, column, title in ((row_axes[0], "time_ratio_to_bp", "seconds per step / bp"),
                                  (row_axes[1], "memory_ratio_to_bp", "peak tensor memory / bp")):
            colours = ["black" if m == "bp" else "tab:red" if "frog" in m else
                       "0.6" if m.startswith(("loop", "draw")) else "tab:blue" for m in labels]
            # Bars start at bp (1): cheaper methods extend left, dearer ones right.
            values = sub[column].to_numpy(dtype=float)
            ax.barh(list(y), values - 1.0, left=1.0, color=colours)
            bp_rows = [i for i, m in enumerate(labels) if m == "bp"]
            ax.plot([1.0] * len(bp_rows), bp_rows, "k|", markersize=9)
            ax.axvline(1.0, color="black", lw=0.8, ls="--")
            finite = values[np.isfinite(values) & (values > 0)]
            if len(finite):
                ax.set_xlim(min(finite.min(), 1.0) / 1.25, max(finite.max(), 1.0) * 1.25)
            ax.set_yticks(list(y), labels if ax is row_axes[0] else [""] * len(labels),
                          fontsize=7)
            ax.invert_yaxis()
            ax.set_xscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            low, high = ax.get_xlim()
            subs = (1.0, 2.0, 5.0) if high / low > 10 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{model}, batch {batch}: {title}", fontsize=9)
    device = df["device"].iloc[0] if "device" in df else "?"
    fig.suptitle(f"Training-step cost relative to backprop (median of repetitions; {device})",
                 fontsize=10)
    title_band = 0.45 / fig.get_figheight()  # inches kept free above the first panel row
    fig.tight_layout(rect=(0, 0, 1, 1 - title_band))
    return fig


def benchmark_stamp(df: pd.DataFrame) -> str:
    """The provenance line: machine, device, torch build, threads and commit of the first row."""
    first = df.iloc[0]
    return (f"make bench | {first['machine']}, {first['device']} | torch {first['torch']},"
            f" {first['threads']} thread(s) | commit {first.get('commit', 'unknown')}")


def stamped_benchmark_steps(df: pd.DataFrame) -> plt.Figure:
    """benchmark_steps with its provenance stamp, as committed in paper_figures/."""
    fig = benchmark_steps(df)
    stamp(fig, benchmark_stamp(df))
    return fig
