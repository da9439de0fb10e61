"""Gradient descent on closed-form functions (paper Sections 4.2 and 4.3; Figures 4 and 5b).

Every setting (function, n, gradient, k, angle) runs plain gradient descent with its learning
rate from the LR table, for each seed, and writes one CSV row per run: the best value reached,
the final value, the steps taken and why the run stopped.

  python experiments/closed_form.py --preset paper --out results          # Figure 4, Table C
  python experiments/closed_form.py --preset paper --cone --out results   # Figure 5b
  python experiments/closed_form.py --functions sphere --n 2^0..2^6 --gradients bp,frog:4

Both modes write DIR/closed_form.csv (sampler normal or cone); the config holds both grids, so
one directory takes both runs. With --cone, --functions, --n, --gradients and --angles set the
cone grid. One cell per function and n (and angle for cones) runs every gradient and seed in
one batch; a rerun skips finished cells. Directional derivatives come from forward-mode AD
(--mode forward, the default) or from V @ grad after backprop (--mode simulated).
Learning rates come from --lr-table (made by experiments/lr_search.py --backend grid ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import _common

NAME = "closed_form"
COLUMNS = ("function", "n", "gradient", "k", "sampler", "angle_deg", "seed", "lr", "best_value",
           "final_value", "steps", "stop_reason", "mode")
KEY_COLUMNS = ("function", "n", "gradient", "k", "sampler", "angle_deg", "seed")
FUNCTIONS = ("sphere", "rosenbrock", "styblinski-tang")
PAPER_GRADIENTS = ("bp", "fg-mean:1", "fg-mean:2", "fg-mean:4", "fg-mean:16",
                   "frog:2", "frog:4", "frog:16")
CONE_GRADIENTS = ("fg-mean:16", "fg-mean:64", "frog:16", "frog:64")
ANGLES = (15.0, 30.0, 45.0, 60.0, 75.0, 90.0)


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


PRESETS = {
    "paper": ClosedFormConfig(
        functions=FUNCTIONS, n=tuple(2 ** e for e in range(11)), gradients=PAPER_GRADIENTS,
        cone_functions=("styblinski-tang",), cone_n=(64,), cone_gradients=CONE_GRADIENTS,
        cone_angles=ANGLES, seeds=(0, 1, 2, 3, 4)),
    # The paper's settings shrunk: few dimensions and gradients, 2 seeds, 200 steps.
    "smoke": ClosedFormConfig(
        functions=FUNCTIONS, n=(2, 16), gradients=("bp", "fg-mean:1", "fg-mean:4", "frog:4"),
        cone_functions=("styblinski-tang",), cone_n=(64,), cone_gradients=("fg-mean:16",
                                                                           "frog:16"),
        cone_angles=(45.0, 90.0), seeds=(0, 1), max_steps=200),
}


def parse(argv):
    parser = _common.make_parser(__doc__, PRESETS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--cone", action="store_true",
                        help="run the cone grid (Section 4.3, Figure 5b) instead of Figure 4's")
    parser.add_argument("--functions", type=_common.str_list,
                        help=f"comma-separated subset of {','.join(FUNCTIONS)}")
    parser.add_argument("--n", type=_common.int_list, help="dimensions, e.g. 2^0..2^10")
    parser.add_argument("--gradients", type=_common.str_list,
                        help="e.g. bp,fg-mean:1,frog:16 (label:k; fg-mean:1 is the single tangent)")
    parser.add_argument("--k", type=_common.int_list,
                        help="replace the k of every forward gradient, e.g. 2,4 (bp stays)")
    parser.add_argument("--angles", type=_common.float_list,
                        help="cone angles in degrees (with --cone), e.g. 15,30,45")
    parser.add_argument("--seeds", type=_common.int_list, help="tangent seeds, e.g. 0..4")
    parser.add_argument("--max-steps", type=int, help="step limit (default: the paper's)")
    parser.add_argument("--patience", type=int, help="steps without improvement before stopping")
    parser.add_argument("--mode", choices=("forward", "simulated"),
                        help="forward-mode AD (default) or V @ grad after backprop")
    parser.add_argument("--lr-table", help="LR table CSV (default results/lrs/closed_form.csv)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1[,V2]",
                        help="run only the cells whose function, n or angle is listed (repeatable;"
                        " not part of the config: later runs add the other cells to --out)")
    return parser.parse_args(argv)


def parse_gradient(text: str) -> tuple[str, int | None]:
    """'frog:4' -> ('frog', 4); 'bp' -> ('bp', None); 'fg-mean' -> ('fg-mean', 1)."""
    from fgexp.directional import GRADIENTS
    label, _, k = text.partition(":")
    if label not in GRADIENTS:
        raise _common.UsageError(f"unknown gradient {label!r}; allowed: {', '.join(GRADIENTS)}")
    if label == "bp":
        return label, None
    try:
        k_value = int(k or 1)
    except ValueError:
        raise _common.UsageError(f"expected a gradient like 'frog:4', got {text!r}") from None
    if k_value < 1:
        raise _common.UsageError(f"k must be >= 1, got {text!r}")
    return label, k_value


def _with_k(gradients: tuple[str, ...], ks: list[int]) -> tuple[str, ...]:
    out = []
    for text in gradients:
        label, _ = parse_gradient(text)
        out += ["bp"] if label == "bp" else [f"{label}:{k}" for k in ks]
    return tuple(dict.fromkeys(out))


def resolve(args) -> ClosedFormConfig:
    """Preset plus flags; with --cone, --functions/--n/--gradients/--angles set the cone grid."""
    config = PRESETS[args.preset]
    prefix = "cone_" if args.cone else ""
    given = _common.grid_overrides(args, ("functions", "n", "gradients"),
                                   ("max_steps", "patience", "mode", "lr_table"))
    if args.k is not None:
        gradients = given.get(f"{prefix}gradients", getattr(config, f"{prefix}gradients"))
        given[f"{prefix}gradients"] = _with_k(gradients, args.k)
    if args.seeds is not None:
        given["seeds"] = tuple(args.seeds)
    return dataclasses.replace(config, **given)


def grid(config: ClosedFormConfig, cone: bool):
    """(functions, ns, gradients, angles, sampler) of the chosen grid."""
    if cone:
        return (config.cone_functions, config.cone_n, config.cone_gradients, config.cone_angles,
                "cone")
    return config.functions, config.n, config.gradients, (None,), "normal"


def validate(config: ClosedFormConfig, cone: bool) -> None:
    from fgexp import functions
    names, ns, gradients, angles, _ = grid(config, cone)
    if not names or not ns or not gradients or not config.seeds:
        raise _common.UsageError("need at least one function, n, gradient and seed")
    for name in names:
        functions.get(name)
    if min(ns) < 1:
        raise _common.UsageError(f"every n must be >= 1, got {list(ns)}")
    parsed = [parse_gradient(g) for g in gradients]
    if len(set(parsed)) != len(parsed):
        raise _common.UsageError(f"repeated gradient in {','.join(gradients)}")
    if cone:
        if any(label == "bp" for label, _ in parsed):
            raise _common.UsageError("bp has no tangents: leave it out of the cone grid")
        if not angles or not all(0 < a <= 90 for a in angles):
            raise _common.UsageError(f"cone angles must lie in (0, 90], got {list(angles)}")
        if min(ns) < 2:
            raise _common.UsageError("the cone sampler needs n >= 2")
    if config.max_steps is not None and config.max_steps < 1:
        raise _common.UsageError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.patience < 1:
        raise _common.UsageError(f"--patience must be >= 1, got {config.patience}")
    if config.dtype not in ("float32", "float64"):
        raise _common.UsageError(f"dtype must be float32 or float64, got {config.dtype!r}")


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


def cells(config: ClosedFormConfig, cone: bool) -> list[tuple[str, dict]]:
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


def select_cells(all_cells, only: list[str]):
    """The cells matching every --only KEY=V1,V2 (keys: function, n, angle)."""
    chosen = list(all_cells)
    for item in only:
        key, sep, values = item.partition("=")
        if not sep or key not in ("function", "n", "angle"):
            raise _common.UsageError(f"expected --only function=..., n=... or angle=..., "
                                     f"got {item!r}")
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        chosen = [(cid, cell) for cid, cell in chosen if _text(cell[key]) in wanted]
    if not chosen:
        raise _common.UsageError(f"no cell matches {' '.join(only)}")
    return chosen


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def lookup_rates(config: ClosedFormConfig, cone: bool, todo) -> None:
    """Attach every setting's learning rate (all before any compute; a missing one is an error)."""
    from fgexp.lr_search import lookup_lr
    for _, cell in todo:
        for setting in cell["settings"]:
            setting["lr"] = lookup_lr(config.lr_table, setting, search_command(setting, cone))


