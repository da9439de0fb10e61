"""The LocalMixer table: our final-epoch errors beside Ren et al.'s Table 3, with multi-tangent
rows (docs/local_losses.md). Built from results/local_mixer.csv by `make table-local-mixer`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fgexp.plots.builders import builder
from fgexp.plots.data import CSVError, read_results
from fgexp.plots.style import markdown_table, provenance, read_manifest

TEXT = ("size", "dataset", "method", "aggregation", "scope", "mode", "status")
NUMERIC = ("k", "seed", "lr", "epoch", "train_acc", "test_acc")
# Ren et al. (ICLR 2023), Table 3, supervised: (test, train) error in %, their published numbers
# on full MNIST (60,000 training images) and CIFAR-10; not ours.
REN_TABLE3 = {
    "bp": {"S/1/1": (2.66, 0.00), "M/1/16": (2.41, 0.00), "M/8/16": (33.62, 0.00)},
    "lg-bp": {"S/1/1": (2.43, 0.00), "M/1/16": (2.81, 0.00), "M/8/16": (33.84, 0.05)},
    "fg-w": {"S/1/1": (9.25, 8.93), "M/1/16": (8.56, 8.64), "M/8/16": (55.95, 54.28)},
    "fg-a": {"S/1/1": (3.24, 1.53), "M/1/16": (3.76, 1.75), "M/8/16": (59.72, 41.29)},
    "lg-fg-w": {"S/1/1": (9.25, 8.93), "M/1/16": (5.66, 4.59), "M/8/16": (52.70, 51.71)},
    "lg-fg-a": {"S/1/1": (3.24, 1.53), "M/1/16": (2.55, 0.00), "M/8/16": (30.68, 19.39)},
}
REN_DATASET = {"S/1/1": "MNIST", "M/1/16": "MNIST", "M/8/16": "CIFAR-10"}
METHOD_NAMES = {"bp": "BP", "lg-bp": "LG-BP", "fg-w": "FG-W", "fg-a": "FG-A",
                "lg-fg-w": "LG-FG-W", "lg-fg-a": "LG-FG-A"}
DATASET_NOTES = {"mnist5k": "mnist5k: 3,500 training / 500 validation / 1,000 test digits",
                 "mnist": "MNIST: 50,000 training / 10,000 validation / 10,000 test",
                 "cifar10": "CIFAR-10: 40,000 training / 10,000 validation / 10,000 test"}


def final_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's last epoch -> test and train error (%), mean and std over seeds, n."""
    df = df.assign(aggregation=df["aggregation"].fillna(""), k=df["k"].fillna(0).astype(int))
    keys = ["size", "dataset", "method", "aggregation", "k"]
    last = df.loc[df.groupby([*keys, "seed"])["epoch"].idxmax()]
    last = last.assign(test_err=100 * (1 - last["test_acc"]),
                       train_err=100 * (1 - last["train_acc"]))
    out = last.groupby(keys, sort=False).agg(
        test=("test_err", "mean"), test_std=("test_err", "std"), train=("train_err", "mean"),
        train_std=("train_err", "std"), n=("seed", "count"), lr=("lr", "first"),
        epochs=("epoch", "max"), diverged=("status", lambda s: int((s == "diverged").sum())))
    return out.reset_index().fillna({"test_std": 0.0, "train_std": 0.0})


def row_label(method: str, aggregation: str, k: int) -> str:
    name = METHOD_NAMES[method]
    return name if not aggregation or (aggregation == "mean" and k == 1) \
        else f"{name}, {aggregation}, k={k}"


def _rank(label: str) -> tuple:
    """Row order: Table 3's methods, then each method's multi-tangent rows by aggregation, k."""
    name, *rest = [part.strip() for part in label.split(",")]
    order = list(METHOD_NAMES.values())
    k = int(rest[1].removeprefix("k=")) if rest else 1
    return order.index(name), rest[0] if rest else "", k


