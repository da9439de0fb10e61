"""The plotting stage: rebuild figures and tables from CSVs (no compute).

    python experiments/plot.py figure3 --results results --figures paper_figures
    python experiments/plot.py all --allow-missing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common
from figures import BUILDERS


@_common.cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", help=f"one of: all, {', '.join(BUILDERS)}")
    parser.add_argument("--results", default="results", help="directory with the CSVs")
    parser.add_argument("--figures", default="paper_figures", help="where figures go")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with 'all': skip figures whose CSV is missing instead of failing")
    args = parser.parse_args(argv)
    names = list(BUILDERS) if args.figure == "all" else [args.figure]
    for name in names:
        if name not in BUILDERS:
            raise _common.UsageError(f"unknown figure {name!r}; allowed: all, {', '.join(BUILDERS)}")
    results, figures = Path(args.results), Path(args.figures)
    for name in names:
        csvs, fn = BUILDERS[name]
        missing = [c for c in csvs if not (results / c).exists()]
        if missing:
            if args.allow_missing:
                print(f"skip {name}: no {', '.join(missing)} in {results}")
                continue
            raise FileNotFoundError(f"{name} needs {results / missing[0]}; run its experiment "
                                    "first (see README) or point --results elsewhere")
        for path in fn(results, figures):
            print(f"wrote {path}")

if __name__ == "__main__":
    sys.exit(main())
