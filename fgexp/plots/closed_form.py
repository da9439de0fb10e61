"""Figures 4 and 5b and the Appendix C table: gradient descent on closed-form functions
(Sections 4.2 and 4.3).

Input: the rows of results/closed_form.csv, one per function, n, gradient, k, sampler, angle
and seed; means and spreads over seeds are taken here.
"""
from __future__ import annotations

import matplotlib
import pandas as pd
from matplotlib import pyplot as plt

from fgexp import paper
from fgexp.plots.approximation import figure5a_axes
from fgexp.plots.style import gradient_colour, gradient_name, gradient_rank

CF_TITLES = {"sphere": "Sphere", "rosenbrock": "Rosenbrock", "styblinski-tang": "Styblinski-Tang"}
CF_K_MARKERS = {1: "x", 2: "o", 4: "s", 16: "D", 64: "^"}
# log-scale floors: a best value of exactly 0 (or below the floor) is drawn at the floor
CF_FLOORS = {"sphere": 1e-30, "rosenbrock": 1e-10}
# Styblinski-Tang's global minimum per dimension, f(x*) / n (fgexp.functions, rounded).
ST_MINIMUM_PER_DIM = -39.16617


def cf_label(gradient: str, k) -> str:
    """'bp', 'FG k=1', 'FG mean k=4', 'FROG k=16' (the paper's legend notation)."""
    if gradient == "bp":
        return "BP"
    k = int(k)
    if gradient == "fg-mean" and k == 1:
        return "FG ($k=1$)"
    return f"{gradient_name(gradient)}, $k={k}$"


def cf_style(gradient: str, k) -> dict:
    """Colour by gradient (shade by k), marker by k; bp black, the single tangent grey."""
    if gradient == "bp":
        return dict(color="black", marker="*", linestyle="-", markersize=6)
    k = int(k)
    if gradient == "fg-mean" and k == 1:
        return dict(color="0.5", marker="x", linestyle=":", markersize=5)
    base = matplotlib.colors.to_rgb(gradient_colour(gradient))
    shade = {2: 0.55, 4: 0.3, 16: 0.0, 64: -0.3}.get(k, 0.0)  # fewer tangents: lighter
    if shade >= 0:
        color = tuple(c + (1 - c) * shade for c in base)
    else:
        color = tuple(c * (1 + shade) for c in base)
    return dict(color=color, marker=CF_K_MARKERS.get(k, "o"),
                linestyle="-" if gradient == "frog" else "--", markersize=4)


def cf_per_dim(df: pd.DataFrame, column: str = "best_value") -> pd.Series:
    """Styblinski-Tang values per dimension, f / n (minimum -39.166 for every n)."""
    return df[column] / df["n"]


def cf_summary(df: pd.DataFrame, x: str, value: pd.Series) -> pd.DataFrame:
    """Mean, min, max and count of `value` over seeds, per gradient, k and `x`."""
    frame = df.assign(value=value.to_numpy(), k=df["k"].fillna(0).astype(int))
    out = frame.groupby(["gradient", "k", x])["value"].agg(["mean", "min", "max", "count"])
    return out.reset_index()


def _cf_gradient_order(summary: pd.DataFrame) -> list[tuple[str, int]]:
    """(gradient, k) pairs in legend order: bp, the single tangent, FG mean by k, FROG by k."""
    keys = summary[["gradient", "k"]].drop_duplicates().itertuples(index=False)
    return sorted(keys, key=lambda gk: (gradient_rank(gk[0]),
                                        gk[0] != "fg-mean" or gk[1] != 1, gk[1]))


def _cf_lines(ax, summary: pd.DataFrame, x: str, floor: float | None) -> None:
    for gradient, k in _cf_gradient_order(summary):
        rows = summary[(summary["gradient"] == gradient) & (summary["k"] == k)].sort_values(x)
        lo, mean, hi = rows["min"], rows["mean"], rows["max"]
        if floor is not None:
            lo, mean, hi = lo.clip(lower=floor), mean.clip(lower=floor), hi.clip(lower=floor)
        style = cf_style(gradient, k)
        ax.fill_between(rows[x], lo, hi, color=style["color"], alpha=0.12, linewidth=0)
        ax.plot(rows[x], mean, label=cf_label(gradient, k), linewidth=1.3, **style)


def figure4(df: pd.DataFrame) -> plt.Figure:
    """Best value reached against n, a panel per function, a line per gradient (Figure 4)."""
    df = df[df["sampler"].fillna("normal") != "cone"]
    names = [f for f in paper.FUNCTIONS if f in set(df["function"])]
    fig, axes = plt.subplots(1, len(names), figsize=(4.3 * len(names), 4.0), squeeze=False)
    seeds = sorted(df.groupby(["function", "n", "gradient", "k"], dropna=False)["seed"]
                   .count().unique())
    for ax, name in zip(axes[0], names):
        sub = df[df["function"] == name]
        if name == "styblinski-tang":
            summary = cf_summary(sub, "n", cf_per_dim(sub))
            _cf_lines(ax, summary, "n", None)
            ax.axhline(ST_MINIMUM_PER_DIM, color="0.3", linestyle=":", linewidth=1.0,
                       label="global minimum")
            ax.set_ylabel(r"best value per dimension $f(x_{best}) / n$")
        else:
            summary = cf_summary(sub, "n", sub["best_value"])
            _cf_lines(ax, summary, "n", CF_FLOORS.get(name, 1e-30))
            ax.set_yscale("log")
            ax.set_ylabel(r"best value $f(x_{best})$ (minimum 0)")
        ax.set_xscale("log", base=2)
        ns = sorted(sub["n"].unique())
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns], fontsize=7)
        ax.set_xlabel("dimension $n$")
        ax.set_title(CF_TITLES.get(name, name), fontsize=10)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    spread = f"n = {', '.join(map(str, seeds))} seeds"
    floors = ", ".join(f"{CF_TITLES[f]} {v:g}" for f, v in CF_FLOORS.items() if f in names)
    fig.suptitle(f"Gradient descent on closed-form functions: best value, mean over seeds "
                 f"({spread}), band = min to max; values under the floor ({floors}) drawn "
                 f"at it", fontsize=9)
    fig.tight_layout(rect=(0, 0.13, 1, 0.97))
    return fig


def figure5b_axes(ax: plt.Axes, df: pd.DataFrame) -> None:
    """Best Styblinski-Tang value per dimension against the cone angle (Figure 5, right)."""
    df = df[df["sampler"] == "cone"]
    ns = sorted(int(n) for n in df["n"].unique())
    n = 64 if 64 in ns else ns[-1]
    df = df[(df["n"] == n) & (df["function"] == "styblinski-tang")]
    summary = cf_summary(df, "angle_deg", cf_per_dim(df))
    _cf_lines(ax, summary, "angle_deg", None)
    ax.axhline(ST_MINIMUM_PER_DIM, color="0.3", linestyle=":", linewidth=1.0,
               label="global minimum")
    ax.set_xticks(sorted(df["angle_deg"].unique()))
    ax.set_xlabel(r"cone angle $\alpha$ between $v_i$ and $v_1$ (degrees)")
    ax.set_ylabel(r"best Styblinski-Tang value per dimension $f / n$")
    seeds = sorted(df.groupby(["gradient", "k", "angle_deg"])["seed"].count().unique())
    ax.set_title(f"Styblinski-Tang, $n = {n}$: best value (mean of "
                 f"{', '.join(map(str, seeds))} seeds, band = min to max)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def figure5(df_approximation: pd.DataFrame, df_closed_form: pd.DataFrame) -> plt.Figure:
    """Figure 5: cosine similarity (left) and best Styblinski-Tang value (right) vs angle."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    figure5a_axes(left, df_approximation)
    figure5b_axes(right, df_closed_form)
    fig.tight_layout()
    return fig


def table_c(df: pd.DataFrame, ns=(64, 1024)) -> pd.DataFrame:
    """Appendix C: Rosenbrock best value per seed and their mean, with each gradient's rate.

    Uses the dimensions `ns` that the data has; without any of them, its two largest.
    """
    df = df[(df["function"] == "rosenbrock") & (df["sampler"].fillna("normal") != "cone")]
    present = sorted(set(df["n"]) & set(ns)) or sorted(df["n"].unique())[-2:]
    df = df[df["n"].isin(present)].copy()
    if df.empty:
        return pd.DataFrame()
    df["k"] = df["k"].fillna(0).astype(int)
    rows = []
    for (n, gradient, k), group in df.groupby(["n", "gradient", "k"]):
        group = group.sort_values("seed", kind="stable")  # the CSV's row order must not matter
        row = {"n": int(n), "gradient": gradient, "k": "" if gradient == "bp" else int(k),
               "lr": float(group["lr"].iloc[0])}
        for seed, value in zip(group["seed"], group["best_value"]):
            row[f"seed {int(seed)}"] = float(value)
        row["mean"] = float(group["best_value"].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    key = table["gradient"].map(gradient_rank) * 1000 + table["k"].replace("", 0).astype(int)
    return table.assign(_key=key).sort_values(["n", "_key"], kind="stable").drop(columns="_key")
