"""Run the benchmark suites and write results/benchmarks/<suite>.csv (make bench).

Each suite is a module benchmarks/<suite>.py with `run(quick: bool) -> list[dict]`: one row per
case with medians and spreads over repetitions taken after a warm-up, and ratios measured in the
same run. This driver adds the machine, torch version, thread count and device to every row.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

# The suites are this script's sibling modules: its own directory is on sys.path when it runs.
SUITES = ("approximation", "descent", "nn_steps", "bn_estimators", "nn_batched", "draw", "epoch_cost")


def machine_columns() -> dict:
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"cpu ({platform.machine()}, {os.cpu_count()} cores)")
    from fgexp.results import git_commit
    sha, dirty, _ = git_commit().partition("-dirty")  # short sha, keeping the -dirty mark
    return {"machine": platform.node(), "device": device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "commit": sha[:12] + dirty}


def merged_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """An existing step CSV with its rows of the newly measured (model, batch) pairs replaced
    by new_rows, in their place; the other rows keep their own machine and commit columns."""
    if not path.exists():
        return new_rows
    import pandas as pd
    measured = {(str(r["model"]), str(r["batch"])) for r in new_rows}
    merged, placed = [], False
    for row in pd.read_csv(path, keep_default_na=False).to_dict("records"):
        if (str(row["model"]), str(row["batch"])) not in measured:
            merged.append(row)
        elif not placed:
            merged += new_rows
            placed = True
    return merged if placed else merged + new_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="spot checks (under 2 minutes)")
    parser.add_argument("--only", choices=SUITES, action="append",
                        help="run only this suite (repeatable)")
    parser.add_argument("--case", action="append", dest="cases",
                        help="nn_steps only: run this case (fc, resnet18, vit, resnet18-memory; "
                             "repeatable) and replace just its (model, batch) rows in the CSV")
    parser.add_argument("--out", default="results/benchmarks", help="directory for the CSVs")
    parser.add_argument("--figures", default="paper_figures", help="directory for the plot")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                        help="torch CPU threads")
    args = parser.parse_args(argv)

    from fgexp.results import ResultsError, RunDir, rows_to_csv, atomic_write_text
    out = Path(args.out)
    if args.cases and args.only != ["nn_steps"]:
        print("error: --case needs --only nn_steps", file=sys.stderr)
        return 2
    try:
        RunDir(out, "benchmarks", {}, ["x"], ["x"]).check()
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    common = machine_columns()
    for suite in args.only or SUITES:
        start = time.perf_counter()
        path = out / f"{suite}.csv"
        if args.cases:
            rows = importlib.import_module(suite).run(quick=args.quick, cases=args.cases)
            rows = merged_rows(path, [{**common, **row} for row in rows])
        else:
            rows = importlib.import_module(suite).run(quick=args.quick)
            rows = [{**common, **row} for row in rows]
        columns = list(dict.fromkeys(c for row in rows for c in row))
        atomic_write_text(path, rows_to_csv(rows, columns))
        print(f"{suite}: {len(rows)} cases in {time.perf_counter() - start:.0f} s -> {path}")
    if (out / "nn_steps.csv").exists():
        import pandas as pd

        from fgexp.plots.benchmarks import stamped_benchmark_steps
        from fgexp.plots.style import save
        fig = stamped_benchmark_steps(pd.read_csv(out / "nn_steps.csv"))
        for path in save(fig, args.figures, "benchmark_steps"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
