"""Learning-rate search: tasks, the batched grid backend, best-rate extraction and LR tables.

A task (see `Task`) turns one learning rate into losses; a search evaluates many rates per
setting and writes one row per setting into `<lr_dir>/<task>.csv`:

    <setting columns>,gradient,k,sampler,lr,loss,evaluations,backend

Two backends fill the same table:
- grid (here): a log-spaced grid of rates x seeds in one vectorized call of `task.batched`;
- propulate (fgexp.lr_propulate): the paper's asynchronous evolutionary search over MPI ranks.
Neither this module nor importing it loads MPI or Propulate.

Extraction (paper, Appendix B): among evaluations within 5% of the best loss, the rate closest
to their mean. Rates are compared on log10 scale (mean of log10 lr, nearest in log10), because
the search itself lives on log10(lr) and rates spread over orders of magnitude.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from fgexp.directional import GRADIENTS
from fgexp.results import (ResultsError, atomic_write_text, file_lock, git_commit,
                           read_csv_rows, rows_to_csv)

RATE_COLUMNS = ("gradient", "k", "sampler")
RESULT_COLUMNS = ("lr", "loss", "evaluations", "backend")
BACKENDS = ("grid", "propulate")

# Task name -> "module:factory"; factories take (preset, **overrides). Imported lazily so that a
# closed-form search never imports torchvision, and a network search finds its own module.
TASKS = {
    "closed_form": "fgexp.lr_tasks:closed_form",
    "fc_mnist": "fgexp.nn.lr_tasks:fc_mnist",
    "resnet_vit": "fgexp.nn.lr_tasks:resnet_vit",
}


class MissingLearningRate(ValueError):
    """No learning rate for a setting; the message names the table and the search command."""


@runtime_checkable
class Task(Protocol):
    name: str                          # LR table name: <lr_dir>/<name>.csv
    setting_columns: tuple[str, ...]   # columns that identify a setting besides gradient,k,sampler

    def settings(self) -> list[dict]:
        """Each: the setting columns plus "gradient", "k" (None for bp) and "sampler"."""

    def objective(self, setting: dict, lr: float, seed: int) -> Iterator[float]:
        """Interim losses of one run (per step block or epoch); the last one is the final loss."""


# ---------------------------------------------------------------------------------------------
# Task registry and setting selection

def split_task_name(name: str, preset: str | None = None) -> tuple[str, str]:
    """'closed_form:paper' -> ('closed_form', 'paper'); an explicit preset wins over the default."""
    base, _, suffix = name.partition(":")
    if suffix and preset and suffix != preset:
        raise ValueError(f"task {name!r} names preset {suffix!r} but preset {preset!r} was asked")
    return base, (suffix or preset or "smoke")


def get_task(name: str, preset: str | None = None, **overrides) -> Task:
    """The registered task `name` ('name:preset' also works) with its preset and overrides.

    The preset defaults to the one in the name, else "smoke".
    """
    base, preset = split_task_name(name, preset)
    if base not in TASKS:
        raise ValueError(f"unknown task {base!r}; allowed: {', '.join(TASKS)}")
    module_name, factory_name = TASKS[base].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"task {base!r} is not available yet ({module_name} is missing)") \
                from None
        raise
    return getattr(module, factory_name)(preset, **overrides)


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


def parse_selection(items: Sequence[str]) -> dict[str, set[str]]:
    """['function=sphere,rosenbrock', 'n=4'] -> {'function': {'sphere', 'rosenbrock'}, 'n': {'4'}}."""
    selection: dict[str, set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE[,VALUE] in a selection, got {item!r}")
        selection.setdefault(key.strip(), set()).update(
            canonical(v) for v in values.split(","))
    return selection


def select_settings(task: Task, selection: Mapping[str, set[str]]) -> list[dict]:
    """The task's settings that match every key of `selection`; bad keys or names are errors."""
    known = (*task.setting_columns, *RATE_COLUMNS)
    unknown = set(selection) - set(known)
    if unknown:
        raise ValueError(f"cannot select on {', '.join(sorted(unknown))}; "
                         f"task {task.name} has columns {', '.join(known)}")
    bad = selection.get("gradient", set()) - set(GRADIENTS)
    if bad:
        raise ValueError(f"unknown gradient {', '.join(sorted(bad))}; allowed: {', '.join(GRADIENTS)}")
    chosen = [s for s in task.settings()
              if all(canonical(s.get(key)) in values for key, values in selection.items())]
    if not chosen:
        shown = " ".join(f"{k}={','.join(sorted(v))}" for k, v in selection.items())
        raise ValueError(f"no setting of task {task.name} matches {shown}; "
                         "list them with --list-settings")
    return chosen


