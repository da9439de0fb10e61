"""The plotting stage: one function per figure or table, DataFrame in, matplotlib Figure out.

Nothing here computes results: figures are rebuilt from the CSVs under results/. Means,
spreads and confidence intervals are computed here, and always shown with n.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# One colour and label per gradient, shared by every figure (paper notation).
GRADIENT_STYLE = {
    "bp": ("black", "BP"),
    "fg-mean": ("tab:blue", "FG mean"),
    "fg-sum": ("tab:orange", "FG sum"),
    "fg-mean-normalized": ("tab:green", "FG mean (normalized)"),
    "fg-sum-normalized": ("tab:olive", "FG sum (normalized)"),
    "frog": ("tab:red", "FROG (projection)"),
}


def provenance(manifest_path: Path | str) -> str:
    """One line naming the preset, machine and commit that made a CSV (from its manifest)."""
    path = Path(manifest_path)
    if not path.exists():
        return f"source: {path.name} missing"
    m = json.loads(path.read_text())
    env = m.get("environment", {})
    commit = str(m.get("git_commit", "unknown"))[:12]
    return (f"preset {m.get('preset')} | {env.get('device', 'cpu')}, {env.get('cpu_count')} cores"
            f" | commit {commit} | {str(m.get('ended') or m.get('started'))[:10]}")


def stamp(fig: plt.Figure, text: str) -> None:
    """Put a provenance line in the bottom-right corner of a figure."""
    fig.text(0.995, 0.003, text, ha="right", va="bottom", fontsize=6, color="0.4")


def save(fig: plt.Figure, figures_dir: Path | str, stem: str) -> list[Path]:
    """Write FIG as PDF and PNG; returns the paths."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = [figures_dir / f"{stem}.pdf", figures_dir / f"{stem}.png"]
    # No creation date: replotting unchanged CSVs leaves the committed PDFs byte-identical.
    fig.savefig(paths[0], bbox_inches="tight", metadata={"CreationDate": None})
    fig.savefig(paths[1], bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency)."""
    def cell(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---- Figures 3 and 5a: approximation quality (Sections 4.1 and 4.3) -------------------------

# method -> (colour, marker, label in the paper's notation); colours follow GRADIENT_STYLE.
APPROX_STYLE = {
    "single": ("0.35", None, r"single $g_v$ ($k=1$)"),
    "sum": (GRADIENT_STYLE["fg-sum"][0], "s", r"sum $\Sigma_i\, g_{v_i}$"),
    "mean": (GRADIENT_STYLE["fg-mean"][0], "o", r"mean $\frac{1}{k}\Sigma_i\, g_{v_i}$"),
    "sum_normalized": (GRADIENT_STYLE["fg-sum-normalized"][0], "^",
                       r"sum, normalized $\Sigma_i\, g_{\hat v_i}$"),
    "mean_normalized": (GRADIENT_STYLE["fg-mean-normalized"][0], "v",
                        r"mean, normalized $\frac{1}{k}\Sigma_i\, g_{\hat v_i}$"),
    "projection": (GRADIENT_STYLE["frog"][0], "D", r"projection $P_U(\nabla f)$"),
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
    from matplotlib.lines import Line2D
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
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    figure5a_axes(ax, df)
    fig.tight_layout()
    return fig


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


# ---- Figures 4 and 5b, Appendix C table: closed-form functions (Sections 4.2 and 4.3) -----

CF_FUNCTIONS = ("sphere", "rosenbrock", "styblinski-tang")
CF_TITLES = {"sphere": "Sphere", "rosenbrock": "Rosenbrock", "styblinski-tang": "Styblinski-Tang"}
CF_K_MARKERS = {1: "x", 2: "o", 4: "s", 16: "D", 64: "^"}
# log-scale floors: a best value of exactly 0 (or below the floor) is drawn at the floor
CF_FLOORS = {"sphere": 1e-30, "rosenbrock": 1e-10}


def cf_label(gradient: str, k) -> str:
    """'bp', 'FG k=1', 'FG mean k=4', 'FROG k=16' (the paper's legend notation)."""
    if gradient == "bp":
        return "BP"
    k = int(k)
    if gradient == "fg-mean" and k == 1:
        return "FG ($k=1$)"
    return f"{GRADIENT_STYLE.get(gradient, ('', gradient))[1]}, $k={k}$"


def cf_style(gradient: str, k) -> dict:
    """Colour by gradient (shade by k), marker by k; bp black, the single tangent grey."""
    if gradient == "bp":
        return dict(color="black", marker="*", linestyle="-", markersize=6)
    k = int(k)
    if gradient == "fg-mean" and k == 1:
        return dict(color="0.5", marker="x", linestyle=":", markersize=5)
    base = matplotlib.colors.to_rgb(GRADIENT_STYLE.get(gradient, ("tab:gray",))[0])
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


def _cf_gradient_order(summary: pd.DataFrame):
    order = {"bp": 0, "fg-mean": 1, "frog": 2}
    keys = summary[["gradient", "k"]].drop_duplicates().itertuples(index=False)
    return sorted(keys, key=lambda gk: (order.get(gk[0], 3), gk[0] != "fg-mean" or gk[1] != 1,
                                        gk[1]))


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
    names = [f for f in CF_FUNCTIONS if f in set(df["function"])]
    fig, axes = plt.subplots(1, len(names), figsize=(4.3 * len(names), 4.0), squeeze=False)
    seeds = sorted(df.groupby(["function", "n", "gradient", "k"], dropna=False)["seed"]
                   .count().unique())
    for ax, name in zip(axes[0], names):
        sub = df[df["function"] == name]
        if name == "styblinski-tang":
            summary = cf_summary(sub, "n", cf_per_dim(sub))
            _cf_lines(ax, summary, "n", None)
            ax.axhline(-39.16617, color="0.3", linestyle=":", linewidth=1.0,
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
    ax.axhline(-39.16617, color="0.3", linestyle=":", linewidth=1.0, label="global minimum")
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
        row = {"n": int(n), "gradient": gradient, "k": "" if gradient == "bp" else int(k),
               "lr": float(group["lr"].iloc[0])}
        for seed, value in zip(group["seed"], group["best_value"]):
            row[f"seed {int(seed)}"] = float(value)
        row["mean"] = float(group["best_value"].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {"bp": 0, "fg-mean": 1, "frog": 2}
    key = table["gradient"].map(order).fillna(3) * 1000 + table["k"].replace("", 0).astype(int)
    return table.assign(_key=key).sort_values(["n", "_key"]).drop(columns="_key")


# Network experiments (Sections 4.4 and 4.5): Figure 6 and the ResNet18/ViT table.

def variant_label(gradient: str, k) -> str:
    """'bp' -> 'BP'; ('fg-mean', 1) -> 'FG (k=1)'; ('frog', 4) -> 'FROG (projection) k=4'."""
    if gradient == "bp":
        return GRADIENT_STYLE["bp"][1]
    if gradient == "fg-mean" and int(k) == 1:
        return "FG single tangent (k=1)"
    return f"{GRADIENT_STYLE.get(gradient, ('', gradient))[1]}, k={int(k)}"


def variant_color(gradient: str, k, ks) -> tuple:
    """The gradient's colour, darker for more tangents (k=1 palest)."""
    import matplotlib.colors as mcolors
    base = mcolors.to_rgb(GRADIENT_STYLE.get(gradient, ("tab:gray", ""))[0])
    if gradient == "bp":
        return base
    rank = sorted(ks).index(int(k)) / max(1, len(ks) - 1)
    mix = 0.55 * (1 - rank)  # blend towards white for small k
    return tuple(c + (1 - c) * mix for c in base)


RUN_KEYS = ("model", "dataset", "width", "gradient", "k", "mode", "perturbation", "seed")


def run_minima(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's minimum test error (1 - test accuracy) over its epochs, one row per run.

    `df` has k as int (0 for bp). Diverged runs count with the epochs before divergence.
    """
    keys = [c for c in RUN_KEYS if c in df.columns]
    runs = df.assign(test_error=1 - df["test_acc"])
    return runs.groupby(keys, dropna=False).agg(
        test_error=("test_error", "min"), epochs=("epoch", "max"),
        diverged=("status", lambda s: bool((s == "diverged").any()))).reset_index()


def summarize_minima(minima: pd.DataFrame, by) -> pd.DataFrame:
    """Mean, spread (min/max over seeds) and n of the runs' minimum test errors, in percent."""
    out = minima.groupby(list(by), dropna=False)["test_error"].agg(
        ["mean", "std", "min", "max", "count"]).reset_index()
    for c in ("mean", "std", "min", "max"):
        out[c] = 100 * out[c]
    return out.rename(columns={"mean": "test_error_pct", "std": "std_pct", "min": "min_pct",
                               "max": "max_pct", "count": "n"})


def _variants(df: pd.DataFrame):
    order = {"bp": 0, "fg-mean": 1, "frog": 2}
    pairs = {(g, int(k)) for g, k in zip(df["gradient"], df["k"].fillna(0))}
    return sorted(pairs, key=lambda p: (order.get(p[0], 9), p[1]))


def figure6(df: pd.DataFrame, curve_width: int = 1024, note: str = "") -> plt.Figure:
    """Left: best test error vs width per gradient (mean over seeds, min-max bars, n);
    right: mean test loss per epoch at `curve_width`."""
    df = df.assign(k=df["k"].fillna(0).astype(int))
    minima = run_minima(df)
    summary = summarize_minima(minima, ["width", "gradient", "k"])
    ks = sorted(k for k in df["k"].unique() if k > 0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.9))
    widths = sorted(summary["width"].unique())
    for g, k in _variants(df):
        rows = summary[(summary["gradient"] == g) & (summary["k"] == k)].sort_values("width")
        color = variant_color(g, k, ks)
        n = "/".join(str(v) for v in sorted(rows["n"].unique()))
        runs_gk = minima[(minima["gradient"] == g) & (minima["k"] == k)]
        diverged = int(runs_gk["diverged"].sum())
        n += f" per width, {diverged}/{len(runs_gk)} diverged" if diverged else ""
        left.errorbar(rows["width"], rows["test_error_pct"],
                      yerr=[rows["test_error_pct"] - rows["min_pct"],
                            rows["max_pct"] - rows["test_error_pct"]],
                      color=color, marker="o" if g != "frog" else "s", capsize=3, linewidth=1.4,
                      linestyle="-" if g != "frog" else "--", label=f"{variant_label(g, k)} (n={n})")
        curves = df[(df["width"] == curve_width) & (df["gradient"] == g) & (df["k"] == k)]
        if not curves.empty:
            mean = curves.groupby("epoch")["test_loss"].mean()
            right.plot(mean.index, mean.to_numpy(), color=color,
                       linestyle="-" if g != "frog" else "--", linewidth=1.4)
    left.set_xscale("log", base=2)
    left.set_xticks(widths, [str(w) for w in widths])
    left.set_yscale("log")
    left.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.tick_params(axis="y", which="minor", labelsize=7)
    left.set_xlabel("hidden layer width")
    left.set_ylabel("best test error (%)")
    left.set_title("mean over seeds, bars: min to max", fontsize=8)
    left.grid(True, which="both", alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    right.set_xlabel("epoch")
    right.set_ylabel("test loss")
    right.set_title(f"width {curve_width}: mean over the seeds still training", fontsize=8)
    right.set_yscale("log")
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.grid(True, which="both", alpha=0.3)
    datasets = ", ".join(sorted(df["dataset"].unique()))
    fig.suptitle(f"FC networks on {datasets}{note}", fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.02))
    return fig


def table_networks(df: pd.DataFrame) -> pd.DataFrame:
    """Minimum test error (%) per model, data set and gradient: mean over seeds of each run's
    minimum over epochs, with standard deviation, n and the most epochs a run trained."""
    df = df.assign(k=df["k"].fillna(0).astype(int))
    minima = run_minima(df)
    summary = summarize_minima(minima, ["model", "dataset", "gradient", "k"])
    epochs = minima.groupby(["model", "dataset", "gradient", "k"])["epochs"].max().reset_index()
    out = summary.merge(epochs, on=["model", "dataset", "gradient", "k"])
    out = out.assign(_o=out["gradient"].map({"bp": 0, "fg-mean": 1, "frog": 2}).fillna(9))
    out = out.sort_values(["model", "dataset", "_o", "k"]).drop(columns=["_o", "min_pct", "max_pct"])
    out["k"] = out["k"].map(lambda k: "" if k == 0 else str(k))
    return out.reset_index(drop=True)


def table_networks_markdown(table: pd.DataFrame) -> str:
    """Rows: gradient and k; columns: model / data set; cells 'mean ± std (n)' in percent."""
    table = table.assign(column=table["model"] + " / " + table["dataset"],
                         cell=[f"{m:.2f}" + (f" ± {s:.2f}" if pd.notna(s) else "") + f" (n={n})"
                               for m, s, n in zip(table["test_error_pct"], table["std_pct"],
                                                  table["n"])])
    rows = list(dict.fromkeys(zip(table["gradient"], table["k"])))
    columns = list(dict.fromkeys(table["column"]))
    cells = {(g, k, c): v for g, k, c, v in zip(table["gradient"], table["k"], table["column"],
                                                 table["cell"])}
    wide = pd.DataFrame([{"gradient": g, "k": k, **{c: cells.get((g, k, c), "") for c in columns}}
                         for g, k in rows])
    return markdown_table(wide)
