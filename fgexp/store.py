"""The results store's files: atomic writes, one shard per finished cell, their merge.

An experiment `name` in a run directory DIR keeps (docs/results_store.md):
  DIR/<name>.cells/<cell>.csv  one shard per finished cell: its rows as CSV, then one checksum
                               line; written once by a rename, so it is whole or absent
  DIR/<name>.csv               the merge of all shards (derived: rebuilt whenever it differs)
  DIR/<name>.timing.csv        wall times keyed like the rows (derived, where there are any)
A cell is done if and only if its shard is valid. No step needs a lock to be correct, so the
store is safe on NFS, where locks may be missing but a rename within a directory is atomic.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

TRAILER = "#fgexp-shard "
STALE_TEMP_SECONDS = 3600  # a temporary lives for one write (milliseconds); after this it is dead


class ResultsError(RuntimeError):
    """A run directory that cannot be used as asked (config mismatch, unwritable, bad file)."""


# ---- atomic writes and their temporaries ------------------------------------------------------

def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
    """A temporary beside `path`, unique per process and call, naming its writer's host and pid
    (so a later run can tell a dead writer's leftover from a live one's)."""
    return path.with_name(f".{path.name}~{_host()}~{os.getpid()}~{secrets.token_hex(4)}.tmp")


_TEMP = re.compile(r"^\.(?P<target>.+)~(?P<host>[^~]+)~(?P<pid>\d+)~[0-9a-f]+\.tmp$")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist) with `data`, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write a unique temporary beside `path`, fsync it, rename it over `path`, fsync the
    directory: readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(directory: Path, prefix: str = "") -> list[Path]:
    """Delete temporaries of killed writes in `directory` whose target starts with `prefix`.

    A temporary is dead if its writer ran on this host and that pid is gone, or if it is older
    than STALE_TEMP_SECONDS (any host; also the mkstemp names `.<file>.XXXXXXXX` of older
    versions). A live writer's temporary is never touched: its pid is alive and it is young.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    host, now = _host(), time.time()
    legacy = re.compile(rf"^\.{re.escape(prefix)}.*\.[a-z0-9_]{{8}}$")
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and match["target"].lstrip(".").startswith(prefix):
            dead = match["host"] == host and not _pid_alive(int(match["pid"]))
        elif legacy.match(entry.name) and not entry.name.endswith(".lock"):
            dead = False
        else:
            continue
        try:
            dead = dead or now - entry.stat().st_mtime > STALE_TEMP_SECONDS
            if dead and entry.is_file():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # its writer renamed it meanwhile
            pass
    return removed


@contextlib.contextmanager
def file_lock(path: Path | str):
    """An exclusive lock on the file `path` (created if missing), so that concurrent jobs (SLURM
    array tasks) sharing one directory update its files one at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def best_effort_lock(path: Path):
    """file_lock where the file system offers one; without it (NFS without lockd) go on: the
    callers stay correct unlocked, the lock only saves them repeated work."""
    try:
        fh = open(path, "a")
    except OSError:
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
        yield


# ---- CSV text ---------------------------------------------------------------------------------

def fmt(value) -> str:
    """A CSV field: '' for None, repr for floats (round-trips exactly), str otherwise."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def rows_to_csv(rows: Iterable[Mapping], columns: Sequence[str], header: bool = True) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([fmt(row.get(c)) for c in columns])
    return buf.getvalue()


def parse_rows(text: str, source: Path, columns: Sequence[str] | None = None,
               what: str = "CSV") -> tuple[list[str], list[list[str]]]:
    """(header, rows) of CSV text; a wrong header or field count is one ResultsError line."""
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise ResultsError(f"{source}: malformed {what} ({err})") from None
    if not records:
        raise ResultsError(f"{source}: malformed {what}, it is empty (no header line)")
    header, body = records[0], records[1:]
    if columns is not None and header != list(columns):
        raise ResultsError(f"{source}: malformed {what}, expected columns {','.join(columns)}, "
                           f"found {','.join(header)}")
    for i, fields in enumerate(body, start=2):
        if len(fields) != len(header):
            raise ResultsError(f"{source}: malformed {what}, line {i} has {len(fields)} fields, "
                               f"not {len(header)}")
    return header, body


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path}: malformed {what}, not UTF-8 text (byte {err.start})") \
            from None
    except IsADirectoryError:
        raise ResultsError(f"{path}: expected a {what} file, found a directory") from None


# ---- shards -----------------------------------------------------------------------------------

def shard_name(cell_id: str) -> str:
    """A file name for a cell id ('/' and other unsafe characters %-quoted; '=' kept)."""
    return quote(cell_id, safe="=,+").replace("~", "%7E") + ".csv"


def cell_of(name: str) -> str:
    return unquote(name[: -len(".csv")])


@dataclass(frozen=True)
class Shard:
    path: Path
    cell: str
    header: tuple[str, ...]
    body: str                             # the row lines, exactly as the merged CSV has them
    rows: tuple[tuple[str, ...], ...]     # the same, parsed
    timing: Mapping | None                # {"columns": [...], "rows": [[...]]} or None


