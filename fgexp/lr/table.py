"""LR tables: one row per setting in `<lr_dir>/<task>.csv`, and the paper's extraction rule.

    <setting columns>,gradient,k,sampler,lr,loss,evaluations,backend

Every read validates the whole table (columns, numbers) and names the file on failure, so a
search refuses a malformed table before any compute instead of at merge time.

Extraction (paper, Appendix B): among evaluations within 5% of the best loss, the rate closest
to their mean. Rates are compared on log10 scale (mean of log10 lr, nearest in log10), because
the search itself lives on log10(lr) and rates spread over orders of magnitude.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from fgexp.results import atomic_write_text, file_lock, git_commit, rows_to_csv

RATE_COLUMNS = ("gradient", "k", "sampler")
RESULT_COLUMNS = ("lr", "loss", "evaluations", "backend")


class MissingLearningRate(ValueError):
    """No learning rate for a setting; the message names the table and the search command."""


class LRTableError(ValueError):
    """An LR table, search log or checkpoint option file that cannot be read; names the file."""


class AllDiverged(ValueError):
    """Every evaluated rate of a setting diverged, so there is no rate to write."""


def canonical(value) -> str:
    """One spelling per value, so 4, '4' and 4.0 match, and None matches ''."""
    if value is None:
        return ""
    text = str(value).strip()
    if text.lower() in ("", "none", "nan"):
        return ""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def setting_key(setting: Mapping, setting_columns: Sequence[str]) -> tuple[str, ...]:
    return tuple(canonical(setting.get(c)) for c in (*setting_columns, *RATE_COLUMNS))


def setting_id(setting: Mapping, setting_columns: Sequence[str]) -> str:
    """A file- and job-name-safe id: 'function=sphere_n=4_gradient=fg-mean_k=1_sampler=normal'."""
    parts = [f"{c}={canonical(setting.get(c))}" for c in (*setting_columns, *RATE_COLUMNS)
             if canonical(setting.get(c)) != "" or c == "k"]
    return re.sub(r"[^A-Za-z0-9=._+-]", "_", "_".join(parts))


# ---------------------------------------------------------------------------------------------
# Extraction

def check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance}")


def extract_best(lrs: Sequence[float], losses: Sequence[float], tolerance: float = 0.05) -> float:
    """Among rates whose loss is within `tolerance` of the best, the one closest to their mean.

    Mean and distance are taken in log10(lr). "Within 5%" means loss <= best + 0.05 |best|, so
    it needs losses whose scale is meaningful (non-negative gaps to the optimum, not raw values
    that cross zero). Non-finite losses (diverged runs) are ignored; AllDiverged if none is left.
    """
    check_tolerance(tolerance)
    pairs = [(float(lr), float(loss)) for lr, loss in zip(lrs, losses, strict=True)
             if lr > 0 and math.isfinite(loss)]
    if not pairs:
        raise AllDiverged("no evaluation with a finite loss to extract a learning rate from")
    best = min(loss for _, loss in pairs)
    near = [math.log10(lr) for lr, loss in pairs if loss <= best + tolerance * abs(best)]
    center = sum(near) / len(near)
    return 10 ** min(near, key=lambda x: (abs(x - center), x))


# ---------------------------------------------------------------------------------------------
# Reading and checking

def table_columns(setting_columns: Sequence[str]) -> list[str]:
    return [*setting_columns, *RATE_COLUMNS, *RESULT_COLUMNS]


def table_path(lr_dir: Path | str, task_name: str) -> Path:
    return Path(lr_dir) / f"{task_name}.csv"


def read_table(path: Path | str, setting_columns: Sequence[str] | None = None) -> list[dict]:
    """Every row of an LR table as strings, after checking columns and numbers.

    With `setting_columns` the header must be exactly that task's; without, it must hold the
    rate and result columns. lr must be finite and > 0, evaluations an integer, loss a number.
    """
    path = Path(path)
    if path.is_dir():
        raise LRTableError(f"LR table {path} is a directory, not a CSV file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise LRTableError(f"LR table {path}: not UTF-8 text ({err.reason} at byte "
                           f"{err.start})") from None
    except csv.Error as err:
        raise LRTableError(f"LR table {path}: malformed CSV ({err})") from None
    except OSError as err:
        raise LRTableError(f"LR table {path}: cannot read it ({err.strerror})") from None
    expected = (table_columns(setting_columns) if setting_columns is not None
                else [*RATE_COLUMNS, *RESULT_COLUMNS])
    missing = [c for c in expected if c not in header]
    if missing or (setting_columns is not None and header != expected):
        raise LRTableError(f"LR table {path}: expected columns {','.join(expected)}, found "
                           f"{','.join(header) or 'none'}"
                           + (f" (missing {','.join(missing)})" if missing else ""))
    for line, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise LRTableError(f"LR table {path}: line {line} has the wrong number of fields")
        _check_numbers(path, line, row)
    return rows


def _check_numbers(path: Path, line: int, row: Mapping[str, str]) -> None:
    try:
        lr, _ = float(row["lr"]), float(row["loss"])
        int(row["evaluations"])
    except ValueError:
        raise LRTableError(f"LR table {path}: line {line} has a non-numeric lr, loss or "
                           f"evaluations ({row['lr']!r}, {row['loss']!r}, "
                           f"{row['evaluations']!r})") from None
    if not (math.isfinite(lr) and lr > 0):
        raise LRTableError(f"LR table {path}: line {line} has lr {row['lr']!r}; "
                           "expected a finite rate > 0")


def check_writable_dir(path: Path | str, what: str) -> None:
    """Refuse a directory we could not create or write into, by creating (and removing) a file
    in it or in its nearest existing parent; os.access says yes to root even on /proc."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path} cannot be made: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = "" if parent == path else f" (cannot create files in {parent})"
        raise ValueError(f"{what} {path} is not writable{where}: {err.strerror}") from None


