"""Shared command-line plumbing for the experiment scripts (kept out of the fgexp library).

Every script: parse flags, pick a preset (a config dataclass instance), override fields from
flags, validate everything before any compute, then call fgexp and write via fgexp.results.
Bad input ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable

# torch 2.14 warns about its own internal use of torch.jit.script when forward-mode AD first
# runs; it says nothing about this project's code.
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")


class UsageError(ValueError):
    """Bad command-line input, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """Bad flags: one line and exit status 2 (argparse would add its usage lines)."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(description: str, presets: dict, default_out: str = "results"):
    parser = _Parser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(presets), default="smoke",
                        help="named configuration; other flags override its fields")
    parser.add_argument("--out", default=default_out,
                        help="run directory: cell shards, the merged CSV and the manifest")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                        help="torch CPU threads (one is often fastest on small machines)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _items(text: str, example: str) -> list[str]:
    """The comma-separated items of a list flag; an empty list or item is an error."""
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}; expected e.g. {example!r}")
    return items


def int_list(text: str) -> list[int]:
    """'1,2,4', a range '0..4' or a power-of-two range '2^0..2^10' (ascending, both ends in)."""
    example = "1,2,4' or '2^0..2^10"
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = (part.strip() for part in text.split(".."))
            power = lo.startswith("2^") and hi.startswith("2^")
            lo_i, hi_i = (int(lo[2:]), int(hi[2:])) if power else (int(lo), int(hi))
            if lo_i > hi_i:
                raise argparse.ArgumentTypeError(f"descending range {text!r}; write the "
                                                 "smaller end first, e.g. '2^4..2^8'")
            return [2 ** e if power else e for e in range(lo_i, hi_i + 1)]
        return [int(v) for v in _items(text, "1,2,4")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like '{example}', got {text!r}") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in _items(text, "15,30,45")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like '15,30,45', got {text!r}") from None


def str_list(text: str) -> list[str]:
    return _items(text, "a,b")


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def given(args: argparse.Namespace, fields: tuple[str, ...]) -> dict:
    """{field: value} of the flags in `fields` that were given (argparse leaves others None)."""
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def check_table(path: str | None, flag: str) -> None:
    """A table given on the command line is a readable file, or absent (named by the caller)."""
    if path is None or not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: not a file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read it ({err.strerror})") from None


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
        except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
            sys.stderr.close()   # nothing more to say, and no traceback at exit
            return 0
    return wrapped