def _checksum(csv_text: str, meta: Mapping) -> str:
    blob = csv_text + json.dumps(meta, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_shard(cell_id: str, csv_text: str, timing: Mapping | None) -> str:
    """A shard's text: the cell's CSV (header and rows), then one line naming the cell, the row
    count and a checksum, so a shard cut short or garbled anywhere is recognized."""
    meta = {"cell": cell_id, "rows": csv_text.count("\n") - 1}
    if timing is not None:
        meta["timing"] = timing
    meta["sha256"] = _checksum(csv_text, meta)
    return csv_text + TRAILER + json.dumps(meta, sort_keys=True) + "\n"


def decode_shard(path: Path, columns: Sequence[str] | None = None) -> Shard:
    """A shard read back and checked; anything wrong is one ResultsError line naming the file."""
    try:
        text = read_text(path, "shard")
    except ResultsError as err:
        raise ResultsError(f"{err}; delete it to recompute that cell") from None
    head, sep, trailer = text.rpartition("\n" + TRAILER)
    if not sep or not trailer.endswith("\n"):
        raise ResultsError(f"{path}: damaged shard, its checksum line is missing (cut short?); "
                           "delete it to recompute that cell")
    csv_text = head + "\n"
    try:
        meta = json.loads(trailer)
        digest = meta.pop("sha256")
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ResultsError(f"{path}: damaged shard, unreadable checksum line; delete it to "
                           "recompute that cell") from None
    if digest != _checksum(csv_text, meta):
        raise ResultsError(f"{path}: damaged shard, checksum mismatch (edited or corrupted); "
                           "delete it to recompute that cell")
    cell = cell_of(path.name)
    if meta.get("cell") != cell:
        raise ResultsError(f"{path}: shard of cell {meta.get('cell')!r} under the file name of "
                           f"{cell!r}; delete it to recompute that cell")
    try:
        header, rows = parse_rows(csv_text, path, columns, "shard")
    except ResultsError as err:
        raise ResultsError(f"{err}; delete it to recompute that cell (or use another --out)") \
            from None
    body = csv_text.split("\n", 1)[1]
    return Shard(path, cell, tuple(header), body, tuple(map(tuple, rows)), meta.get("timing"))


def natural_key(text: str) -> tuple:
    """Sort 'n=2' before 'n=16': digit runs compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part) + ((2, 0, text),)


def read_shards(cells_dir: Path, columns: Sequence[str] | None = None) -> list[Shard]:
    """Every finished cell's shard, checked, in natural cell-id order."""
    try:
        names = [e.name for e in os.scandir(cells_dir)
                 if e.name.endswith(".csv") and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ResultsError(f"{cells_dir}: expected the directory of cell shards, found a file") \
            from None
    shards = []
    for name in names:
        try:
            shards.append(decode_shard(cells_dir / name, columns))
        except FileNotFoundError:  # replaced between listing and reading: read the new one
            if (cells_dir / name).exists():
                shards.append(decode_shard(cells_dir / name, columns))
    shards.sort(key=lambda s: natural_key(s.cell))
    if columns is None and shards:
        for s in shards:
            if s.header != shards[0].header:
                raise ResultsError(f"{s.path}: malformed shard, its columns differ from those "
                                   f"of {shards[0].path.name}")
    return shards


def merge(shards: Sequence[Shard], columns: Sequence[str] | None,
          key_columns: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """(CSV text, timing CSV text or None): shards in order, rows in their shard's order.

    Two shards holding a row with the same key is an error naming both (rows are never
    duplicated). With no shards and no known columns there is nothing to write (None).
    """
    header = list(columns) if columns is not None else (list(shards[0].header) if shards
                                                        else None)
    if header is None:
        return None, None
    if key_columns:
        idx = [header.index(c) for c in key_columns]
        owner: dict[tuple, Path] = {}
        for s in shards:
            for row in s.rows:
                key = tuple(row[i] for i in idx)
                if key in owner and owner[key] != s.path:
                    raise ResultsError(f"{s.path}: holds a row of key {key} that "
                                       f"{owner[key].name} holds too; delete the wrong shard")
                owner[key] = s.path
    text = rows_to_csv([], header) + "".join(s.body for s in shards)
    timed = [s.timing for s in shards if s.timing]
    timing = None
    if timed:
        t_cols = timed[0]["columns"]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(t_cols)
        for t in timed:
            writer.writerows(t["rows"])
        timing = buf.getvalue()
    return text, timing


def _current(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ResultsError(f"{path}: expected a CSV file, found a directory; move it away") \
            from None


def refresh(cells_dir: Path, csv_path: Path, timing_path: Path, columns: Sequence[str] | None,
            key_columns: Sequence[str] | None = None, note: bool = True) -> list[Shard]:
    """Rewrite the CSV (and timing CSV) wherever they differ from the merge of the shards.

    Concurrent writers may each rebuild; after its rename a rebuilder merges again and repeats
    if a shard appeared meanwhile, so the last rename always lists every shard it saw. With
    `note`, a rebuilt existing or missing CSV gets one line on stderr (it was damaged, deleted or
    left behind by a killed writer). Returns the shards merged.
    """
    with best_effort_lock(csv_path.with_name(f".{csv_path.stem}.merge.lock")):
        for _ in range(1000):
            shards = read_shards(cells_dir, columns)
            text, timing = merge(shards, columns, key_columns)
            if text is None:
                return shards
            for path, want, label in ((csv_path, text, "CSV"), (timing_path, timing, "timing")):
                if want is None:
                    continue
                have = _current(path)
                if have != want.encode():
                    if note and label == "CSV" and (shards or have is not None):
                        why = "missing" if have is None else "out of date or damaged"
                        print(f"{path}: {why}; rebuilt from {len(shards)} cell shards in "
                              f"{cells_dir.name}/", file=sys.stderr)
                    atomic_write_text(path, want)
            if merge(read_shards(cells_dir, columns), columns, key_columns) == (text, timing):
                return shards
    raise ResultsError(f"{csv_path}: shards keep changing; could not merge a stable CSV")
