"""Learning-rate search: one best rate per setting into <lr-dir>/<task>.csv.

Backends:
  grid       a log-spaced grid of rates x seeds, one vectorized run per setting (laptop-friendly)
  propulate  the paper's evolutionary search over MPI ranks (mpirun -n 2 or more; srun on SLURM)

Examples:
  python experiments/lr_search.py --list-tasks
  python experiments/lr_search.py --task closed_form:paper --list-settings
  python experiments/lr_search.py --task closed_form:paper --select function=sphere --select n=1,2,4
  mpirun -n 2 python experiments/lr_search.py --backend propulate --task closed_form --ranks 2
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import _common
from _common import UsageError, cli, int_list

from fgexp import lr_search


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks and show every default."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_Formatter)
    what = parser.add_argument_group("what to search")
    what.add_argument("--task", help="task name, optionally with a preset: closed_form, "
                      "closed_form:paper, fc_mnist:cpu (see --list-tasks)")
    what.add_argument("--preset", help="task preset (default: the one in --task, else smoke)")
    what.add_argument("--select", action="append", default=[], metavar="KEY=V1[,V2]",
                      help="keep settings whose column KEY has one of the values; repeatable "
                      "(e.g. --select function=sphere --select n=4 --select gradient=frog)")
    what.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                      help="override a field of the task preset (e.g. --set max_steps=200)")
    what.add_argument("--list-tasks", action="store_true", help="list tasks and presets, then exit")
    what.add_argument("--list-settings", action="store_true",
                      help="print the selected settings, one line of --select flags each, then exit")
    how = parser.add_argument_group("search")
    how.add_argument("--backend", choices=lr_search.BACKENDS, default="grid")
    how.add_argument("--lr-dir", default="results/lrs", help="directory of the LR tables")
    how.add_argument("--lo", type=float, default=-6.0, help="log10 of the smallest rate")
    how.add_argument("--hi", type=float, default=0.0, help="log10 of the largest rate")
    how.add_argument("--seeds", type=int_list,
                     help="training seeds per rate; unset: grid 0..4, propulate 0")
    how.add_argument("--tolerance", type=float, default=0.05,
                     help="extraction: rates within this fraction of the best loss")
    grid = parser.add_argument_group("grid backend")
    grid.add_argument("--points-per-decade", type=int, default=4,
                      help="grid rates per factor of 10")
    grid.add_argument("--refine", type=int, default=0,
                      help="refinement rounds: a finer grid around the best rate each")
    grid.add_argument("--refine-points", type=int, default=9,
                      help="rates per refinement round, spanning one grid step either side")
    prop = parser.add_argument_group("propulate backend")
    prop.add_argument("--population", type=int, default=8, help="breeding population size")
    prop.add_argument("--evaluations", type=int, default=100,
                      help="evaluations per setting, over all ranks together")
    prop.add_argument("--seed", type=int, default=0, help="seed of the evolutionary search")
    prop.add_argument("--ranks", type=int, help="expected MPI ranks; refused if MPI started another number")
    prop.add_argument("--checkpoints", default="scratch/lr_checkpoints",
                      help="checkpoint root; one subdirectory per task and setting")
    prop.add_argument("--prune-factor", type=float, default=2.0,
                      help="prune runs whose loss exceeds this factor x the best run's ...")
    prop.add_argument("--prune-fraction", type=float, default=0.05,
                      help="... at the same step for more than this fraction of the steps")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                        help="torch CPU threads per process")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def list_tasks() -> None:
    for name in lr_search.TASKS:
        try:
            task = lr_search.get_task(name)
        except ValueError as err:
            print(f"{name:12s} {err}")
            continue
        module, factory = lr_search.TASKS[name].split(":")
        presets = getattr(getattr(sys.modules[module], factory), "presets", ())
        print(f"{name:12s} presets: {', '.join(presets) or 'see ' + module}; columns: "
              f"{', '.join(task.setting_columns)}, gradient, k, sampler")


def settings_as_args(task, settings) -> list[str]:
    columns = (*task.setting_columns, *lr_search.RATE_COLUMNS)
    return [" ".join(f"--select {c}={lr_search.canonical(s.get(c))}" for c in columns)
            for s in settings]


def task_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"expected OPTION=VALUE after --set, got {item!r}")
        options[key.strip()] = value.strip()
    return options


@cli
def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.list_tasks:
        list_tasks()
        return 0
    if not args.task:
        raise UsageError("--task is required (see --list-tasks)")
    _common.setup_torch(args.threads)
    task = lr_search.get_task(args.task, args.preset, **task_options(args.set))
    settings = lr_search.select_settings(task, lr_search.parse_selection(args.select))
    if args.list_settings:
        print("\n".join(settings_as_args(task, settings)))
        return 0
    if args.backend == "grid":
        config = lr_search.GridConfig(args.lo, args.hi, args.points_per_decade, args.refine,
                                      args.refine_points, tuple(args.seeds or range(5)),
                                      args.tolerance)
        rows = lr_search.run_grid(task, settings, config, args.lr_dir, not args.no_progress)
        for row in rows:
            print(f"{lr_search.setting_id(row, task.setting_columns)}: lr={row['lr']:.4g} "
                  f"loss={row['loss']:.4g} ({row['evaluations']} evaluations)")
    else:
        from fgexp import lr_propulate
        config = lr_propulate.PropulateConfig(
            args.lo, args.hi, args.population, args.evaluations, args.seed,
            tuple(args.seeds or (0,)), args.checkpoints, args.prune_factor, args.prune_fraction,
            args.tolerance)
        rows = lr_propulate.run_propulate(task, settings, config, args.lr_dir, args.ranks,
                                          not args.no_progress)
    if rows:
        print(f"wrote {len(rows)} row(s) to {lr_search.table_path(args.lr_dir, task.name)}")
    return 0


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
