"""Figure 6 and the Section 4.5 table: networks trained with forward gradients.

Input: the per-epoch rows of results/fc_mnist.csv or results/resnet_vit.csv (one per run and
epoch). Only test_acc, test_loss, epoch and status are read, never wall times.
"""
from __future__ import annotations

import matplotlib
import pandas as pd
from matplotlib import pyplot as plt

from fgexp.paper import BATCHNORM_MODELS, VIT_PATCH
from fgexp.plots.style import gradient_colour, gradient_name, gradient_rank, markdown_table


def variant_label(gradient: str, k) -> str:
    """'bp' -> 'BP'; ('fg-mean', 1) -> 'FG single tangent (k=1)';
    ('frog', 4) -> 'FROG (projection), k=4'."""
    if gradient == "bp":
        return gradient_name("bp")
    if gradient == "fg-mean" and int(k) == 1:
        return "FG single tangent (k=1)"
    return f"{gradient_name(gradient)}, k={int(k)}"


def variant_color(gradient: str, k, ks) -> tuple:
    """The gradient's colour, darker for more tangents (k=1 palest)."""
    base = matplotlib.colors.to_rgb(gradient_colour(gradient))
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


def runs_in_order(df: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by run and epoch, k as int (0 for bp).

    Means over seeds then add up in one order whatever order the CSV's rows are in.
    """
    keys = [c for c in (*RUN_KEYS, "epoch") if c in df.columns]
    df = df.assign(k=df["k"].fillna(0).astype(int))
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _variants(df: pd.DataFrame) -> list[tuple[str, int]]:
    pairs = {(g, int(k)) for g, k in zip(df["gradient"], df["k"].fillna(0))}
    return sorted(pairs, key=lambda p: (gradient_rank(p[0]), p[1]))


def figure6(df: pd.DataFrame, curve_width: int = 1024, note: str = "") -> plt.Figure:
    """Left: best test error vs width per gradient (mean over seeds, min-max bars, n);
    right: mean test loss per epoch at `curve_width`."""
    df = runs_in_order(df)
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
                      linestyle="-" if g != "frog" else "--",
                      label=f"{variant_label(g, k)} (n={n})")
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


def estimator_of(model: str, gradient: str, perturbation: str,
                 activity_tangents: str | None) -> str:
    """The estimator a run used: 'exact' (bp), 'weight', or its activity tangent scheme (the
    config's `activity_tangents` for a BatchNorm model, default independent; shared otherwise)."""
    if gradient == "bp":
        return "exact"
    if perturbation != "activity":
        return perturbation
    return (activity_tangents or "independent") if model in BATCHNORM_MODELS else "shared"


TABLE_KEYS = ["model", "width", "dataset", "estimator", "gradient", "k"]


def table_networks(df: pd.DataFrame, activity_tangents: str | None = None,
                   vit_patch: int | None = None) -> pd.DataFrame:
    """Minimum test error (%) per model, data set, estimator and gradient: mean over seeds of
    each run's minimum over epochs, with standard deviation, n and the most epochs a run
    trained. `activity_tangents`, `vit_patch`: the runs' config fields (from the manifest); a
    ViT patch other than the paper's 4 is shown with the width ("128/p7")."""
    df = runs_in_order(df)
    minima = run_minima(df)
    minima["estimator"] = [estimator_of(m, g, p, activity_tangents) for m, g, p in
                           zip(minima["model"], minima["gradient"], minima["perturbation"])]
    minima["width"] = ["" if pd.isna(w) else str(int(w)) for w in minima["width"]]
    if vit_patch not in (None, VIT_PATCH):
        minima.loc[minima["model"] == "vit", "width"] += f"/p{vit_patch}"
    summary = summarize_minima(minima, TABLE_KEYS)
    epochs = minima.groupby(TABLE_KEYS)["epochs"].max().reset_index()
    out = summary.merge(epochs, on=TABLE_KEYS)
    out = out.assign(_o=out["gradient"].map(gradient_rank))
    out = out.sort_values(["model", "dataset", "_o", "k"], kind="stable")
    out = out.drop(columns=["_o", "min_pct", "max_pct"])
    out["k"] = out["k"].map(lambda k: "" if k == 0 else str(k))
    return out.reset_index(drop=True)


def table_networks_markdown(table: pd.DataFrame) -> str:
    """Rows: gradient and k; columns: model (with its width, where set) / data set, and for a
    BatchNorm model one column per activity tangent scheme (bp, exact, in each of them);
    cells 'mean ± std (n)' in percent."""
    def label(model, width, dataset):
        sized = f"{model}-{width}" if width != "" else model
        return f"{sized} / {dataset}"

    coupled = table[table["model"].isin(BATCHNORM_MODELS) & (table["estimator"] != "exact")]
    schemes: dict[str, list[str]] = {}
    for m, w, d, e in zip(coupled["model"], coupled["width"], coupled["dataset"],
                          coupled["estimator"]):
        schemes.setdefault(label(m, w, d), [])
        if e not in schemes[label(m, w, d)]:
            schemes[label(m, w, d)].append(e)
    cells, columns = {}, []
    for m, w, d, e, g, k, mean, std, n in zip(
            table["model"], table["width"], table["dataset"], table["estimator"],
            table["gradient"], table["k"], table["test_error_pct"], table["std_pct"],
            table["n"]):
        base = label(m, w, d)
        if m in BATCHNORM_MODELS and base in schemes:
            targets = [f"{base} ({s})" for s in (schemes[base] if e == "exact" else [e])]
        else:
            targets = [base]
        cell = f"{mean:.2f}" + (f" ± {std:.2f}" if pd.notna(std) else "") + f" (n={n})"
        for column in targets:
            columns.append(column)
            cells[(g, k, column)] = cell
    rows = list(dict.fromkeys(zip(table["gradient"], table["k"])))
    columns = list(dict.fromkeys(columns))
    wide = pd.DataFrame([{"gradient": g, "k": k, **{c: cells.get((g, k, c), "") for c in columns}}
                         for g, k in rows])
    return markdown_table(wide)
