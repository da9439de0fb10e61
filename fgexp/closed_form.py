"""Gradient descent on closed-form functions as an experiment (paper Sections 4.2 and 4.3).

One config holds two grids, Figure 4's (Gaussian tangents) and Figure 5b's (cone tangents). A
cell is one (function, n) of a grid, and one angle for cones: all its gradients and seeds run
in one batched descent (fgexp.descent), each with its rate from the LR table, and give one row
per run.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from fgexp.config import coerce, grid_fields
from fgexp.directional import MODES
from fgexp.paper import (CONE_ANGLES, CONE_GRADIENTS, FUNCTIONS, PAPER_GRADIENTS, PAPER_NS,
                         parse_gradient, with_k)

COLUMNS = ("function", "n", "gradient", "k", "sampler", "angle_deg", "seed", "lr", "best_value",
           "final_value", "steps", "stop_reason", "mode")
KEY_COLUMNS = ("function", "n", "gradient", "k", "sampler", "angle_deg", "seed")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class ClosedFormConfig:
    functions: tuple[str, ...]        # Figure 4 functions (names in fgexp.functions)
    n: tuple[int, ...]                # Figure 4 dimensions
    gradients: tuple[str, ...]        # "bp" or "label:k" (fg-mean:1 is the single tangent)
    cone_functions: tuple[str, ...]   # Figure 5b functions
    cone_n: tuple[int, ...]           # Figure 5b dimensions
    cone_gradients: tuple[str, ...]   # Figure 5b gradients, all with cone tangents
    cone_angles: tuple[float, ...]    # degrees between every further tangent and the first
    seeds: tuple[int, ...]            # tangent seeds; the start point is fixed
    max_steps: int | None = None      # None: the paper's limit per function (1000 or 25000)
    patience: int = 50                # steps without improvement of the best value
    mode: str = "forward"             # forward-mode AD or simulated (V @ grad)
    dtype: str = "float32"            # dtype of the iterates
    lr_table: str = "results/lrs/closed_form.csv"  # learning rates per setting
    lr_rule: str | None = None  # None: every rate from lr_table; a rule of fgexp.lr.rules:
    #   forward-gradient rates predicted from bp's rate in lr_table (docs/lr_rules.md)


PRESETS = {
    "paper": ClosedFormConfig(
        functions=FUNCTIONS, n=PAPER_NS, gradients=PAPER_GRADIENTS,
        cone_functions=("styblinski-tang",), cone_n=(64,), cone_gradients=CONE_GRADIENTS,
        cone_angles=CONE_ANGLES, seeds=(0, 1, 2, 3, 4)),
    # The paper's settings shrunk: few dimensions and gradients, 2 seeds, 200 steps.
    "smoke": ClosedFormConfig(
        functions=FUNCTIONS, n=(2, 16), gradients=("bp", "fg-mean:1", "fg-mean:4", "frog:4"),
        cone_functions=("styblinski-tang",), cone_n=(64,), cone_gradients=("fg-mean:16",
                                                                           "frog:16"),
        cone_angles=(45.0, 90.0), seeds=(0, 1), max_steps=200),
}
GRID = ("functions", "n", "gradients", "angles")  # names that pick the normal or the cone grid


def resolve(preset: ClosedFormConfig, overrides: Mapping[str, object],
            cone: bool = False) -> ClosedFormConfig:
    """The preset with overrides named like the fields, plus angles and k; with `cone`,
    functions, n, gradients and angles set the cone grid. Gradients and k follow
    fgexp.paper.with_k. Lists become tuples, strings are read."""
    overrides = dict(overrides)
    tokens, ks = overrides.pop("gradients", None), overrides.pop("k", None)
    if tokens is not None or ks is not None:
        default = preset.cone_gradients if cone else preset.gradients
        overrides["gradients"] = with_k(tokens, ks, default)
    fields = grid_fields(overrides, GRID, cone)
    return coerce(preset, {name: tuple(v) if isinstance(v, list) else v
                           for name, v in fields.items()})


def grid(config: ClosedFormConfig, cone: bool):
    """(functions, ns, gradients, angles, sampler) of the chosen grid."""
    if cone:
        return (config.cone_functions, config.cone_n, config.cone_gradients, config.cone_angles,
                "cone")
    return config.functions, config.n, config.gradients, (None,), "normal"


def validate(config: ClosedFormConfig, cone: bool = False) -> None:
    """Every bad setting of the chosen grid as one ValueError, before any compute."""
    from fgexp import functions
    names, ns, gradients, angles, _ = grid(config, cone)
    if not names or not ns or not gradients or not config.seeds:
        raise ValueError("need at least one function, n, gradient and seed")
    for name in names:
        functions.get(name)
    if min(ns) < 1:
        raise ValueError(f"every n must be >= 1, got {list(ns)}")
    if min(config.seeds) < 0:
        raise ValueError(f"every seed must be >= 0, got {list(config.seeds)}")
    parsed = [parse_gradient(g) for g in gradients]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"repeated gradient in {','.join(gradients)}")
    if cone:
        if any(label == "bp" for label, _ in parsed):
            raise ValueError("bp has no tangents: leave it out of the cone grid")
        if not angles or not all(0 < a <= 90 for a in angles):
            raise ValueError(f"cone angles must lie in (0, 90], got {list(angles)}")
        if min(ns) < 2:
            raise ValueError("the cone sampler needs n >= 2")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.patience < 1:
        raise ValueError(f"--patience must be >= 1, got {config.patience}")
    if config.mode not in MODES:
        raise ValueError(f"mode must be {' or '.join(MODES)}, got {config.mode!r}")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be {' or '.join(DTYPES)}, got {config.dtype!r}")
    check_rule(config.lr_rule)


def settings_of(config: ClosedFormConfig, cone: bool, function: str, n: int, angle):
    """One dict per gradient of a cell, in the LR table's columns."""
    _, _, gradients, _, sampler = grid(config, cone)
    out = []
    for text in gradients:
        label, k = parse_gradient(text)
        out.append({"function": function, "n": n, "angle_deg": angle, "gradient": label,
                    "k": k, "sampler": None if label == "bp" else sampler})
    return out


