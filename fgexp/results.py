"""Run directories: manifest, per-cell shards, the merged CSV, resume (docs/results_store.md).

One experiment `name` writes into a directory DIR:
  DIR/<name>.cells/<cell>.csv  one shard per finished cell (fgexp.store): the source of truth
  DIR/<name>.csv               tidy rows for figures: the merge of the shards, rebuilt if stale
  DIR/<name>.timing.csv        wall times keyed like the rows (networks only)
  DIR/<name>.manifest.json     resolved config, argv, git commit, versions, device, sessions
Several experiments may share DIR (results/ holds them all), hence the name prefix. A cell is
done if and only if its shard is valid, so any number of concurrent writers (SLURM array
tasks) never lose, duplicate or invent a row, and a rerun computes exactly the missing cells.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

# file_lock, atomic_write_text and rows_to_csv are re-exported: LR tables and figures use them.
from fgexp.store import (ResultsError, atomic_write_text, best_effort_lock,  # noqa: F401
                         encode_shard, file_lock, fmt, parse_rows, read_shards, read_text,
                         refresh, remove_stale_temporaries, rows_to_csv, shard_name, temp_path,
                         write_new)

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "propulate",
            "mpi4py")
LAYOUT = "cells-v1"  # the manifest's name for this layout (one shard per cell)


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, with '-dirty' if tracked code changed; 'unknown' outside git.

    Outputs (results/, paper_figures/) do not count: a pipeline that writes tracked results
    step by step would otherwise mark every step after the first as dirty."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)results", ":(top,exclude)paper_figures"],
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
    """Rows of a CSV as dicts of strings; a header that differs from `columns`, a wrong field
    count or bytes that are not text is one ResultsError naming the file."""
    path = Path(path)
    header, rows = parse_rows(read_text(path, "CSV"), path, columns)
    return [dict(zip(header, fields)) for fields in rows]


def probe_writable(directory: Path | str, what: str = "output directory") -> None:
    """Refuse a directory we cannot create files in, by creating one (permissions alone miss
    read-only mounts and root's special cases such as /proc)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ResultsError(f"{what} {directory} exists and is not a directory")
    parent = directory if directory.exists() else next(
        p for p in directory.parents if p.exists())
    if not parent.is_dir():
        raise ResultsError(f"{what} {directory} cannot be created: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ResultsError(f"{what} {directory} is not writable ({err.strerror})") from None


def read_manifest(path: Path) -> dict | None:
    """The manifest as a dict (None if absent); garbage is one ResultsError line."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(read_text(path, "manifest"))
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: malformed manifest, not JSON ({err.msg} at line "
                           f"{err.lineno} column {err.colno})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ResultsError(f"{path}: malformed manifest, expected a JSON object with a "
                           "'config' object")
    return manifest


def current_csv(directory: Path | str, name: str) -> Path:
    """DIR/<name>.csv made current for a reader (plots): rebuilt from its shards if missing or
    stale, every shard checked. A directory without shards is returned as it is."""
    directory = Path(directory)
    cells = directory / f"{name}.cells"
    csv_path = directory / f"{name}.csv"
    if cells.is_dir():
        refresh(cells, csv_path, directory / f"{name}.timing.csv", None)
    return csv_path


def same_config(old: Mapping, new: Mapping) -> bool:
    """Configs are the same if every field agrees; a field added to a config class later, at
    its default None (e.g. lr_rule), matches a recorded config that predates it."""
    return all(old.get(k) == new.get(k) for k in set(old) | set(new)
               if k in old or new.get(k) is not None)


class RunDir:
    """One experiment's results in a directory, resumable cell by cell."""

    def __init__(self, out: Path | str, name: str, config: Mapping, columns: Sequence[str],
                 key_columns: Sequence[str], argv: Sequence[str] | None = None,
                 timing_columns: Sequence[str] = ()):
        self.dir = Path(out)
        self.name = name
        self.config = json.loads(json.dumps(dict(config), default=str))
        self.columns = list(columns)
        self.key_columns = list(key_columns)
        self.timing_columns = list(timing_columns)  # wall times: kept out of the result CSV
        self.argv = list(sys.argv if argv is None else argv)
        self.preset: str | None = None
        self._session: str | None = None  # this process's session id once it wrote a cell
        self._started = _now()  # when this process opened the directory, not its first write
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
    def cells_dir(self) -> Path:
        return self.dir / f"{self.name}.cells"

    @property
    def timing_path(self) -> Path:
        return self.dir / f"{self.name}.timing.csv"

    def shard_path(self, cell_id: str) -> Path:
        return self.cells_dir / shard_name(cell_id)

    # ---- reading ------------------------------------------------------------------------------

    def check(self) -> "RunDir":
        """Refuse, before any compute or write, a directory we must not use: unwritable, of
        another config, of the old layout, or holding a malformed manifest or shard."""
        probe_writable(self.dir)
        old_done = self.dir / f"{self.name}.done"
        if old_done.exists() and not self.cells_dir.exists():
            raise ResultsError(f"{old_done}: {self.dir} holds {self.name} results in the old "
                               f"layout (CSV + .done list); use another --out")
        manifest = read_manifest(self.manifest_path)
        if manifest is not None and not same_config(manifest["config"], self.config):
            old = manifest["config"]
            diff = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            raise ResultsError(
                f"{self.manifest_path}: {self.dir} already holds {self.name} results of a "
                f"different config (differs in: {', '.join(diff)}); use another --out or remove "
                f"{self.manifest_path.name}, {self.cells_dir.name}/ and {self.csv_path.name}")
        if self.csv_path.exists() and not self.cells_dir.exists():
            raise ResultsError(f"{self.csv_path}: exists without its cell shards "
                               f"({self.cells_dir.name}/), so it was not written by this store; "
                               "move it away or use another --out")
        for path in (self.csv_path, self.timing_path):
            if path.exists() and not path.is_file():
                raise ResultsError(f"{path}: expected a CSV file, found a directory; move it away")
        self.shards()
        return self

    def shards(self):
        """Every finished cell's shard, checked (a damaged one is a ResultsError)."""
        return read_shards(self.cells_dir, self.columns)

    def done(self) -> set[str]:
        """Ids of finished cells: those with a valid shard."""
        return {s.cell for s in self.shards()}

    def rows(self) -> list[dict]:
        """Every row, from the shards (never from the derived CSV)."""
        return [dict(zip(self.columns, row)) for s in self.shards() for row in s.rows]

    # ---- writing ------------------------------------------------------------------------------

    def start(self, preset: str | None = None) -> "RunDir":
        """Check; create the directory and the manifest if missing; remove temporaries of killed
        writes; rebuild a missing or stale CSV. A session is recorded at the first write_cell,
        so a rerun with nothing to compute leaves the manifest as it was."""
        self.check()
        self.preset = preset
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir, f"{self.name}.")
        remove_stale_temporaries(self.cells_dir)
        self._create_manifest()
        self.refresh()
        return self

    def refresh(self, note: bool = True) -> None:
        """Rewrite the CSV and timing CSV wherever they differ from the merge of the shards."""
        refresh(self.cells_dir, self.csv_path, self.timing_path, self.columns, self.key_columns,
                note)

    def write_cell(self, cell_id: str, rows: Sequence[Mapping]) -> None:
        """Durably store a finished cell's rows (replacing an earlier shard of that cell); from
        then on the cell counts as done. The merged CSV follows at finish()."""
        if self._session is None:
            self._open_session()
        keys = [tuple(fmt(r.get(c)) for c in self.key_columns) for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"cell {cell_id!r} has two rows with one key")
        csv_text = rows_to_csv(rows, self.columns)
        timing = None
        if self.timing_columns:
            t_cols = [*self.key_columns, *self.timing_columns]
            timing = {"columns": t_cols, "rows": [[fmt(r.get(c)) for c in t_cols] for r in rows]}
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.shard_path(cell_id), encode_shard(cell_id, csv_text, timing))

    def finish(self) -> None:
        """Merge the shards into the CSV and close this process's manifest session."""
        self.refresh(note=False)
        if self._session is None:
            return
        with best_effort_lock(self.dir / f".{self.name}.manifest.lock"):
            manifest = read_manifest(self.manifest_path) or {}
            manifest["ended"] = _now()
            for session in manifest.get("sessions", []):
                if session.get("id") == self._session:
                    session["ended"] = manifest["ended"]
            self._write_manifest(manifest)
        self._session = None

    def _create_manifest(self) -> None:
        """Create the manifest once: a hard link fails if another writer made it first (atomic
        on NFSv3+ too), in which case its config must equal ours."""
        if self.manifest_path.exists():
            return
        manifest = {"name": self.name, "preset": self.preset, "config": self.config,
                    "store": {"layout": LAYOUT}, "argv": self.argv, "git_commit": git_commit(),
                    "environment": environment(), "started": self._started, "ended": None,
                    "sessions": []}
        tmp = temp_path(self.manifest_path)
        try:
            write_new(tmp, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
            os.link(tmp, self.manifest_path)
        except FileExistsError:
            self.check()  # the other writer's config must be ours
        finally:
            tmp.unlink(missing_ok=True)

    def _open_session(self) -> None:
        """Record this process (argv, commit, environment) in the manifest before its first cell.
        Under concurrent writers without a working lock a session entry may be lost (it is
        provenance); the config, the only part that gates writing, never changes."""
        self._session = f"{socket.gethostname()}:{os.getpid()}:{self._started}"
        if not self.manifest_path.exists():
            self.start(self.preset)
        provenance = {"preset": self.preset, "argv": self.argv, "git_commit": git_commit(),
                      "environment": environment(), "ended": None}
        with best_effort_lock(self.dir / f".{self.name}.manifest.lock"):
            manifest = read_manifest(self.manifest_path)
            manifest.update(provenance)
            manifest.setdefault("sessions", []).append(
                {"id": self._session, "argv": self.argv, "started": self._started})
            self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