def table(errors: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per gradient, per setup our test / train error and Ren et al.'s."""
    setups = list(dict.fromkeys(zip(errors["size"], errors["dataset"])))
    rows = []
    for (method, aggregation, k), group in errors.groupby(["method", "aggregation", "k"],
                                                          sort=False):
        row = {"gradient": row_label(method, aggregation, k)}
        single = not aggregation or (aggregation == "mean" and k == 1)
        for size, dataset in setups:
            hit = group[(group["size"] == size) & (group["dataset"] == dataset)]
            cell = ""
            if len(hit):
                r = hit.iloc[0]
                spread = f" ± {r.test_std:.2f}" if r.n > 1 else ""
                cell = (f"{r.test:.2f}{spread} / {r.train:.2f} (n={r.n}, lr {r.lr:g}"
                        f"{', diverged ' + str(r.diverged) if r.diverged else ''})")
            row[f"{size} ours, {dataset}"] = cell
            ren = REN_TABLE3[method].get(size) if single else None
            row[f"{size} Ren et al., {REN_DATASET[size]}"] = \
                f"{ren[0]:.2f} / {ren[1]:.2f}" if ren else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values("gradient", key=lambda s: s.map(_rank)).reset_index(drop=True)


def gap_closed(errors: pd.DataFrame) -> pd.DataFrame:
    """How much of the FG-A -> BP test-error gap LG-FG-A closes, ours and Ren et al.'s:
    (FG-A - LG-FG-A) / (FG-A - BP); 1 means LG-FG-A matches BP."""
    single = errors[(errors["aggregation"].isin(["", "mean"])) & (errors["k"] <= 1)]
    rows = []
    for (size, dataset), group in single.groupby(["size", "dataset"], sort=False):
        err = dict(zip(group["method"], group["test"]))
        if not {"bp", "fg-a", "lg-fg-a"} <= set(err):
            continue
        ren = {m: REN_TABLE3[m][size][0] for m in ("bp", "fg-a", "lg-fg-a")}
        rows.append({"setup": f"{size} {dataset}",
                     "ours": _fraction(err["fg-a"], err["lg-fg-a"], err["bp"]),
                     "Ren et al.": _fraction(ren["fg-a"], ren["lg-fg-a"], ren["bp"]),
                     "ours BP / FG-A / LG-FG-A test error (%)":
                         f"{err['bp']:.2f} / {err['fg-a']:.2f} / {err['lg-fg-a']:.2f}"})
    return pd.DataFrame(rows)


def search_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (setup, gradient) the search run at the chosen rate (least validation loss, diverged
    runs excluded): its validation error (%) after search_epochs, one seed."""
    from fgexp.nn.local_runs import best_rates
    chosen = best_rates(rows.to_dict("records"))
    out = []
    for (size, dataset, method, aggregation, k), lr in chosen.items():
        hit = rows[(rows["size"] == size) & (rows["dataset"] == dataset)
                   & (rows["method"] == method) & (rows["aggregation"] == aggregation)
                   & (rows["k"] == k) & (rows["lr"] == lr)].iloc[0]
        out.append({"setup": f"{size} {dataset}", "gradient": row_label(method, aggregation, k),
                    "lr": lr, "epochs": int(hit["epochs"]),
                    "val_error_pct": round(100 * (1 - hit["val_acc"]), 2)})
    table = pd.DataFrame(out)
    wide = table.pivot(index="gradient", columns="setup", values="val_error_pct")
    wide = wide.sort_index(key=lambda s: s.map(_rank))
    return wide.reset_index().rename_axis(columns=None)


def _fraction(fg_a: float, lg_fg_a: float, bp: float) -> str:
    gap = fg_a - bp
    return "no gap (FG-A <= BP)" if gap <= 0 else f"{(fg_a - lg_fg_a) / gap:.2f}"


@builder("table-local-mixer", "local_mixer.csv")
def build(results_dir: Path) -> dict[str, str]:
    """LocalMixer table: our final-epoch test / train error beside Ren et al.'s Table 3."""
    from fgexp.results import current_csv
    path = current_csv(results_dir, "local_mixer")
    errors = final_errors(read_results(path, TEXT, NUMERIC))
    if errors.empty:
        raise CSVError(f"{path} has no rows; run experiments/local_mixer.py")
    manifest = read_manifest(results_dir / "local_mixer.manifest.json") or {}
    preset = manifest.get("preset")
    epochs = ", ".join(str(e) for e in sorted(errors["epochs"].unique()))
    notes = "; ".join(DATASET_NOTES.get(d, d) for d in errors["dataset"].unique())
    reduced = "" if preset == "paper" else (
        f" REDUCED RUN (preset {preset}): not Ren et al.'s data or training length.")
    header = (f"LocalMixer, final-epoch test / train error (%), ours: mean ± std over seeds "
              f"(n runs, searched lr), {epochs} epochs. Ours on {notes}; Ren et al. on full "
              f"MNIST (60,000 training images) and CIFAR-10.{reduced}\n\n")
    wide = table(errors)
    gaps = gap_closed(errors)
    gap_text = ("" if gaps.empty else "\nShare of the FG-A -> BP test-error gap closed by "
                "LG-FG-A, (FG-A - LG-FG-A) / (FG-A - BP):\n\n" + markdown_table(gaps))
    source = provenance(results_dir / "local_mixer.manifest.json")
    search_text = ""
    if (results_dir / "local_mixer_lrs.csv").exists():
        searched = read_results(current_csv(results_dir, "local_mixer_lrs"),
                                ("size", "dataset", "method", "aggregation", "status"),
                                ("k", "lr", "epochs", "val_loss", "val_acc"))
        search_text = ("\nLR search (`local_mixer_lrs.csv`): validation error (%) of the search "
                       "run at each gradient's chosen rate, one seed, 500 validation digits, "
                       f"{int(searched['epochs'].max())} epochs:\n\n"
                       + markdown_table(search_table(searched), "{:.1f}"))
    return {"table_local_mixer.csv": errors.to_csv(index=False, float_format="%.4g"),
            "table_local_mixer.md": header + markdown_table(wide) + gap_text + search_text
            + f"\n_{source}_\n"}

