"""The LR-rule validation figure: predicted (from bp's searched rate) against searched rates.

Four panels: our closed-form table, our network tables, then the authors' published rates for
the same tasks, a separate source drawn apart. Colour: gradient; marker: function or model;
grey bands: within 2x and 10x of the prediction.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from fgexp import paper
from fgexp.plots.closed_form import ST_MINIMUM_PER_DIM
from fgexp.plots.style import gradient_colour, gradient_name

PANELS = (("ours", ("closed_form",), "ours: results/lrs/closed_form.csv"),
          ("ours", ("fc_mnist", "resnet_vit"), "ours: results/lrs/fc_mnist.csv, resnet_vit.csv"),
          ("authors", ("closed_form",), "authors' published rates: closed-form"),
          ("authors", ("fc_mnist", "resnet_vit"), "authors' published rates: networks"))
MARKERS = {"sphere": "o", "rosenbrock": "s", "styblinski-tang": "^", "fc": "D",
           "resnet18": "P", "vit": "X"}


def _within(df: pd.DataFrame, factor: float) -> int:
    q = df["searched_over_predicted"]
    return int(((q <= factor) & (q >= 1 / factor)).sum())


def _panel(ax: plt.Axes, df: pd.DataFrame, title: str) -> None:
    lo = min(df["lr_predicted"].min(), df["lr_searched"].min()) / 2
    hi = max(df["lr_predicted"].max(), df["lr_searched"].max()) * 2
    line = np.array([lo, hi])
    for factor, shade in ((10, "0.93"), (2, "0.82")):
        ax.fill_between(line, line / factor, line * factor, color=shade, lw=0)
    ax.plot(line, line, color="0.3", lw=0.8)
    for (gradient, group), part in df.groupby(["gradient", "group"]):
        cone = part["sampler"] == "cone"
        for sub, face in ((part[~cone], gradient_colour(gradient)), (part[cone], "none")):
            if not sub.empty:
                ax.scatter(sub["lr_predicted"], sub["lr_searched"], s=16,
                           marker=MARKERS.get(group, "o"), facecolors=face,
                           edgecolors=gradient_colour(gradient), linewidths=0.7, alpha=0.8)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="predicted rate (isotropic rule, from bp's rate)", ylabel="searched rate")
    ax.set_title(f"{title}\nwithin 2x: {_within(df, 2)}/{len(df)}, "
                 f"within 10x: {_within(df, 10)}/{len(df)}", fontsize=8)


def figure(predictions: pd.DataFrame, rule: str = "isotropic") -> plt.Figure:
    """Predicted against searched rates, one panel per source and task kind."""
    df = predictions[predictions["rule"] == rule]
    fig, axes = plt.subplots(2, 2, figsize=(9, 8.6))
    for ax, (source, tables, title) in zip(axes.flat, PANELS):
        part = df[(df["source"] == source) & df["table"].isin(tables)]
        if part.empty:
            ax.set_axis_off()
            ax.set_title(f"{title}: no rows", fontsize=8)
            continue
        _panel(ax, part, title)
    gradients = list(dict.fromkeys(df["gradient"]))
    handles = [plt.Line2D([], [], ls="", marker="o", color=gradient_colour(g),
                          label=gradient_name(g)) for g in gradients]
    handles += [plt.Line2D([], [], ls="", marker=m, color="0.4", label=g)
                for g, m in MARKERS.items() if g in set(df["group"])]
    handles.append(plt.Line2D([], [], ls="", marker="o", mfc="none", color="0.4",
                              label="cone tangents"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.suptitle("Learning rates predicted from bp's rate (fgexp.lr.rules) against searched "
                 "rates; bands: 2x, 10x", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


# ---------------------------------------------------------------------------------------------
# The outcome test: Figure 4 rerun with the rule's rates against the searched-rate results

AT_MINIMUM = 1e-6  # a mean gap below this x max(1, |f_min|) counts as "at the minimum"
GAP_FLOOR = 1e-12  # log-scale floor of the outcome figure


def _gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and max over seeds of the gap f_best - f_min, per function, n, gradient, k."""
    df = df[df["sampler"].fillna("normal") != "cone"].copy()
    f_min = np.where(df["function"] == "styblinski-tang", ST_MINIMUM_PER_DIM * df["n"], 0.0)
    df["gap"] = np.maximum(df["best_value"] - f_min, 0.0)
    df["scale"] = np.maximum(1.0, np.abs(f_min))
    keys = ["function", "n", "gradient", "k"]
    return (df.assign(k=df["k"].fillna(0).astype(int))
            .groupby(keys).agg(gap=("gap", "mean"), seeds=("seed", "nunique"), lr=("lr", "first"),
                               scale=("scale", "first")).reset_index())


