"""Reading a results CSV for plotting: every malformation is one line naming the file.

The store writes whole lines ending in a newline, a header naming every column and numbers
that parse; anything else (a file cut mid-line, a lost column, a garbled value) is refused
here rather than drawn.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


class CSVError(ValueError):
    """A results CSV that cannot be plotted; the message names the file."""


def read_results(path: Path | str, text: Sequence[str] = (), numeric: Sequence[str] = (),
                 sort: bool = True) -> pd.DataFrame:
    """The CSV at `path` as a DataFrame, after checking its shape and the named columns.

    `text` and `numeric` columns must be present; numeric ones may be empty (NaN) but never
    hold a word. With `sort`, rows come sorted by every column, so nothing downstream depends
    on the order the rows were written in.
    """
    path = Path(path)
    if not path.is_file():
        raise CSVError(f"{path}: not a file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CSVError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not content.strip():
        raise CSVError(f"{path}: empty file, no header and no rows")
    if not content.endswith("\n"):
        raise CSVError(f"{path}: the last line is cut short (no newline at the end)")
    header = _check_fields(path, content)
    missing = [c for c in (*text, *numeric) if c not in header]
    if missing:
        raise CSVError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)}")
    try:
        df = pd.read_csv(io.StringIO(content))
    except (ValueError, pd.errors.ParserError) as err:
        raise CSVError(f"{path}: malformed CSV ({err})") from None
    if df.empty:
        raise CSVError(f"{path}: a header but no rows")
    for column in numeric:
        _check_numeric(path, df, column)
    if sort:
        df = df.sort_values(list(df.columns), kind="stable").reset_index(drop=True)
    return df


def _check_fields(path: Path, content: str) -> list[str]:
    """The header; CSVError at the first line whose field count differs from it."""
    rows = csv.reader(io.StringIO(content))
    header = next(rows)
    for row in rows:
        if row and len(row) != len(header):
            raise CSVError(f"{path}: line {rows.line_num} has {len(row)} fields, the header "
                           f"{len(header)}")
    return header


def _check_numeric(path: Path, df: pd.DataFrame, column: str) -> None:
    if pd.api.types.is_numeric_dtype(df[column]):
        return
    parsed = pd.to_numeric(df[column], errors="coerce")
    bad = df[column].notna() & parsed.isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise CSVError(f"{path}: column {column}, line {row + 2}: {df[column].iloc[row]!r} is "
                       "not a number")
    df[column] = parsed
