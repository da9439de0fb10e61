"""LR-search tasks: what a task is, the registry of tasks, and selecting their settings.

A task turns one learning rate into losses. Its module is imported only when the task is asked
for, so a closed-form search never imports torchvision and importing fgexp.lr loads no MPI.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from fgexp.lr.table import RATE_COLUMNS, canonical
from fgexp.paper import GRADIENTS

# Task name -> "module:factory"; factories take (preset, **overrides).
TASKS = {
    "closed_form": "fgexp.lr.closed_form:closed_form",
    "fc_mnist": "fgexp.lr.networks:fc_mnist",
    "resnet_vit": "fgexp.lr.networks:resnet_vit",
}


@runtime_checkable
class Task(Protocol):
    name: str                          # LR table name: <lr_dir>/<name>.csv
    setting_columns: tuple[str, ...]   # columns that identify a setting besides gradient,k,sampler

    def settings(self) -> list[dict]:
        """Each: the setting columns plus "gradient", "k" (None for bp) and "sampler"."""

    def objective(self, setting: dict, lr: float, seed: int) -> Iterator[float]:
        """Interim losses of one run (per step block or epoch); the last one is the final loss,
        inf when the run diverged."""


def split_task_name(name: str, preset: str | None = None) -> tuple[str, str]:
    """'closed_form:paper' -> ('closed_form', 'paper'); an explicit preset wins over the default."""
    base, _, suffix = name.partition(":")
    if suffix and preset and suffix != preset:
        raise ValueError(f"task {name!r} names preset {suffix!r} but preset {preset!r} was asked")
    return base, (suffix or preset or "smoke")


def task_factory(base: str):
    if base not in TASKS:
        raise ValueError(f"unknown task {base!r}; allowed: {', '.join(TASKS)}")
    module_name, factory_name = TASKS[base].split(":")
    return getattr(importlib.import_module(module_name), factory_name)


def get_task(name: str, preset: str | None = None, **overrides) -> Task:
    """The registered task `name` ('name:preset' also works) with its preset and overrides.

    The preset defaults to the one in the name, else "smoke"; overrides are `--set` strings
    or values of the preset's fields.
    """
    base, preset = split_task_name(name, preset)
    return task_factory(base)(preset, **overrides)


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


def matching(task: Task, selection: Mapping[str, set[str]]) -> list[dict]:
    """The task's settings that match every key of `selection`; bad keys or names are errors."""
    known = (*task.setting_columns, *RATE_COLUMNS)
    unknown = set(selection) - set(known)
    if unknown:
        raise ValueError(f"cannot select on {', '.join(sorted(unknown))}; "
                         f"task {task.name} has columns {', '.join(known)}")
    bad = selection.get("gradient", set()) - set(GRADIENTS)
    if bad:
        raise ValueError(f"unknown gradient {', '.join(sorted(bad))}; allowed: {', '.join(GRADIENTS)}")
    return [s for s in task.settings()
            if all(canonical(s.get(key)) in values for key, values in selection.items())]


def select_settings(task: Task, selection: Mapping[str, set[str]]) -> list[dict]:
    """As `matching`, but an empty result is an error."""
    chosen = matching(task, selection)
    if not chosen:
        shown = " ".join(f"{k}={','.join(sorted(v))}" for k, v in selection.items())
        raise ValueError(f"no setting of task {task.name} matches {shown}; "
                         "list them with --list-settings")
    return chosen


def settings_as_args(task: Task, settings: Sequence[Mapping]) -> list[str]:
    """One line of --select flags per setting (what slurm/submit_lr_search.sh submits)."""
    columns = (*task.setting_columns, *RATE_COLUMNS)
    return [" ".join(f"--select {c}={canonical(s.get(c))}" for c in columns) for s in settings]
