"""Learning-rate search: one best rate per setting into <lr-dir>/<task>.csv.

Backends:
  grid       a log-spaced grid of rates x seeds, one vectorized run per setting (laptop-friendly)
  propulate  the paper's evolutionary search over MPI ranks (mpirun -n 2 or more; srun on SLURM)
Recipes (--recipe) are the exact searches behind the committed tables (make lrs-<recipe>).

Examples:
  python experiments/lr_search.py --list-tasks
  python experiments/lr_search.py --task closed_form:paper --list-settings
  python experiments/lr_search.py --task closed_form:paper --select function=sphere --select n=1,2,4
  python experiments/lr_search.py --recipe fc-cpu --list-settings
  python experiments/lr_search.py --recipe fc-cpu --select width=256 --select gradient=bp --lr-dir scratch/lrs
  mpirun -n 2 python experiments/lr_search.py --backend propulate --task closed_form --ranks 2
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings

import _common
from _common import UsageError, cli, int_list

from fgexp.lr import recipes, registry, table
from fgexp.lr.grid import GridConfig, run_grid
from fgexp.lr.propulate_backend import PropulateConfig

BACKENDS = ("grid", "propulate")
LR_DIR = "results/lrs"
# Flags named after config fields; their defaults live in the dataclasses, never here.
GRID_FLAGS = ("points_per_decade", "refine", "refine_points")
PROPULATE_FLAGS = ("population", "evaluations", "seed", "checkpoints", "prune_factor",
                   "prune_fraction")
SHARED_FLAGS = ("lo", "hi", "seeds", "tolerance")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks."""


def _default(config, name: str) -> str:
    return f" (default: {getattr(config(), name)})"


