"""Closed-form learning-rate search task (paper, Section 4.2 and Appendix B).

One setting is a function, a dimension n, a gradient (with k and sampler) and, for cone
tangents, an angle. The loss of a run is the gap to the known minimum of the best value reached,
f_best - f_min >= 0, rather than f itself: Styblinski-Tang's minimum is negative
(-39.166 n), and both "within 5% of the best loss" and "twice the best run's loss" only make
sense on a scale that ends at zero. Runs stop early after `patience` steps without improvement
(100 in Appendix B, where the experiments themselves use 50).

A run that diverges (NaN or inf, overflow, or a last value above its start) has loss inf: its
best gap would otherwise be its start gap, a finite loss that can win when nothing else moves.

`refine_full_horizon` re-searches rates already in the table on the full step horizon, on a
log grid around each (backend "grid-full"); it is how the Rosenbrock rates were made.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fgexp import functions, paper
from fgexp.config import coerce
from fgexp.descent import DescentResult, descend, descend_many
from fgexp.directional import GradientSpec
from fgexp.lr.table import (check_outputs, check_tolerance, extract_best, log_search, lookup_lr,
                            merge_rows, result_row, setting_id, table_path)


@dataclass(frozen=True)
class ClosedFormSearch:
    functions: tuple[str, ...] = ("sphere",)     # names in fgexp.functions
    ns: tuple[int, ...] = (4,)                   # dimensions
    gradients: tuple[str, ...] = ("fg-mean:1",)  # "label:k", or "bp"
    sampler: str = "normal"                      # tangent sampler of every setting
    angles: tuple[float, ...] = ()               # cone angles in degrees (sampler "cone")
    max_steps: int | None = None                 # None: the function's paper limit
    patience: int = 100                          # steps without improvement before stopping
    interim: int = 100                           # interim losses per full run (pruning grain)
    mode: str = "forward"                        # forward-mode AD or simulated (V @ grad)
    dtype: str = "float32"                       # dtype of the iterates


PRESETS = {
    # `make lr-search TASK=closed_form`: one tiny setting (Sphere, n = 4, single tangent) with
    # a shortened run, so 100 evaluations on 2 ranks take well under a minute.
    "smoke": ClosedFormSearch(max_steps=300),
    # Figure 4: 3 functions x 11 dimensions x 8 gradients = 264 settings.
    "paper": ClosedFormSearch(functions=paper.FUNCTIONS, ns=paper.PAPER_NS,
                              gradients=paper.PAPER_GRADIENTS),
    # Figure 5 (right): Styblinski-Tang, n = 64, cone tangents at six angles.
    "cone": ClosedFormSearch(functions=("styblinski-tang",), ns=(64,),
                             gradients=paper.CONE_GRADIENTS, sampler="cone",
                             angles=paper.CONE_ANGLES),
}


class ClosedFormTask:
    setting_columns = ("function", "n", "angle_deg")

    def __init__(self, config: ClosedFormSearch, name: str = "closed_form"):
        self.name = name  # LR table name
        for function in config.functions:
            functions.get(function)
        for token in config.gradients:
            label, k = paper.parse_gradient(token)
            GradientSpec(label, k or 1, config.sampler, config.mode,
                         angle_deg=config.angles[0] if config.angles else None)
        if config.sampler == "cone" and not config.angles:
            raise ValueError("cone tangents need angles")
        if config.patience < 1 or config.interim < 1:
            raise ValueError("need patience >= 1 and interim >= 1")
        if config.max_steps is not None and config.max_steps < 1:
            raise ValueError(f"need max_steps >= 1, got {config.max_steps}")
        self.config = config

    def settings(self) -> list[dict]:
        cfg = self.config
        angles = cfg.angles if cfg.sampler == "cone" else (None,)
        out = []
        for function in cfg.functions:
            for n in cfg.ns:
                for angle in angles:
                    for token in cfg.gradients:
                        gradient, k = paper.parse_gradient(token)
                        out.append({"function": function, "n": n, "angle_deg": angle,
                                    "gradient": gradient, "k": k,
                                    "sampler": None if gradient == "bp" else cfg.sampler})
        return _deduplicate(out)

    def steps(self, setting: Mapping) -> int:
        return self.config.max_steps or functions.get(setting["function"]).max_steps

    def _trace_every(self, setting: Mapping) -> int:
        return max(1, math.ceil(self.steps(setting) / self.config.interim))

    def horizon(self, setting: Mapping) -> int:
        """Interim losses of a full run: the trace plus the final value."""
        return math.ceil(self.steps(setting) / self._trace_every(setting)) + 1

    def start(self, setting: Mapping) -> torch.Tensor:
        """x0 (n,) in the search dtype, on the GPU when there is one."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x0_n = functions.get(setting["function"]).start(int(setting["n"]))
        return x0_n.to(getattr(torch, self.config.dtype)).to(device)

    def spec(self, setting: Mapping) -> GradientSpec:
        k = setting.get("k")
        return GradientSpec(setting["gradient"], int(k) if k not in (None, "") else 1,
                            "normal" if setting["gradient"] == "bp" else setting["sampler"],
                            self.config.mode, angle_deg=_angle(setting.get("angle_deg")))

    def _descend(self, setting: Mapping, lrs: Sequence[float], seeds: Sequence[int],
                 trace: bool) -> DescentResult:
        return descend(functions.get(setting["function"]), self.start(setting),
                       self.spec(setting), list(lrs), list(seeds), self.steps(setting),
                       self.config.patience, self._trace_every(setting) if trace else None)

    def losses(self, setting: Mapping, result: DescentResult) -> torch.Tensor:
        """Best gap f_best - f_min >= 0 (L, S) in float64; inf where the run diverged."""
        function = functions.get(setting["function"])
        start_value = float(function(self.start(setting)))
        gap_lxs = _gap(setting, result.best_value)
        return torch.where(diverged(result, start_value), torch.inf, gap_lxs)

    def objective(self, setting: dict, lr: float, seed: int) -> Iterator[float]:
        """Best gap so far every few steps, then the best gap of the whole run (inf: diverged)."""
        result = self._descend(setting, [lr], [seed], trace=True)
        if result.trace is not None:
            yield from _gap(setting, result.trace[:, 0, 0]).tolist()
        yield float(self.losses(setting, result)[0, 0])

    def batched(self, setting: dict, lrs: Sequence[float], seeds: Sequence[int]) -> torch.Tensor:
        """Losses (L, S) of every rate and seed, all in one batched descent."""
        return self.losses(setting, self._descend(setting, lrs, seeds, trace=False))