# ---------------------------------------------------------------------------------------------
# Extraction

def extract_best(lrs: Sequence[float], losses: Sequence[float], tolerance: float = 0.05) -> float:
    """Among rates whose loss is within `tolerance` of the best, the one closest to their mean.

    Mean and distance are taken in log10(lr). "Within 5%" means loss <= best + 0.05 |best|, so
    it needs losses whose scale is meaningful (non-negative gaps to the optimum, not raw values
    that cross zero). Non-finite losses are ignored.
    """
    pairs = [(float(lr), float(loss)) for lr, loss in zip(lrs, losses, strict=True)
             if lr > 0 and math.isfinite(loss)]
    if not pairs:
        raise ValueError("no evaluation with a finite loss to extract a learning rate from")
    best = min(loss for _, loss in pairs)
    near = [math.log10(lr) for lr, loss in pairs if loss <= best + tolerance * abs(best)]
    center = sum(near) / len(near)
    return 10 ** min(near, key=lambda x: (abs(x - center), x))


# ---------------------------------------------------------------------------------------------
# LR tables

def table_columns(setting_columns: Sequence[str]) -> list[str]:
    return [*setting_columns, *RATE_COLUMNS, *RESULT_COLUMNS]


def table_path(lr_dir: Path | str, task_name: str) -> Path:
    return Path(lr_dir) / f"{task_name}.csv"


def check_writable_dir(path: Path | str, what: str) -> None:
    """Refuse a directory we could not create or write into (no side effects)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path} cannot be made: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable")


def merge_rows(path: Path | str, setting_columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    """Write `rows` into the table at `path`, replacing rows of the same setting, keeping others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = table_columns(setting_columns)
    with file_lock(path.with_name(f".{path.name}.lock")):  # one merge at a time
        old = read_csv_rows(path, columns) if path.exists() else []
        new_keys = {setting_key(r, setting_columns) for r in rows}
        kept = [r for r in old if setting_key(r, setting_columns) not in new_keys]
        keys = (*setting_columns, *RATE_COLUMNS)
        rows = [{**r, **{c: canonical(r.get(c)) for c in keys}} for r in rows]
        atomic_write_text(path, rows_to_csv([*kept, *rows], columns))


def log_search(lr_dir: Path | str, task_name: str, record: Mapping) -> None:
    """Append one JSON line of provenance (command, commit, config) to <task>.log.jsonl."""
    entry = {"argv": sys.argv, "git_commit": git_commit(), **record}
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
    rows = read_csv_rows(table)
    columns = [c for c in (rows[0].keys() if rows else []) if c not in RESULT_COLUMNS]
    # A column the setting does not mention counts as empty (e.g. no cone angle).
    if canonical(setting.get("gradient")) == "bp":  # one exact gradient, whatever k and sampler
        columns = [c for c in columns if c not in ("k", "sampler")]
    want = tuple(canonical(setting.get(c)) for c in columns)
    for row in rows:
        if tuple(canonical(row[c]) for c in columns) == want:
            try:
                return float(row["lr"])
            except ValueError:
                raise ResultsError(f"{table}: malformed lr {row['lr']!r} for {described}") from None
    raise MissingLearningRate(f"no learning rate for {described} in {table}; "
                              f"make it with: {search_command}")


# ---------------------------------------------------------------------------------------------
# Grid backend

