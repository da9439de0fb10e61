"""Guessed tangents (docs/local_guesses.md): test error against k per tangent set, mean against
projection, bp and pure local learning as references; the cosine to the true activity gradient
over training; a summary table with the tangents' mutual cosines.

Input: results/local_guesses.csv, one row per run and epoch. Its builders register in
fgexp.plots.builders when fgexp.plots.registry imports this module.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib import ticker

from fgexp.plots.data import CSVError
from fgexp.plots.builders import SCHEMAS, builder, load
from fgexp.plots.style import markdown_table, provenance, read_manifest, stamp

CSV = "local_guesses.csv"
SCHEMAS[CSV] = (("model", "dataset", "method", "aggregation", "mode", "status"),
                ("width", "k", "seed", "epoch", "test_acc", "val_loss", "cos_true", "mutual_cos"))
SET_COLOURS = {"random": "tab:blue", "guess": "tab:red", "blocks": "tab:green",
               "guess+blocks": "tab:purple"}
REFERENCES = {"bp": ("black", "BP"), "local": ("tab:gray", "local learning (heads only)")}
AGG_STYLE = {"projection": "-", "mean": "--"}
RUN_KEYS = ["model", "dataset", "width", "method", "k", "aggregation", "seed"]


def panel_name(model: str, width) -> str:
    return f"FC-{int(width)}" if model == "fc" else model


def run_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: minimum test error (%) over epochs, last-epoch cosine, mean |mutual cos|."""
    df = df.assign(test_error=100 * (1 - df["test_acc"]), width=df["width"].fillna(0),
                   aggregation=df["aggregation"].fillna(""))
    last = df.sort_values("epoch").groupby(RUN_KEYS).tail(1).set_index(RUN_KEYS)
    runs = df.groupby(RUN_KEYS).agg(test_error=("test_error", "min"),
                                    mutual_cos=("mutual_cos", "mean"))
    runs["cos_true"] = last["cos_true"]
    return runs.reset_index()


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds (n) of each setting's run values."""
    runs = run_summary(df)
    keys = ["model", "width", "method", "k", "aggregation"]
    out = runs.groupby(keys).agg(test_error_pct=("test_error", "mean"),
                                 std_pct=("test_error", "std"), n=("seed", "count"),
                                 cos_true=("cos_true", "mean"),
                                 mutual_cos=("mutual_cos", "mean")).reset_index()
    return out


def _with_k1(table: pd.DataFrame, method: str, agg: str) -> pd.DataFrame:
    """A set's points for one aggregation; k = 1 (where both coincide) joins both lines."""
    rows = table[(table["method"] == method) & ((table["aggregation"] == agg) | (table["k"] == 1))]
    return rows.sort_values("k")