def diverged(result: DescentResult, start_value: float) -> torch.Tensor:
    """(L, S) bool: NaN or inf reached, or the run ended above its start value."""
    final_lxs = result.final_value.double().cpu()
    reason_lxs = torch.tensor([[r == "diverged" for r in row] for row in result.stop_reason],
                              dtype=torch.bool).reshape(final_lxs.shape)
    return reason_lxs | ~torch.isfinite(final_lxs) | (final_lxs > start_value)


def _gap(setting: Mapping, values: torch.Tensor) -> torch.Tensor:
    """f - f_min >= 0 in float64 (float32 rounding can dip just below the minimum)."""
    f_min = functions.get(setting["function"]).minimum(int(setting["n"]))
    return (values.double().cpu() - f_min).clamp(min=0.0)


def _angle(value) -> float | None:
    return None if value in (None, "") else float(value)


def _deduplicate(settings: list[dict]) -> list[dict]:
    """bp ignores k and sampler, so several gradient entries may name the same setting."""
    seen, out = set(), []
    for s in settings:
        key = tuple(sorted((k, str(v)) for k, v in s.items()))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def closed_form(preset: str = "smoke", **overrides) -> ClosedFormTask:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for closed_form; allowed: {', '.join(PRESETS)}")
    # The experiments read closed_form.csv (paper and cone settings); a smoke search, with its
    # shortened runs, gets a table of its own so it never overwrites a paper rate.
    name = "closed_form" if preset in ("paper", "cone") else f"closed_form_{preset}"
    return ClosedFormTask(coerce(PRESETS[preset], overrides), name)


