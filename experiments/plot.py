"""The plotting stage, the one plotting CLI: rebuild figures and tables from CSVs (no compute).

    python experiments/plot.py figure3 --results results --figures paper_figures
    python experiments/plot.py all --allow-missing          (make plots)
    python experiments/plot.py benchmark-steps              (after make bench)

Every CSV a figure needs is read and checked, and every figure is drawn in memory, before
the first file is written: a bad input leaves --figures untouched.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import _common

from fgexp.plots.registry import BUILDERS, write_outputs


def _epilog() -> str:
    return "figures:\n" + "\n".join(f"  {name:16} {b.doc}" for name, b in BUILDERS.items())


def _figures_dir(path: Path) -> Path:
    """--figures, checked: a directory (or a new one) in which a file can be created."""
    if path.exists() and not path.is_dir():
        raise _common.UsageError(f"--figures {path}: not a directory")
    parent = next(p for p in (path, *path.parents) if p.exists())
    try:  # by creating a file: os.access says yes to root on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".plot-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _common.UsageError(f"--figures {path}: cannot write in {parent} ({err.strerror})")
    return path


def _selected(names: list[str], results: Path, allow_missing: bool) -> list[str]:
    """The figures to draw: those whose CSVs exist (--allow-missing) or all, else an error."""
    chosen = []
    for name in names:
        missing = [c for c in BUILDERS[name].csvs if not (results / c).exists()]
        if not missing:
            chosen.append(name)
        elif allow_missing:
            print(f"skip {name}: no {', '.join(missing)} in {results}")
        else:
            raise FileNotFoundError(f"{name} needs {results / missing[0]}; run its experiment "
                                    "first (see README) or point --results elsewhere")
    if not chosen:
        raise FileNotFoundError(f"nothing to plot: {results} holds none of the CSVs of "
                                f"{', '.join(names)}")
    return chosen


@_common.cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", help=f"one of: all, {', '.join(BUILDERS)}")
    parser.add_argument("--results", default="results", help="directory with the CSVs")
    parser.add_argument("--figures", default="paper_figures", help="where figures go")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with 'all': skip figures whose CSV is missing instead of failing")
    args = parser.parse_args(argv)
    if args.figure != "all" and args.figure not in BUILDERS:
        raise _common.UsageError(f"unknown figure {args.figure!r}; allowed: all, "
                                 f"{', '.join(BUILDERS)}")
    results, figures = Path(args.results), _figures_dir(Path(args.figures))
    if not results.is_dir():
        raise _common.UsageError(f"--results {results}: not a directory")
    names = list(BUILDERS) if args.figure == "all" else [args.figure]
    outputs = {}
    for name in _selected(names, results, args.allow_missing):
        outputs.update(BUILDERS[name].build(results))
    for path in write_outputs(outputs, figures):
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