def outcome_table(searched: pd.DataFrame, ruled: pd.DataFrame) -> pd.DataFrame:
    """One row per Figure 4 setting: mean gaps with searched and with rule rates, and a verdict:
    'both at minimum', 'within 2x', 'rule better' or 'rule worse' (by more than 2x)."""
    both = _gaps(searched).merge(_gaps(ruled), on=["function", "n", "gradient", "k"],
                                 suffixes=("_searched", "_rule"))
    tol = AT_MINIMUM * both["scale_searched"]
    g_s, g_r = both["gap_searched"], both["gap_rule"]
    ratio = (g_r + tol) / (g_s + tol)  # tol keeps 0 / 0 at 1
    at_min = (g_s <= tol) & (g_r <= tol)
    both["verdict"] = np.select([at_min, ratio < 0.5, ratio <= 2],
                                ["both at minimum", "rule better", "within 2x"], "rule worse")
    return both.drop(columns=["scale_searched", "scale_rule"])


def outcome_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts per function, forward gradients only (bp's rate is the same in both)."""
    fg = table[table["gradient"] != "bp"]
    counts = fg.groupby(["function", "verdict"]).size().unstack(fill_value=0)
    counts["settings"] = counts.sum(axis=1)
    return counts.reset_index()


def outcome_figure(table: pd.DataFrame, rule: str = "isotropic") -> plt.Figure:
    """Mean gap to the minimum with the rule's rates against the searched rates, per function."""
    functions = [f for f in paper.FUNCTIONS if f in set(table["function"])]
    fig, axes = plt.subplots(1, len(functions), figsize=(4.2 * len(functions), 4.4),
                             squeeze=False)
    for ax, function in zip(axes[0], functions):
        part = table[(table["function"] == function) & (table["gradient"] != "bp")]
        x = part["gap_searched"].clip(lower=GAP_FLOOR)
        y = part["gap_rule"].clip(lower=GAP_FLOOR)
        hi = max(x.max(), y.max()) * 3
        line = np.array([GAP_FLOOR, hi])
        ax.fill_between(line, line / 2, line * 2, color="0.85", lw=0)
        ax.plot(line, line, color="0.3", lw=0.8)
        for gradient, sub in part.groupby("gradient"):
            ax.scatter(x[sub.index], y[sub.index], s=14, color=gradient_colour(gradient),
                       label=gradient_name(gradient), alpha=0.8)
        good = part["verdict"].isin(["both at minimum", "within 2x", "rule better"]).sum()
        ax.set(xscale="log", yscale="log", xlim=(GAP_FLOOR / 3, hi), ylim=(GAP_FLOOR / 3, hi),
               xlabel="mean gap to the minimum, searched rates",
               ylabel=f"mean gap, rates from rule '{rule}'")
        ax.set_title(f"{function}: {good}/{len(part)} within 2x, at the minimum or better",
                     fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Figure 4 rerun with learning rates from bp's rate (rule '{rule}'); gaps "
                 f"below {GAP_FLOOR:g} drawn at {GAP_FLOOR:g}; n = 5 seeds per point", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig
