"""Figures 3 and 5a: how well k-tangent estimates approximate the gradient (Sections 4.1, 4.3).

Input: the rows of results/approximation_quality.csv (one per n, k, method, sampler and angle,
with the mean and 95% CI over the draws already taken).
"""
from __future__ import annotations

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D

from fgexp.plots.style import gradient_colour

# method -> (colour, marker, label in the paper's notation); colours as the gradients'.
APPROX_STYLE = {
    "single": ("0.35", None, r"single $g_v$ ($k=1$)"),
    "sum": (gradient_colour("fg-sum"), "s", r"sum $\Sigma_i\, g_{v_i}$"),
    "mean": (gradient_colour("fg-mean"), "o", r"mean $\frac{1}{k}\Sigma_i\, g_{v_i}$"),
    "sum_normalized": (gradient_colour("fg-sum-normalized"), "^",
                       r"sum, normalized $\Sigma_i\, g_{\hat v_i}$"),
    "mean_normalized": (gradient_colour("fg-mean-normalized"), "v",
                        r"mean, normalized $\frac{1}{k}\Sigma_i\, g_{\hat v_i}$"),
    "projection": (gradient_colour("frog"), "D", r"projection $P_U(\nabla f)$"),
}
COS_LABEL = r"cosine similarity $\cos(\tilde g, \nabla f)$"
RATIO_LABEL = r"norm ratio $\|\tilde g\|\,/\,\|\nabla f\|$"


def figure3_panel_ns(ns) -> list[int]:
    """At most 8 dimensions for the panels: every other power of two when there are more."""
    ns = sorted(int(n) for n in ns)
    return ns if len(ns) <= 8 else ns[::2][:8]


def _band(ax, x, mean, ci, color, **line_kw):
    ax.fill_between(x, mean - ci, mean + ci, color=color, alpha=0.2, linewidth=0)
    ax.plot(x, mean, color=color, **line_kw)


def _theory_k(n: int, ks, method: str, metric: str):
    """Theory curve over ks, or None where fgexp.theory has no exact expectation."""
    from fgexp import theory
    if method == "single":
        value = theory.single_cos_mean(n) if metric == "cos" else theory.single_norm_ratio_mean(n)
        return [value] * len(ks)
    if method == "projection":
        return [theory.projection_cos_mean(n, int(k)) for k in ks]
    if method in ("sum", "mean") and metric == "cos":
        return [theory.conical_cos_mean(n, int(k)) for k in ks]
    return None


def _figure3_panel(ax, df_n, n: int, metric: str, ks) -> None:
    for method, (color, marker, _) in APPROX_STYLE.items():
        rows = df_n[df_n["method"] == method].sort_values("k")
        if rows.empty:
            continue
        mean, ci = rows[f"{metric}_mean"].to_numpy(), rows[f"{metric}_ci95"].to_numpy()
        x = rows["k"].to_numpy()
        if method == "single":  # k = 1 only: drawn constant across k, as the paper does
            x, mean, ci = ks, mean[:1].repeat(len(ks)), ci[:1].repeat(len(ks))
        big = method.startswith("sum")  # sum lies under mean (same cosine): larger markers
        _band(ax, x, mean, ci, color, marker=marker, markersize=5 if big else 3.5,
              linewidth=1.6 if big else 1.1, zorder=2 if big else 3)
        curve = _theory_k(n, x, method, "cos" if metric == "cos" else "ratio")
        if curve is not None and not (method == "sum" and metric == "cos"):
            ax.plot(x, curve, color="black", linestyle="--", linewidth=0.9, alpha=0.85, zorder=5)
    if ks[0] <= n <= ks[-1]:
        ax.axvline(n, color="0.3", linestyle=":", linewidth=1.0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks[::2] if len(ks) > 6 else ks)
    ax.set_title(rf"$n = 2^{{{int(n).bit_length() - 1}}}$" if n & (n - 1) == 0 else f"n = {n}",
                 fontsize=9)
    ax.grid(True, which="major", alpha=0.3)


def figure3(df: pd.DataFrame) -> plt.Figure:
    """Cosine similarity (top rows) and norm ratio (bottom rows) against k, a panel per n."""
    df = df[df["sampler"] == "normal"]
    ns = figure3_panel_ns(df["n"].unique())
    ks = sorted(int(k) for k in df["k"].unique())
    cols = min(4, len(ns))
    rows = -(-len(ns) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.1 * cols, 2.45 * 2 * rows),
                             squeeze=False, sharex=True)
    for metric, block in (("cos", 0), ("norm_ratio", rows)):
        for i, n in enumerate(ns):
            ax = axes[block + i // cols, i % cols]
            _figure3_panel(ax, df[df["n"] == n], n, metric, ks)
            if metric == "cos":
                ax.set_ylim(-0.02, 1.05)
            else:
                ax.set_yscale("log")
            if i % cols == 0:
                ax.set_ylabel(COS_LABEL if metric == "cos" else RATIO_LABEL, fontsize=8)
        for j in range(len(ns), rows * cols):
            axes[block + j // cols, j % cols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("number of tangents $k$")
    for ax in axes.flat:
        ax.tick_params(labelsize=7, labelbottom=True)
    _figure3_legend(fig, df)
    return fig


def _figure3_legend(fig: plt.Figure, df: pd.DataFrame) -> None:
    methods = [m for m in APPROX_STYLE if m in set(df["method"])]
    handles = [Line2D([], [], color=APPROX_STYLE[m][0], marker=APPROX_STYLE[m][1],
                      label=APPROX_STYLE[m][2]) for m in methods]
    handles += [Line2D([], [], color="0.2", linestyle="--", label="theory (exact expectation)"),
                Line2D([], [], color="0.3", linestyle=":", label="$k = n$")]
    samples = sorted(df["samples"].unique())
    height = fig.get_figheight()
    fig.suptitle(
        r"Approximation of $\nabla f = \mathbf{1}_n$ with $k$ tangents $v_i \sim N(0, I_n)$: "
        f"mean over {', '.join(map(str, samples))} draws per point, bands = 95% CI",
        y=1 - 0.08 / height, va="top", fontsize=10)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.38 / height),
               ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.012, 1, 1 - 0.8 / height), h_pad=0.6, w_pad=0.4)


def figure5a_axes(ax: plt.Axes, df: pd.DataFrame) -> None:
    """Cosine similarity against the cone angle, mean vs projection (Figure 5, left panel)."""
    from fgexp import theory
    df = df[df["sampler"] == "cone"]
    ns = sorted(int(n) for n in df["n"].unique())
    n = 64 if 64 in ns else ns[-1]
    df = df[df["n"] == n]
    ks = sorted(int(k) for k in df["k"].unique())
    markers = ["o", "s", "D", "^", "v", "P"]
    for method in ("mean", "projection", *sorted(set(df["method"]) - {"mean", "projection"})):
        color, _, label = APPROX_STYLE[method]
        for j, k in enumerate(ks):  # label: the method's short name, notation dropped
            rows = df[(df["method"] == method) & (df["k"] == k)].sort_values("angle_deg")
            if rows.empty:
                continue
            shade = 0.45 + 0.55 * (j + 1) / len(ks)  # darker = more tangents
            _band(ax, rows["angle_deg"].to_numpy(), rows["cos_mean"].to_numpy(),
                  rows["cos_ci95"].to_numpy(), color, marker=markers[j % len(markers)],
                  markersize=4, linewidth=1.3, alpha=shade,
                  label=f"{label.split(' $')[0]}, $k={k}$")
    ax.axhline(theory.single_cos_mean(n), color="0.35", linestyle="--", linewidth=1.0,
               label=r"single $g_v$, $v \sim N(0, I_n)$, theory")
    angles = sorted(df["angle_deg"].unique())
    ax.set_xticks(angles)
    ax.set_xlabel(r"cone angle $\alpha$ between $v_i$ and $v_1$ (degrees)")
    ax.set_ylabel(COS_LABEL)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(True, alpha=0.3)
    samples = ", ".join(str(s) for s in sorted(df["samples"].unique()))
    ax.set_title(f"cone tangents, $n = {n}$ ({samples} draws per point, 95% CI)", fontsize=9)
    # Two columns (mean | projection) fit in the empty band under the projection's k = n line.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: ("projection" in labels[i], i))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7, ncol=2,
              loc="upper left", bbox_to_anchor=(0.0, 0.94), frameon=True,
              framealpha=0.9)


def figure5a(df: pd.DataFrame) -> plt.Figure:
    """Figure 5a on its own: figure5a_axes in a figure of its own size."""
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    figure5a_axes(ax, df)
    fig.tight_layout()
    return fig