def run_cell(config: ClosedFormConfig, cell: dict, progress: bool) -> list[dict]:
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


@_common.cli
def main(argv=None):
    args = parse(argv)
    config = resolve(args)
    validate(config, args.cone)
    _common.setup_torch(args.threads)
    run = _common.run_dir(args, NAME, config, COLUMNS, KEY_COLUMNS, argv)
    all_cells = select_cells(cells(config, args.cone), args.only)
    run.check()
    done = run.done()
    todo = [(cid, cell) for cid, cell in all_cells if cid not in done]
    lookup_rates(config, args.cone, todo)
    run.start(args.preset)
    from tqdm import tqdm
    start = time.perf_counter()
    bar = tqdm(todo, desc=NAME, disable=args.no_progress, unit="cell")
    for cell_id, cell in bar:
        bar.set_postfix_str(cell_id)
        run.write_cell(cell_id, run_cell(config, cell, progress=not args.no_progress))
    run.finish()
    print(f"{NAME}: {len(todo)} cells computed, {len(all_cells) - len(todo)} already done, "
          f"{time.perf_counter() - start:.1f} s -> {run.csv_path}")


if __name__ == "__main__":
    import warnings
    # Forward-mode AD of some torch ops triggers this deprecation notice; it says nothing about us.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    sys.exit(main())