def error_panel(ax, table: pd.DataFrame) -> None:
    for method, colour in SET_COLOURS.items():
        for agg, style in AGG_STYLE.items():
            rows = _with_k1(table, method, agg)
            if rows.empty:
                continue
            n = int(rows["n"].min())
            ax.errorbar(rows["k"], rows["test_error_pct"], yerr=rows["std_pct"].fillna(0),
                        color=colour, ls=style, marker="o", ms=3, capsize=2,
                        label=f"{method}, {agg} (n={n})")
    for method, (colour, label) in REFERENCES.items():
        rows = table[table["method"] == method]
        if not rows.empty:
            ax.axhline(rows["test_error_pct"].iloc[0], color=colour, lw=1, ls=":",
                       label=f"{label} (n={int(rows['n'].iloc[0])})")
    ks = sorted(table.loc[table["method"].isin(list(SET_COLOURS)), "k"].astype(int).unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_yscale("log")  # random tangents err far above the guessed ones
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("k (tangents per step)")
    ax.set_ylabel("min test error over epochs (%, log)")


def cosine_panel(ax, df: pd.DataFrame) -> None:
    """Cosine to the true activity gradient per epoch, mean over seeds: each set at its
    largest k (both aggregations), the single guess, and local learning."""
    df = df.assign(aggregation=df["aggregation"].fillna(""))
    for method, colour in {**SET_COLOURS, "local": "tab:gray"}.items():
        rows = df[df["method"] == method]
        if rows.empty:
            continue
        ks = sorted({int(rows["k"].max())} | ({1} if method == "guess" else set()))
        for k in ks:
            for agg, part in rows[rows["k"] == k].groupby("aggregation"):
                curve = part.groupby("epoch")["cos_true"].mean()
                style = AGG_STYLE.get(agg, ":") if k > 1 else "-."
                label = method if method == "local" else f"{method}:{k} {agg}"
                ax.plot(curve.index, curve.values, color=colour, ls=style, marker=".",
                        label=f"{label} (n={part['seed'].nunique()})")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("cos(estimate, true activity gradient)")
    ax.set_ylim(0, 1)


def figure(df: pd.DataFrame, note: str = "") -> plt.Figure:
    table = summary_table(df)
    panels = table[["model", "width"]].drop_duplicates().sort_values(["model", "width"])
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for row, (model, width) in enumerate(panels.itertuples(index=False)):
        sel = (table["model"] == model) & (table["width"] == width)
        error_panel(axes[row, 0], table[sel])
        width_of = df["width"].fillna(0)
        cosine_panel(axes[row, 1], df[(df["model"] == model) & (width_of == width)])
        axes[row, 0].set_title(f"{panel_name(model, width)}: test error against k")
        axes[row, 1].set_title(f"{panel_name(model, width)}: cosine over training")
        for ax in axes[row]:
            ax.legend(fontsize=6, ncol=2)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Guessed tangents (local auxiliary losses) and random tangents, mnist5k{note}")
    fig.tight_layout()
    return fig


@builder("local-guesses", CSV)
def local_guesses(results_dir: Path) -> dict:
    """Guessed tangents: test error against k, mean vs projection; cosines; summary table."""
    df = load(results_dir, CSV)
    if df.empty:
        raise CSVError(f"{results_dir / CSV} has no rows; run experiments/local_guesses.py")
    manifest_path = results_dir / "local_guesses.manifest.json"
    preset = (read_manifest(manifest_path) or {}).get("preset")
    note = "" if preset == "paper" else f" - REDUCED RUN (preset {preset})"
    fig = figure(df, note)
    source = provenance(manifest_path)
    stamp(fig, source)
    table = summary_table(df)
    return {"local_guesses": fig,
            "local_guesses.md": "Minimum test error (%) over epochs, mean and std over seeds "
                                f"(n runs); cos_true at the last epoch; mean |mutual cos|{note}"
                                "\n\n" + markdown_table(table, "{:.4g}") + f"\n{source}\n"}


LR_CHECK = ("local_guesses_lr/low", "local_guesses_lr/high")  # make guesses-lr-check
for _run in LR_CHECK:
    SCHEMAS[f"{_run}/{CSV}"] = SCHEMAS[CSV]


def lr_check_table(main: pd.DataFrame, checks: list[pd.DataFrame]) -> pd.DataFrame:
    """Per setting of the LR check: min test error (%) at each rate and at the rate whose best
    validation loss is lowest (seed 0 only: the check runs one seed)."""
    keys = ["model", "width", "method", "k", "aggregation"]
    def tidy(df):
        return df[df["seed"] == 0].assign(aggregation=df["aggregation"].fillna(""),
                                          width=df["width"].fillna(0))
    checked = pd.concat([tidy(df) for df in checks])
    df = pd.concat([tidy(main).merge(checked[keys].drop_duplicates(), on=keys), checked])
    runs = df.groupby([*keys, "lr"]).agg(test_error=("test_acc", lambda a: 100 * (1 - a.max())),
                                         best_val=("val_loss", "min")).reset_index()
    runs["rate"] = runs.groupby(keys)["lr"].rank().map({1.0: "low", 2.0: "table", 3.0: "high"})
    wide = runs.pivot_table(index=keys, columns="rate", values="test_error")
    wide = wide[[c for c in ("low", "table", "high") if c in wide.columns]]
    wide.columns = [f"err% {c} lr" for c in wide.columns]
    chosen = runs.loc[runs.groupby(keys)["best_val"].idxmin(), [*keys, "lr", "test_error"]]
    chosen = chosen.rename(columns={"lr": "val-chosen lr", "test_error": "err% at it"})
    return wide.reset_index().merge(chosen, on=keys)


@builder("local-guesses-lr", CSV, *(f"{run}/{CSV}" for run in LR_CHECK))
def local_guesses_lr(results_dir: Path) -> dict:
    """Guessed tangents, LR check: test error at three rates per setting (seed 0)."""
    table = lr_check_table(load(results_dir, CSV),
                           [load(results_dir, f"{run}/{CSV}") for run in LR_CHECK])
    sources = " / ".join(provenance(results_dir / p / "local_guesses.manifest.json")
                         for p in (".", *LR_CHECK))
    return {"local_guesses_lr.md": "Minimum test error (%) over epochs, seed 0, at each rate "
                                   "(low, high: presets cpu-lr-low, cpu-lr-high; table: bp's "
                                   "table rate, the cpu preset's), and "
                                   "at the rate with the lowest validation loss\n\n"
                                   + markdown_table(table, "{:.4g}") + f"\n{sources}\n"}
