"""Run directories: manifest, atomic CSV writes, per-cell DONE records, resume.

One experiment `name` writes into a directory DIR:
  DIR/<name>.csv            tidy rows, the single source of truth for figures
  DIR/<name>.manifest.json  resolved config, argv, git commit, versions, device, times
  DIR/<name>.done           ids of finished cells, one per line
Several experiments may share DIR (results/ holds them all), hence the name prefix.

A cell's rows replace any earlier rows with the same key columns, so a crash between the CSV
write and the DONE record only makes the rerun redo that cell; it never duplicates rows.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "propulate",
            "mpi4py")


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


class ResultsError(RuntimeError):
    """A run directory that cannot be used as asked (config mismatch, unwritable, bad CSV)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, with '-dirty' if tracked files changed; 'unknown' outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    """Machine, device and package versions, for provenance."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "packages": versions}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                          else f"cpu ({platform.processor() or platform.machine()})")
    return info


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_csv_rows(path: Path, columns: Sequence[str] | None = None) -> list[dict]:
    """Rows of a CSV as dicts of strings; a header that differs from `columns` is an error."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if columns is not None and reader.fieldnames != list(columns):
            raise ResultsError(f"{path}: malformed CSV, expected columns {','.join(columns)}, "
                               f"found {','.join(reader.fieldnames or [])}")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ResultsError(f"{path}: malformed CSV, line {i} has the wrong number of fields")
    return rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def rows_to_csv(rows: Iterable[Mapping], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in columns])
    return buf.getvalue()


class RunDir:
    """One experiment's results in a directory, resumable cell by cell."""

    def __init__(self, out: Path | str, name: str, config: Mapping, columns: Sequence[str],
                 key_columns: Sequence[str], argv: Sequence[str] | None = None):
        self.dir = Path(out)
        self.name = name
        self.config = json.loads(json.dumps(dict(config), default=str))
        self.columns = list(columns)
        self.key_columns = list(key_columns)
        self.argv = list(sys.argv if argv is None else argv)
        unknown = set(self.key_columns) - set(self.columns)
        if unknown:
            raise ValueError(f"key columns {sorted(unknown)} are not CSV columns")

    @property
    def csv_path(self) -> Path:
        return self.dir / f"{self.name}.csv"

    @property
    def manifest_path(self) -> Path:
        return self.dir / f"{self.name}.manifest.json"

    @property
    def done_path(self) -> Path:
        return self.dir / f"{self.name}.done"

    def check(self) -> "RunDir":
        """Refuse, before any compute or write, a directory we must not use."""
        if self.dir.exists() and not self.dir.is_dir():
            raise ResultsError(f"output {self.dir} exists and is not a directory")
        parent = self.dir if self.dir.exists() else next(
            p for p in self.dir.parents if p.exists())
        if not parent.is_dir():
            raise ResultsError(f"output {self.dir} cannot be created: {parent} is not a directory")
        try:  # a real probe: permissions alone miss read-only mounts and root's special cases
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as err:
            raise ResultsError(f"output directory {self.dir} is not writable ({err.strerror})") \
                from None
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text()).get("config")
            if old != self.config:
                diff = sorted(k for k in set(old or {}) | set(self.config)
                              if (old or {}).get(k) != self.config.get(k))
                raise ResultsError(
                    f"{self.dir} already holds {self.name} results of a different config "
                    f"(differs in: {', '.join(diff)}); use another --out or remove "
                    f"{self.manifest_path.name}, {self.csv_path.name} and {self.done_path.name}")
        if self.csv_path.exists():
            read_csv_rows(self.csv_path, self.columns)
        return self

    def start(self, preset: str | None = None) -> "RunDir":
        """Check, create the directory and write (or update) the manifest."""
        self.check()
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {}
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
        manifest.update({
            "name": self.name, "preset": preset, "config": self.config,
            "argv": self.argv, "git_commit": git_commit(),
            "environment": environment(),
            "started": manifest.get("started", _now()), "ended": None,
        })
        manifest.setdefault("sessions", []).append({"argv": self.argv, "started": _now()})
        self._write_manifest(manifest)
        return self

    def finish(self) -> None:
        manifest = json.loads(self.manifest_path.read_text())
        manifest["ended"] = _now()
        manifest["sessions"][-1]["ended"] = manifest["ended"]
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")

    def done(self) -> set[str]:
        """Ids of finished cells."""
        if not self.done_path.exists():
            return set()
        return {line for line in self.done_path.read_text().splitlines() if line}

    def rows(self) -> list[dict]:
        return read_csv_rows(self.csv_path, self.columns) if self.csv_path.exists() else []

    def _key(self, row: Mapping) -> tuple:
        return tuple(_fmt(row.get(c)) for c in self.key_columns)

    def write_cell(self, cell_id: str, rows: Sequence[Mapping]) -> None:
        """Atomically add a finished cell's rows (replacing rows with the same keys), mark DONE."""
        new_keys = {self._key(r) for r in rows}
        kept = [r for r in self.rows() if self._key(r) not in new_keys]
        atomic_write_text(self.csv_path, rows_to_csv([*kept, *rows], self.columns))
        done = sorted(self.done() | {cell_id})
        atomic_write_text(self.done_path, "\n".join(done) + "\n")
