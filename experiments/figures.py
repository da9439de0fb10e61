"""Figure and table builders for experiments/plot.py: read CSVs, call fgexp.plots, save.

Each builder is registered under the name that `make` and `plot.py` use, with the CSVs it reads.
A builder takes (results_dir, figures_dir) and returns the paths it wrote.
"""
from __future__ import annotations

# name -> (CSV file names it reads, builder function)
BUILDERS: dict = {}


def builder(name: str, *csvs: str):
    def register(fn):
        BUILDERS[name] = (csvs, fn)
        return fn
    return register


def _approximation_frame(results_dir):
    import pandas as pd
    return pd.read_csv(results_dir / "approximation_quality.csv")


@builder("figure3", "approximation_quality.csv")
def figure3(results_dir, figures_dir):
    """Figure 3: approximation quality against k, Gaussian tangents."""
    from fgexp import plots
    df = _approximation_frame(results_dir)
    if not (df["sampler"] == "normal").any():
        raise ValueError(f"{results_dir / 'approximation_quality.csv'} has no normal-sampler "
                         "rows; run experiments/approximation_quality.py without --cone")
    fig = plots.figure3(df)
    plots.stamp(fig, plots.provenance(results_dir / "approximation_quality.manifest.json"))
    return plots.save(fig, figures_dir, "figure3")


@builder("figure5a", "approximation_quality.csv")
def figure5a(results_dir, figures_dir):
    """Figure 5a: cosine similarity against the cone angle, mean vs projection."""
    from fgexp import plots
    df = _approximation_frame(results_dir)
    if not (df["sampler"] == "cone").any():
        raise ValueError(f"{results_dir / 'approximation_quality.csv'} has no cone rows; run "
                         "experiments/approximation_quality.py --cone")
    fig = plots.figure5a(df)
    plots.stamp(fig, plots.provenance(results_dir / "approximation_quality.manifest.json"))
    return plots.save(fig, figures_dir, "figure5a")


# ---- Closed-form functions (Sections 4.2 and 4.3) --------------------------------------------

def _closed_form_frame(results_dir, sampler: str):
    import pandas as pd
    path = results_dir / "closed_form.csv"
    df = pd.read_csv(path)
    kept = df[df["sampler"].fillna("normal") == sampler] if sampler == "cone" else \
        df[df["sampler"].fillna("normal") != "cone"]
    if kept.empty:
        flag = " --cone" if sampler == "cone" else ""
        raise ValueError(f"{path} has no {sampler}-tangent rows; run "
                         f"experiments/closed_form.py{flag}")
    return kept


@builder("figure4", "closed_form.csv")
def figure4(results_dir, figures_dir):
    """Figure 4: best value against n on Sphere, Rosenbrock and Styblinski-Tang."""
    from fgexp import plots
    fig = plots.figure4(_closed_form_frame(results_dir, "normal"))
    plots.stamp(fig, plots.provenance(results_dir / "closed_form.manifest.json"))
    return plots.save(fig, figures_dir, "figure4")


@builder("figure5", "approximation_quality.csv", "closed_form.csv")
def figure5(results_dir, figures_dir):
    """Figure 5: cone tangents; cosine similarity (left), best Styblinski-Tang value (right)."""
    from fgexp import plots
    approximation = _approximation_frame(results_dir)
    if not (approximation["sampler"] == "cone").any():
        raise ValueError(f"{results_dir / 'approximation_quality.csv'} has no cone rows; run "
                         "experiments/approximation_quality.py --cone")
    fig = plots.figure5(approximation, _closed_form_frame(results_dir, "cone"))
    plots.stamp(fig, "left: " + plots.provenance(results_dir / "approximation_quality.manifest.json")
                + "   right: " + plots.provenance(results_dir / "closed_form.manifest.json"))
    return plots.save(fig, figures_dir, "figure5")


@builder("table-c", "closed_form.csv")
def table_c(results_dir, figures_dir):
    """Appendix C: Rosenbrock best value per seed and mean, n = 64 and 1024, with rates."""
    from pathlib import Path

    from fgexp import plots
    from fgexp.results import atomic_write_text
    table = plots.table_c(_closed_form_frame(results_dir, "normal"))
    if table.empty:
        raise ValueError(f"{results_dir / 'closed_form.csv'} has no Rosenbrock rows for "
                         "n = 64 or 1024; run experiments/closed_form.py --functions rosenbrock")
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = figures_dir / "table_c.csv", figures_dir / "table_c.md"
    atomic_write_text(csv_path, table.to_csv(index=False))
    source = plots.provenance(results_dir / "closed_form.manifest.json")
    atomic_write_text(md_path, plots.markdown_table(table, "{:.3g}") + f"\n_{source}_\n")
    return [csv_path, md_path]


# Network experiments (Sections 4.4 and 4.5)

def _network_frame(results_dir, name):
    """The CSV and a title note: reduced runs (any preset but paper) say so on the figure."""
    import json

    import pandas as pd
    df = pd.read_csv(results_dir / f"{name}.csv")
    manifest = results_dir / f"{name}.manifest.json"
    preset = json.loads(manifest.read_text()).get("preset") if manifest.exists() else None
    note = "" if preset == "paper" else f" - REDUCED RUN (preset {preset}), not the paper's setting"
    return df, note


@builder("figure6", "fc_mnist.csv")
def figure6(results_dir, figures_dir):
    """Figure 6: best test error vs width per gradient; test-loss curves at width 1024."""
    from fgexp import plots
    df, note = _network_frame(results_dir, "fc_mnist")
    widths = sorted(df["width"].dropna().astype(int).unique())
    curve_width = 1024 if 1024 in widths else widths[-1]  # reduced runs may lack 1024
    fig = plots.figure6(df, curve_width=curve_width, note=note)
    plots.stamp(fig, plots.provenance(results_dir / "fc_mnist.manifest.json"))
    return plots.save(fig, figures_dir, "figure6")


@builder("table-networks", "resnet_vit.csv")
def table_networks(results_dir, figures_dir):
    """ResNet18/ViT table: minimum test error per model, data set and gradient (CSV + markdown)."""
    from pathlib import Path

    from fgexp import plots
    from fgexp.results import atomic_write_text
    df, note = _network_frame(results_dir, "resnet_vit")
    table = plots.table_networks(df)
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = figures_dir / "table_networks.csv", figures_dir / "table_networks.md"
    atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.4g"))
    source = plots.provenance(results_dir / "resnet_vit.manifest.json")
    atomic_write_text(md_path, "Minimum test error (%), mean ± std over seeds (n runs)"
                      f"{note}\n\n" + plots.table_networks_markdown(table) + f"\n{source}\n")
    return [csv_path, md_path]


@builder("benchmark-steps", "benchmarks/nn_steps.csv")
def benchmark_steps(results_dir, figures_dir):
    """Network training-step cost relative to bp, from the benchmark report (make bench)."""
    return draw_benchmark_steps(results_dir / "benchmarks" / "nn_steps.csv", figures_dir)


def draw_benchmark_steps(csv_path, figures_dir):
    import pandas as pd

    from fgexp import plots
    frame = pd.read_csv(csv_path)
    fig = plots.benchmark_steps(frame)
    first = frame.iloc[0]
    plots.stamp(fig, f"make bench | {first['machine']}, {first['device']} | torch {first['torch']},"
                     f" {first['threads']} thread(s) | commit {first.get('commit', 'unknown')}")
    return plots.save(fig, figures_dir, "benchmark_steps")
