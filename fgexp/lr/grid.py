"""The grid backend: a log-spaced grid of rates x seeds, one vectorized call per setting.

A rate's loss is the mean over seeds of the final loss; a rate with a diverged seed (the task
reports inf) counts as diverged and is never extracted. When every rate of a setting diverges,
the setting gets no row and the search reports it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fgexp.lr.registry import Task
from fgexp.lr.table import (check_outputs, check_tolerance, extract_best,
                            log_search, merge_rows, result_row, setting_id, table_path)


@dataclass(frozen=True)
class GridConfig:
    lo: float = -6.0                  # log10 of the smallest rate
    hi: float = 0.0                   # log10 of the largest rate
    points_per_decade: int = 4        # grid density on log10 scale
    refine: int = 0                   # extra rounds, each a finer grid around the current best
    refine_points: int = 9            # rates per refinement round, spanning +-1 previous step
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # every rate runs with every seed
    tolerance: float = 0.05           # extraction: "within 5% of the best loss"
    extend: int = 0                   # at most this many rates added one grid step beyond the
    #   edge of the grid that holds the lowest loss, while it does (before any refinement)

    def validate(self) -> "GridConfig":
        check_limits(self.lo, self.hi)
        if self.points_per_decade < 1 or self.refine < 0 or self.refine_points < 2:
            raise ValueError("need --points-per-decade >= 1, --refine >= 0, --refine-points >= 2")
        if self.extend < 0:
            raise ValueError(f"need extend >= 0, got {self.extend}")
        if not self.seeds:
            raise ValueError("the grid needs at least one seed")
        check_tolerance(self.tolerance)
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
    return torch.tensor([[last_value(task.objective(dict(setting), lr, s)) for s in seeds]
                         for lr in lrs], dtype=torch.float64)


def last_value(losses: Iterator[float]) -> float:
    """The last loss an objective yields (nan if none)."""
    value = math.nan
    for value in losses:
        pass
    return float(value)


def grid_evaluate(task: Task, setting: Mapping, config: GridConfig
                  ) -> tuple[list[float], list[float]]:
    """Every rate tried (grid, edge extensions, refinements) and its seed-mean loss, inf where
    it diverged."""
    lrs = log_grid(config.lo, config.hi, config.points_per_decade)
    step = (config.hi - config.lo) / (len(lrs) - 1)
    all_lrs, all_losses = [], []
    for round_ in range(config.refine + 1):
        losses_l = _mean_finite(grid_losses(task, setting, lrs, config.seeds))
        all_lrs += lrs
        all_losses += losses_l.tolist()
        if round_ == 0:
            _extend_edges(task, setting, config, step, all_lrs, all_losses)
        if round_ == config.refine or not any(map(math.isfinite, all_losses)):
            break  # nothing to refine around when every rate diverged
        center = math.log10(extract_best(all_lrs, all_losses, config.tolerance))
        lrs = [10 ** x for x in _linspace(center - step, center + step, config.refine_points)]
        step = 2 * step / (config.refine_points - 1)
    return all_lrs, all_losses


def _extend_edges(task: Task, setting: Mapping, config: GridConfig, step: float,
                  lrs: list[float], losses: list[float]) -> None:
    """While the lowest finite loss lies at the smallest or largest rate tried, try one grid
    step beyond it (at most config.extend times); appends to `lrs` and `losses` in place."""
    for _ in range(config.extend):
        finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
        if not finite:
            return
        best = min(finite, key=lambda i: losses[i])
        if lrs[best] == max(lrs):
            lr = lrs[best] * 10 ** step
        elif lrs[best] == min(lrs):
            lr = lrs[best] / 10 ** step
        else:
            return
        lrs.append(lr)
        losses.append(float(_mean_finite(grid_losses(task, setting, [lr], config.seeds))[0]))


def grid_search(task: Task, setting: Mapping, config: GridConfig) -> dict:
    """One setting's row: the extracted rate, its loss and the number of runs.

    Raises AllDiverged when no rate has a finite loss.
    """
    lrs, losses = grid_evaluate(task, setting, config)
    lr = extract_best(lrs, losses, config.tolerance)
    return result_row(setting, task.setting_columns, lr, losses[lrs.index(lr)],
                      len(lrs) * len(config.seeds), "grid")


def _mean_finite(losses_lxs: torch.Tensor) -> torch.Tensor:
    """Mean over seeds; a rate with any non-finite seed counts as diverged (inf)."""
    mean_l = losses_lxs.mean(dim=1)
    return torch.where(torch.isfinite(losses_lxs).all(dim=1), mean_l, torch.inf)


def _linspace(lo: float, hi: float, count: int) -> list[float]:
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def all_diverged_message(task: Task, setting: Mapping, lo: float, hi: float, table) -> str:
    return (f"every rate diverged for {setting_id(setting, task.setting_columns)} "
            f"(log10 lr in [{lo:g}, {hi:g}]); no rate written to {table}")


def run_grid(task: Task, settings: Sequence[Mapping], config: GridConfig, lr_dir: Path | str,
             progress: bool = True, log_extra: Mapping | None = None
             ) -> tuple[list[dict], list[str]]:
    """Search every setting on the grid, merging each row into the table as soon as it is done.

    The log line records every rate tried and its seed-mean loss (`losses`, inf: diverged).

    Returns the rows and one message per setting whose rates all diverged (no row for it).
    """
    from tqdm import tqdm
    config.validate()
    check_outputs(lr_dir, task.name, task.setting_columns)
    path = table_path(lr_dir, task.name)
    rows, failed, diverged, evaluated = [], [], {}, {}
    for setting in tqdm(settings, desc=f"grid {task.name}", unit="setting", disable=not progress):
        lrs, losses = grid_evaluate(task, setting, config)
        evaluated[setting_id(setting, task.setting_columns)] = [[lr, loss] for lr, loss
                                                                in zip(lrs, losses)]
        bad = [lr for lr, loss in zip(lrs, losses) if not math.isfinite(loss)]
        if bad:
            diverged[setting_id(setting, task.setting_columns)] = bad
        if len(bad) == len(lrs):
            failed.append(all_diverged_message(task, setting, config.lo, config.hi, path))
            continue
        lr = extract_best(lrs, losses, config.tolerance)
        row = result_row(setting, task.setting_columns, lr, losses[lrs.index(lr)],
                         len(lrs) * len(config.seeds), "grid")
        merge_rows(path, task.setting_columns, [row])
        rows.append(row)
    log_search(lr_dir, task.name, {"backend": "grid", "config": dataclasses.asdict(config),
                                   **(log_extra or {}), "rows": rows,
                                   "diverged_lrs": diverged, "losses": evaluated})
    return rows, failed