closed_form.presets = tuple(PRESETS)


# ---------------------------------------------------------------------------------------------
# Full-horizon refinement

@dataclass(frozen=True)
class FullHorizonConfig:
    below: float = 1.25               # decades under the current rate
    above: float = 0.25               # decades over it
    step: float = 0.25                # grid step in decades
    seeds: tuple[int, ...] = (0, 1)   # every rate runs with every seed
    tolerance: float = 0.0            # extraction (0: the rate of the best mean loss)

    def validate(self) -> "FullHorizonConfig":
        if not (self.step > 0 and self.below >= 0 and self.above >= 0):
            raise ValueError("need step > 0 and non-negative below/above")
        if not self.seeds:
            raise ValueError("the refinement needs at least one seed")
        check_tolerance(self.tolerance)
        return self

    def offsets(self) -> list[float]:
        count = int(round((self.below + self.above) / self.step)) + 1
        return [-self.below + i * self.step for i in range(count)]


def refine_full_horizon(task: ClosedFormTask, settings: Sequence[Mapping],
                        config: FullHorizonConfig, lr_dir: Path | str, search_command: str,
                        progress: bool = True, log_extra: Mapping | None = None
                        ) -> tuple[list[dict], list[str]]:
    """Re-search each setting's rate in the table on a log grid around it, full horizon.

    Every gradient of one (function, n, angle) and every rate and seed run in one batched
    descent. All current rates are looked up before any compute. Returns the rows and one
    message per setting whose rates all diverged (its old row stays).
    """
    config.validate()
    check_outputs(lr_dir, task.name, task.setting_columns)
    path = table_path(lr_dir, task.name)
    groups: dict[tuple, list[dict]] = {}
    for setting in settings:
        old_lr = lookup_lr(path, setting, search_command)
        key = (setting["function"], setting["n"], setting.get("angle_deg"))
        groups.setdefault(key, []).append({**setting, "old_lr": old_lr})
    rows, failed = [], []
    for (name, n, _), group in groups.items():
        function = functions.get(name)
        lrs_lxg = [[s["old_lr"] * 10 ** d for s in group] for d in config.offsets()]
        results = descend_many(function, task.start(group[0]), [task.spec(s) for s in group],
                               lrs_lxg, config.seeds, function.max_steps, task.config.patience,
                               progress=progress)
        done = []
        for g, (setting, result) in enumerate(zip(group, results)):
            lrs = [row[g] for row in lrs_lxg]
            losses = [v if math.isfinite(v) else math.inf
                      for v in task.losses(setting, result).mean(1).tolist()]
            if not any(map(math.isfinite, losses)):
                failed.append(f"every rate diverged for "
                              f"{setting_id(setting, task.setting_columns)} around "
                              f"{setting['old_lr']:.3g}; its row in {path} is kept")
                continue
            picked = extract_best(lrs, losses, config.tolerance)  # 10**log10(lr): may round
            i = min(range(len(lrs)), key=lambda j: abs(math.log10(lrs[j] / picked)))
            done.append(result_row(setting, task.setting_columns, lrs[i], losses[i],
                                   len(lrs) * len(config.seeds), "grid-full"))
            print(f"{name} n={n} {setting['gradient']}:{setting['k'] or ''} "
                  f"{setting['old_lr']:.3g} -> {lrs[i]:.3g} (loss {losses[i]:.4g})", flush=True)
        merge_rows(path, task.setting_columns, done)
        rows += done
    log_search(lr_dir, task.name, {"backend": "grid-full", "config": dataclasses.asdict(config),
                                   **(log_extra or {}), "rows": rows})
    return rows, failed
