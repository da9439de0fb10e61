"""Every committed figure and table by name: which CSVs it reads and how it is built.

experiments/plot.py draws them by these names (`make plots` draws them all). A builder reads
and checks its CSVs and returns its outputs in memory, {file stem: Figure, file name: text},
so that a bad input anywhere stops the run before any file is written.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import pyplot as plt

# local_guesses and local_mixer define and register their own builders on import.
from fgexp.plots import (approximation, benchmarks, closed_form, local_guesses,  # noqa: F401
                         local_mixer, lr_rules, networks)
from fgexp.plots.builders import (  # noqa: F401  (BUILDERS, write_outputs: the registry's API)
    BUILDERS, SCHEMAS, Outputs, builder, load, write_outputs)
from fgexp.plots.data import CSVError, read_results
from fgexp.plots.style import markdown_table, provenance, read_manifest, stamp


def _with_sampler(df: pd.DataFrame, path: Path, sampler: str, script: str) -> pd.DataFrame:
    """The rows of one tangent sampler ('normal' also takes rows without one)."""
    samplers = df["sampler"].fillna("normal")
    kept = df[samplers == "cone"] if sampler == "cone" else df[samplers != "cone"]
    if kept.empty:
        flag = " --cone" if sampler == "cone" else ""
        raise CSVError(f"{path} has no {sampler}-tangent rows; run {script}{flag}")
    return kept


# Approximation quality (Sections 4.1 and 4.3)

def _approximation(results_dir: Path, sampler: str) -> pd.DataFrame:
    df = load(results_dir, "approximation_quality.csv")
    _with_sampler(df, results_dir / "approximation_quality.csv", sampler,
                  "experiments/approximation_quality.py")
    return df


@builder("figure3", "approximation_quality.csv")
def figure3(results_dir: Path) -> Outputs:
    """Figure 3: approximation quality against k, Gaussian tangents."""
    fig = approximation.figure3(_approximation(results_dir, "normal"))
    stamp(fig, provenance(results_dir / "approximation_quality.manifest.json"))
    return {"figure3": fig}


@builder("figure5a", "approximation_quality.csv")
def figure5a(results_dir: Path) -> Outputs:
    """Figure 5a: cosine similarity against the cone angle, mean vs projection."""
    fig = approximation.figure5a(_approximation(results_dir, "cone"))
    stamp(fig, provenance(results_dir / "approximation_quality.manifest.json"))
    return {"figure5a": fig}


# Closed-form functions (Sections 4.2 and 4.3)

def _closed_form(results_dir: Path, sampler: str) -> pd.DataFrame:
    return _with_sampler(load(results_dir, "closed_form.csv"), results_dir / "closed_form.csv",
                         sampler, "experiments/closed_form.py")


@builder("figure4", "closed_form.csv")
def figure4(results_dir: Path) -> Outputs:
    """Figure 4: best value against n on Sphere, Rosenbrock and Styblinski-Tang."""
    fig = closed_form.figure4(_closed_form(results_dir, "normal"))
    stamp(fig, provenance(results_dir / "closed_form.manifest.json"))
    return {"figure4": fig}


@builder("figure5", "approximation_quality.csv", "closed_form.csv")
def figure5(results_dir: Path) -> Outputs:
    """Figure 5: cone tangents; cosine similarity (left), best Styblinski-Tang value (right)."""
    fig = closed_form.figure5(_approximation(results_dir, "cone"),
                              _closed_form(results_dir, "cone"))
    stamp(fig, "left: " + provenance(results_dir / "approximation_quality.manifest.json")
          + "   right: " + provenance(results_dir / "closed_form.manifest.json"))
    return {"figure5": fig}


@builder("table-c", "closed_form.csv")
def table_c(results_dir: Path) -> Outputs:
    """Appendix C: Rosenbrock best value per seed and mean, n = 64 and 1024, with rates."""
    table = closed_form.table_c(_closed_form(results_dir, "normal"))
    if table.empty:
        raise CSVError(f"{results_dir / 'closed_form.csv'} has no Rosenbrock rows; run "
                       "experiments/closed_form.py --functions rosenbrock")
    source = provenance(results_dir / "closed_form.manifest.json")
    return {"table_c.csv": table.to_csv(index=False),
            "table_c.md": markdown_table(table, "{:.3g}") + f"\n_{source}_\n"}


# Network experiments (Sections 4.4 and 4.5)

def _network(results_dir: Path, name: str) -> tuple[pd.DataFrame, str]:
    """The CSV and a title note: reduced runs (any preset but paper) say so on the figure."""
    df = load(results_dir, f"{name}.csv")
    manifest = read_manifest(results_dir / f"{name}.manifest.json")
    preset = manifest.get("preset") if manifest is not None else None
    note = "" if preset == "paper" else f" - REDUCED RUN (preset {preset}), not the paper's setting"
    return df, note


@builder("figure6", "fc_mnist.csv")
def figure6(results_dir: Path) -> Outputs:
    """Figure 6: best test error vs width per gradient; test-loss curves at width 1024."""
    df, note = _network(results_dir, "fc_mnist")
    widths = sorted(df["width"].dropna().astype(int).unique())
    if not widths:
        raise CSVError(f"{results_dir / 'fc_mnist.csv'} has no widths; Figure 6 needs FC runs")
    curve_width = 1024 if 1024 in widths else widths[-1]  # reduced runs may lack 1024
    fig = networks.figure6(df, curve_width=curve_width, note=note)
    stamp(fig, provenance(results_dir / "fc_mnist.manifest.json"))
    return {"figure6": fig}


HELD_STATS_DIR = "resnet_vit_held_stats"  # run directory of ResNet18's held-stats rows


@builder("table-networks", "resnet_vit.csv")
def table_networks(results_dir: Path) -> Outputs:
    """ResNet18/ViT table: minimum test error per model, data set and gradient (CSV + markdown)."""
    df, note = _network(results_dir, "resnet_vit")
    manifest = read_manifest(results_dir / "resnet_vit.manifest.json") or {}
    config = manifest.get("config", {})
    table = networks.table_networks(df, config.get("activity_tangents"), config.get("vit_patch"))
    source = provenance(results_dir / "resnet_vit.manifest.json")
    # ResNet18 with another activity tangent scheme, where run (docs/resnet_vit.md)
    extra = results_dir / HELD_STATS_DIR / "resnet_vit.csv"
    if extra.exists():
        other = read_manifest(extra.parent / "resnet_vit.manifest.json") or {}
        more = networks.table_networks(load(extra.parent, "resnet_vit.csv"),
                                       other.get("config", {}).get("activity_tangents"))
        table = pd.concat([table, more[more["estimator"] != "exact"]], ignore_index=True)
        source += f"\n\n{HELD_STATS_DIR}/: {provenance(extra.parent / 'resnet_vit.manifest.json')}"
    return {"table_networks.csv": table.to_csv(index=False, float_format="%.4g"),
            "table_networks.md": "Minimum test error (%), mean ± std over seeds (n runs)"
                                 f"{note}\n\n" + networks.table_networks_markdown(table)
                                 + f"\n{source}\n"}


# Learning-rate rules (docs/lr_rules.md)

_PREDICTIONS = (("source", "table", "group", "gradient", "sampler", "rule"),
                ("lr_predicted", "lr_searched", "searched_over_predicted"))


@builder("lr-rules", "lr_rules/predictions.csv", "lr_rules/paper_lrs_predictions.csv")
def lr_rules_figure(results_dir: Path) -> Outputs:
    """LR rules: rates predicted from bp's against searched rates, ours and the authors'."""
    path = results_dir / "lr_rules" / "predictions.csv"
    # ours and the authors' published rates, kept in separate tables, drawn in separate panels
    fig = lr_rules.figure(pd.concat([read_results(p, *_PREDICTIONS) for p in
                                     (path, path.with_name("paper_lrs_predictions.csv"))]))
    stamp(fig, f"{path.name} (make lr-rules) | commit "
          f"{str((read_manifest(path.with_name('manifest.json')) or {}).get('git_commit'))[:12]}")
    return {"lr_rules": fig}


OUTCOME_RUN = "lr_rules/figure4_isotropic"  # Figure 4 rerun with the isotropic rule's rates


@builder("lr-rules-outcome", "closed_form.csv", f"{OUTCOME_RUN}/closed_form.csv")
def lr_rules_outcome(results_dir: Path) -> Outputs:
    """LR rules, outcome: Figure 4's best values with rule rates against searched rates."""
    from fgexp.results import current_csv
    text, numeric = SCHEMAS["closed_form.csv"]
    ruled = read_results(current_csv(results_dir / OUTCOME_RUN, "closed_form"), text, numeric)
    table = lr_rules.outcome_table(_closed_form(results_dir, "normal"), ruled)
    fig = lr_rules.outcome_figure(table)
    stamp(fig, "searched: " + provenance(results_dir / "closed_form.manifest.json")
          + "   rule: " + provenance(results_dir / OUTCOME_RUN / "closed_form.manifest.json"))
    summary = lr_rules.outcome_summary(table)
    return {"lr_rules_outcome": fig,
            "lr_rules_outcome.csv": table.to_csv(index=False, float_format="%.6g"),
            "lr_rules_outcome.md": "Figure 4 settings (forward gradients, mean over seeds) "
                                   "with the isotropic rule's rates against searched rates\n\n"
                                   + markdown_table(summary, "{:g}") + "\n"}


# Benchmarks

@builder("benchmark-steps", "benchmarks/nn_steps.csv")
def benchmark_steps(results_dir: Path) -> Outputs:
    """Network training-step cost relative to bp, from the benchmark report (make bench)."""
    return {"benchmark_steps": _benchmark_figure(results_dir / "benchmarks" / "nn_steps.csv")}


def _benchmark_figure(csv_path: Path) -> plt.Figure:
    text, numeric = SCHEMAS["benchmarks/nn_steps.csv"]
    # Unsorted: the suite writes its rows in the order the bars are drawn.
    return benchmarks.stamped_benchmark_steps(read_results(csv_path, text, numeric, sort=False))


def draw_benchmark_steps(csv_path: Path | str, figures_dir: Path | str) -> list[Path]:
    """The step benchmark figure from `csv_path`, saved in `figures_dir` (benchmarks/run.py)."""
    return write_outputs({"benchmark_steps": _benchmark_figure(Path(csv_path))},
                         Path(figures_dir))

