"""Shared command-line plumbing for the experiment scripts (kept out of the fgexp library).

Every script: parse flags, pick a preset (a config dataclass instance), override fields from
flags, validate everything before any compute, then call fgexp and write via fgexp.results.
Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torch 2.14 warns about its own internal use of torch.jit.script when forward-mode AD first
# runs; it says nothing about this project's code.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)


class UsageError(ValueError):
    """Bad command-line input, reported as one line."""


def make_parser(description: str, presets: dict, default_out: str = "results"):
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(presets), default="smoke",
                        help="named configuration; other flags override its fields")
    parser.add_argument("--out", default=default_out,
                        help="run directory for the CSV, manifest and DONE records")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                        help="torch CPU threads (one is often fastest on small machines)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def int_list(text: str) -> list[int]:
    """'1,2,4' or a power-of-two range '2^0..2^10'."""
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = (part.strip() for part in text.split(".."))
            if lo.startswith("2^") and hi.startswith("2^"):
                return [2 ** e for e in range(int(lo[2:]), int(hi[2:]) + 1)]
            return list(range(int(lo), int(hi) + 1))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like '1,2,4' or '2^0..2^10', got {text!r}") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '15,30,45', got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def override(config, args: argparse.Namespace, fields: list[str]):
    """dataclasses.replace(config, ...) with every flag in `fields` that was given."""
    given = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    return dataclasses.replace(config, **given)


def grid_overrides(args: argparse.Namespace, grid_fields: tuple[str, ...],
                   scalar_fields: tuple[str, ...] = ()) -> dict:
    """Field overrides for configs that hold a normal grid and a cone grid (`cone_` fields).

    With --cone, the list flags in `grid_fields` (and --angles) set the cone grid's fields;
    without it they set the normal grid's. Scalar flags apply to both.
    """
    if args.angles is not None and not args.cone:
        raise UsageError("--angles applies only with --cone")
    prefix = "cone_" if args.cone else ""
    given = {f"{prefix}{name}": tuple(getattr(args, name))
             for name in grid_fields if getattr(args, name) is not None}
    if args.angles is not None:
        given["cone_angles"] = tuple(args.angles)
    given.update({name: getattr(args, name) for name in scalar_fields
                  if getattr(args, name) is not None})
    return given


def run_dir(args: argparse.Namespace, name: str, config, columns, key_columns, argv=None):
    """The experiment's fgexp.results.RunDir in --out, recording the command line as given."""
    from fgexp.results import RunDir
    return RunDir(args.out, name, dataclasses.asdict(config), columns, key_columns,
                  argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])


def setup_torch(threads: int) -> None:
    import torch
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def cli(main: Callable[[list[str] | None], int | None]):
    """Run main(argv); known errors become one line on stderr and exit status 2."""
    @functools.wraps(main)
    def wrapped(argv=None):
        from fgexp.results import ResultsError
        try:
            return main(argv) or 0
        except (UsageError, ValueError, ResultsError, FileNotFoundError, PermissionError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished cells are saved; rerun the same command to resume",
                  file=sys.stderr)
            return 130
    return wrapped