@dataclass(frozen=True)
class GridConfig:
    lo: float = -6.0                  # log10 of the smallest rate
    hi: float = 0.0                   # log10 of the largest rate
    points_per_decade: int = 4        # grid density on log10 scale
    refine: int = 0                   # extra rounds, each a finer grid around the current best
    refine_points: int = 9            # rates per refinement round, spanning +-1 previous step
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # every rate runs with every seed
    tolerance: float = 0.05           # extraction: "within 5% of the best loss"

    def validate(self) -> "GridConfig":
        check_limits(self.lo, self.hi)
        if self.points_per_decade < 1 or self.refine < 0 or self.refine_points < 2:
            raise ValueError("need --points-per-decade >= 1, --refine >= 0, --refine-points >= 2")
        if not self.seeds:
            raise ValueError("the grid needs at least one seed")
        return self


def check_limits(lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"log10(lr) limits must satisfy lo < hi, got lo={lo}, hi={hi}")


def log_grid(lo: float, hi: float, points_per_decade: int) -> list[float]:
    """Rates 10^lo .. 10^hi, evenly spaced in log10, both ends included."""
    count = max(2, round((hi - lo) * points_per_decade) + 1)
    return [10 ** (lo + (hi - lo) * i / (count - 1)) for i in range(count)]


def grid_losses(task: Task, setting: Mapping, lrs: Sequence[float], seeds: Sequence[int]):
    """Losses (L, S) of every rate and seed: one `batched` call, or the objectives one by one."""
    batched = getattr(task, "batched", None)
    if batched is not None:
        return torch.as_tensor(batched(dict(setting), list(lrs), list(seeds)), dtype=torch.float64)
    return torch.tensor([[_last(task.objective(dict(setting), lr, s)) for s in seeds]
                         for lr in lrs], dtype=torch.float64)


def _last(losses: Iterator[float]) -> float:
    value = math.nan
    for value in losses:
        pass
    return float(value)


def grid_search(task: Task, setting: Mapping, config: GridConfig) -> dict:
    """One setting's row: a log grid (plus refinements); loss = mean over seeds of the final loss."""
    lrs = log_grid(config.lo, config.hi, config.points_per_decade)
    step = (config.hi - config.lo) / (len(lrs) - 1)
    all_lrs, all_losses = [], []
    for round_ in range(config.refine + 1):
        losses_l = _mean_finite(grid_losses(task, setting, lrs, config.seeds))
        all_lrs += lrs
        all_losses += losses_l.tolist()
        if round_ == config.refine:
            break
        center = math.log10(extract_best(all_lrs, all_losses, config.tolerance))
        lrs = [10 ** x for x in _linspace(center - step, center + step, config.refine_points)]
        step = 2 * step / (config.refine_points - 1)
    lr = extract_best(all_lrs, all_losses, config.tolerance)
    loss = all_losses[all_lrs.index(lr)]
    return result_row(setting, task.setting_columns, lr, loss,
                      len(all_lrs) * len(config.seeds), "grid")


def _mean_finite(losses_lxs: torch.Tensor) -> torch.Tensor:
    """Mean over seeds; a rate with any non-finite seed counts as diverged (inf)."""
    mean_l = losses_lxs.mean(dim=1)
    return torch.where(torch.isfinite(losses_lxs).all(dim=1), mean_l, torch.inf)


def _linspace(lo: float, hi: float, count: int) -> list[float]:
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def run_grid(task: Task, settings: Sequence[Mapping], config: GridConfig, lr_dir: Path | str,
             progress: bool = True) -> list[dict]:
    """Search every setting on the grid, merging each row into the table as soon as it is done."""
    from tqdm import tqdm
    config.validate()
    check_writable_dir(lr_dir, "LR table directory")
    path = table_path(lr_dir, task.name)
    rows = []
    for setting in tqdm(settings, desc=f"grid {task.name}", unit="setting", disable=not progress):
        row = grid_search(task, setting, config)
        merge_rows(path, task.setting_columns, [row])
        rows.append(row)
    log_search(lr_dir, task.name, {"backend": "grid", "config": dataclasses.asdict(config),
                                   "rows": rows})
    return rows