def make_parser() -> argparse.ArgumentParser:
    parser = _common._Parser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_Formatter, argument_default=None)
    what = parser.add_argument_group("what to search")
    what.add_argument("--task", help="task name, optionally with a preset: closed_form, "
                      "closed_form:paper, fc_mnist:cpu (see --list-tasks)")
    what.add_argument("--preset", help="task preset (default: the one in --task, else smoke)")
    what.add_argument("--recipe", help="a committed table's recipe: "
                      f"{', '.join(recipes.RECIPES)} (fixes task, bounds and backend)")
    what.add_argument("--select", action="append", default=[], metavar="KEY=V1[,V2]",
                      help="keep settings whose column KEY has one of the values; repeatable "
                      "(e.g. --select function=sphere --select n=4 --select gradient=frog)")
    what.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                      help="override a field of the task preset (e.g. --set max_steps=200)")
    what.add_argument("--list-tasks", action="store_true", help="list tasks and presets, then exit")
    what.add_argument("--list-settings", "--dry-run", action="store_true",
                      help="print the selected settings, one line of --select flags each "
                      "(with --recipe: each stage's bounds and horizon too), then exit")
    how = parser.add_argument_group("search")
    how.add_argument("--backend", choices=BACKENDS, help="default: grid")
    how.add_argument("--lr-dir", default=LR_DIR, help=f"directory of the LR tables ({LR_DIR})")
    how.add_argument("--lo", type=float, help="log10 of the smallest rate" + _default(GridConfig, "lo"))
    how.add_argument("--hi", type=float, help="log10 of the largest rate" + _default(GridConfig, "hi"))
    how.add_argument("--seeds", type=int_list, help="training seeds per rate (default: grid "
                     f"{GridConfig().seeds}, propulate {PropulateConfig().seeds})")
    how.add_argument("--tolerance", type=float, help="extraction: rates within this fraction "
                     "of the best loss" + _default(GridConfig, "tolerance"))
    grid = parser.add_argument_group("grid backend")
    grid.add_argument("--points-per-decade", type=int, help="grid rates per factor of 10"
                      + _default(GridConfig, "points_per_decade"))
    grid.add_argument("--refine", type=int, help="refinement rounds: a finer grid around the "
                      "best rate each" + _default(GridConfig, "refine"))
    grid.add_argument("--refine-points", type=int, help="rates per refinement round, spanning "
                      "one grid step either side" + _default(GridConfig, "refine_points"))
    prop = parser.add_argument_group("propulate backend")
    prop.add_argument("--population", type=int, help="breeding population size"
                      + _default(PropulateConfig, "population"))
    prop.add_argument("--evaluations", type=int, help="evaluations per setting, over all ranks "
                      "together" + _default(PropulateConfig, "evaluations"))
    prop.add_argument("--seed", type=int, help="seed of the evolutionary search"
                      + _default(PropulateConfig, "seed"))
    prop.add_argument("--ranks", type=int, help="expected MPI ranks; refused if MPI started another number")
    prop.add_argument("--checkpoints", help="checkpoint root; one subdirectory per task and "
                      "setting" + _default(PropulateConfig, "checkpoints"))
    prop.add_argument("--prune-factor", type=float, help="prune runs whose loss exceeds this "
                      "factor x the best run's ..." + _default(PropulateConfig, "prune_factor"))
    prop.add_argument("--prune-fraction", type=float, help="... at the same step for more than "
                      "this fraction of the steps" + _default(PropulateConfig, "prune_fraction"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                        help="torch CPU threads per process (default: $OMP_NUM_THREADS or 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def list_tasks() -> None:
    for name in registry.TASKS:
        factory = registry.task_factory(name)
        task = factory()
        print(f"{name:12s} presets: {', '.join(getattr(factory, 'presets', ()))}; columns: "
              f"{', '.join(task.setting_columns)}, gradient, k, sampler")
    print(f"recipes: {', '.join(f'{r} (make lrs-{r})' for r in recipes.RECIPES)}")


def task_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"expected OPTION=VALUE after --set, got {item!r}")
        options[key.strip()] = value.strip()
    return options


def backend_config(args, backend: str):
    """The backend's config dataclass with the given flags applied, validated."""
    config_class = GridConfig if backend == "grid" else PropulateConfig
    own = GRID_FLAGS if backend == "grid" else PROPULATE_FLAGS  # the other's are ignored
    values = {f: getattr(args, f) for f in (*SHARED_FLAGS, *own) if getattr(args, f) is not None}
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    return dataclasses.replace(config_class(), **values).validate()


def run_recipe(args) -> int:
    fixed = [f for f in ("task", "preset", "backend", "ranks", *SHARED_FLAGS, *GRID_FLAGS,
                         *PROPULATE_FLAGS) if getattr(args, f) is not None] + \
        (["set"] if args.set else [])
    if fixed:
        raise UsageError(f"--{fixed[0].replace('_', '-')} cannot be combined with --recipe "
                         "(a recipe fixes task, bounds and backend; --select narrows it)")
    recipe = recipes.get_recipe(args.recipe)
    if args.list_settings:
        print("\n".join(recipes.listing(recipe, args.select)))
        return 0
    rows, failed = recipes.run_recipe(recipe, args.lr_dir, args.select, not args.no_progress)
    return report(rows, failed, table.table_path(recipe.lr_dir(args.lr_dir), recipe.table))


def report(rows, failed, path) -> int:
    if rows:
        print(f"wrote {len(rows)} row(s) to {path}")
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failed else 0


@cli
def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.list_tasks:
        list_tasks()
        return 0
    _common.setup_torch(args.threads)
    if args.recipe:
        return run_recipe(args)
    if not args.task:
        raise UsageError("--task or --recipe is required (see --list-tasks)")
    backend = args.backend or "grid"
    config = backend_config(args, backend)
    task = registry.get_task(args.task, args.preset, **task_options(args.set))
    settings = registry.select_settings(task, registry.parse_selection(args.select))
    if args.list_settings:
        print("\n".join(registry.settings_as_args(task, settings)))
        return 0
    if backend == "grid":
        rows, failed = run_grid(task, settings, config, args.lr_dir, not args.no_progress)
        for row in rows:
            print(f"{table.setting_id(row, task.setting_columns)}: lr={row['lr']:.4g} "
                  f"loss={row['loss']:.4g} ({row['evaluations']} evaluations)")
    else:
        from fgexp.lr.propulate_backend import run_propulate
        rows, failed = run_propulate(task, settings, config, args.lr_dir, args.ranks,
                                     not args.no_progress)
    return report(rows, failed, table.table_path(args.lr_dir, task.name))


def _quiet_on_other_ranks() -> None:
    """Under mpirun/srun every rank runs this script: let only rank 0 print errors and bars."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0") not in ("", "0"):
            sys.stderr = open(os.devnull, "w")
            return


if __name__ == "__main__":
    _quiet_on_other_ranks()
    # Forward-mode AD of some torch ops triggers this on every rank; it says nothing about us.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    sys.exit(main())