def search_command(setting: dict, cone: bool) -> str:
    """The grid search that makes the missing rate of `setting`."""
    task = "closed_form:cone" if cone else "closed_form:paper"
    selects = " ".join(f"--select {c}={'' if setting[c] is None else setting[c]}"
                       for c in ("function", "n", "angle_deg", "gradient", "k")
                       if setting[c] is not None)
    return (f"python experiments/lr_search.py --backend grid --task {task} {selects} "
            "--points-per-decade 4 --refine 1 --refine-points 5 --seeds 0,1")


def cells(config: ClosedFormConfig, cone: bool = False) -> list[tuple[str, dict]]:
    """(cell id, cell): one cell per function and n, and per angle for cones."""
    names, ns, _, angles, sampler = grid(config, cone)
    out = []
    for function in names:
        for n in ns:
            for angle in angles:
                cell_id = f"{sampler}/{function}/n={n}" + ("" if angle is None
                                                           else f"/angle={angle:g}")
                out.append((cell_id, dict(function=function, n=n, angle=angle,
                                          settings=settings_of(config, cone, function, n, angle))))
    return out


def select_cells(all_cells, only: Sequence[str]):
    """The cells matching every KEY=V1,V2 of `only` (keys: function, n, angle)."""
    chosen = list(all_cells)
    for item in only:
        key, sep, values = item.partition("=")
        if not sep or key not in ("function", "n", "angle"):
            raise ValueError(f"expected --only function=..., n=... or angle=..., got {item!r}")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        chosen = [(cid, cell) for cid, cell in chosen if _text(cell[key]) in wanted]
    if not chosen:
        raise ValueError(f"no cell matches {' '.join(only)}")
    return chosen


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def lookup_rates(config: ClosedFormConfig, cone: bool, todo) -> None:
    """Attach every setting's learning rate (all before any compute; a missing one is an error)."""
    from fgexp.lr.table import lookup_lr
    for _, cell in todo:
        for setting in cell["settings"]:
            if config.lr_rule is None:
                setting["lr"] = lookup_lr(config.lr_table, setting, search_command(setting, cone))
                continue
            from fgexp.lr.rules import predict
            # bp of the same function and n (a cone setting takes the normal grid's bp)
            bp = {**setting, "gradient": "bp", "k": None, "sampler": None, "angle_deg": None}
            setting["lr"] = predict(setting, lookup_lr(config.lr_table, bp,
                                                       search_command(bp, False)),
                                    config.lr_rule)


def run_cell(config: ClosedFormConfig, cell: dict, progress: bool = False) -> list[dict]:
    """All gradients and seeds of one (function, n, angle) in one batched descent."""
    import torch

    from fgexp import functions
    from fgexp.descent import descend_many
    from fgexp.directional import GradientSpec
    function = functions.get(cell["function"])
    n, settings = cell["n"], cell["settings"]
    specs = [GradientSpec(s["gradient"], s["k"] or 1, s["sampler"] or "normal", config.mode,
                          angle_deg=s["angle_deg"]) for s in settings]
    x0_n = function.start(n).to(getattr(torch, config.dtype))
    lrs_1xg = [[s["lr"] for s in settings]]
    results = descend_many(function, x0_n, specs, lrs_1xg, config.seeds,
                           config.max_steps or function.max_steps, config.patience,
                           progress=progress)
    rows = []
    for setting, result in zip(settings, results):
        for j, seed in enumerate(config.seeds):
            rows.append({
                "function": setting["function"], "n": n, "gradient": setting["gradient"],
                "k": setting["k"], "sampler": setting["sampler"], "angle_deg": setting["angle_deg"],
                "seed": seed, "lr": setting["lr"],
                "best_value": float(result.best_value[0, j]),
                "final_value": float(result.final_value[0, j]),
                "steps": int(result.steps[0, j]), "stop_reason": result.stop_reason[0][j],
                "mode": config.mode})
    return rows


def check_rule(rule: str | None) -> None:
    """A ValueError naming the allowed rules for an unknown --lr-rule."""
    from fgexp.lr.rules import RULES
    if rule is not None and rule not in RULES:
        raise ValueError(f"unknown --lr-rule {rule!r}; allowed: {', '.join(RULES)}")