def check_log(path: Path | str) -> None:
    """A search log, if there is one, is JSON lines (we append to it; say now if it is garbled)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if line.strip():
                    json.loads(line)
    except UnicodeDecodeError as err:
        raise LRTableError(f"search log {path}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise LRTableError(f"search log {path}: line {line_no} is not JSON ({err.msg})") \
            from None
    except OSError as err:
        raise LRTableError(f"search log {path}: cannot read it ({err.strerror})") from None


def check_outputs(lr_dir: Path | str, task_name: str, setting_columns: Sequence[str]) -> None:
    """Everything a search writes, checked before any compute: directory, table, log."""
    check_writable_dir(lr_dir, "LR table directory")
    path = table_path(lr_dir, task_name)
    if path.exists():
        read_table(path, setting_columns)
    check_log(Path(lr_dir) / f"{task_name}.log.jsonl")


# ---------------------------------------------------------------------------------------------
# Writing and lookup

def merge_rows(path: Path | str, setting_columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    """Write `rows` into the table at `path`, replacing rows of the same setting, keeping others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = table_columns(setting_columns)
    with file_lock(path.with_name(f".{path.name}.lock")):  # one merge at a time
        old = read_table(path, setting_columns) if path.exists() else []
        new_keys = {setting_key(r, setting_columns) for r in rows}
        kept = [r for r in old if setting_key(r, setting_columns) not in new_keys]
        keys = (*setting_columns, *RATE_COLUMNS)
        rows = [{**r, **{c: canonical(r.get(c)) for c in keys}} for r in rows]
        atomic_write_text(path, rows_to_csv([*kept, *rows], columns))


def log_search(lr_dir: Path | str, task_name: str, record: Mapping) -> None:
    """Append one JSON line of provenance (command, commit, config) to <task>.log.jsonl."""
    entry = {"argv": sys.argv, "git_commit": git_commit(), **record}
    Path(lr_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(lr_dir) / f"{task_name}.log.jsonl", "a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def result_row(setting: Mapping, setting_columns: Sequence[str], lr: float, loss: float,
               evaluations: int, backend: str) -> dict:
    row = {c: setting.get(c) for c in (*setting_columns, *RATE_COLUMNS)}
    row.update(lr=float(lr), loss=float(loss), evaluations=int(evaluations), backend=backend)
    return row


def lookup_lr(table: Path | str, setting: Mapping, search_command: str) -> float:
    """The learning rate of `setting` (setting columns + gradient, k, sampler) in an LR table."""
    table = Path(table)
    described = " ".join(f"{k}={canonical(v)}" for k, v in setting.items())
    if not table.exists():
        raise MissingLearningRate(f"no learning-rate table {table} (needed for {described}); "
                                  f"make it with: {search_command}")
    rows = read_table(table)
    columns = [c for c in (rows[0].keys() if rows else []) if c not in RESULT_COLUMNS]
    # A column the setting does not mention counts as empty (e.g. no cone angle).
    if canonical(setting.get("gradient")) == "bp":  # one exact gradient, whatever k and sampler
        columns = [c for c in columns if c not in ("k", "sampler")]
    want = tuple(canonical(setting.get(c)) for c in columns)
    for row in rows:
        if tuple(canonical(row[c]) for c in columns) == want:
            return float(row["lr"])
    raise MissingLearningRate(f"no learning rate for {described} in {table}; "
                              f"make it with: {search_command}")
