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
