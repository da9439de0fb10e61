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
