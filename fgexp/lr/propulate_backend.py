"""Propulate backend of the learning-rate search: the paper's method (Appendix B).

One population spread over all MPI ranks (island_comm = COMM_WORLD) searches log10(lr); each
evaluation runs the task's objective, whose interim losses feed a pruning surrogate; rank 0
extracts the best rate and merges one row per setting into the LR table. Every setting gets
its own checkpoint directory, so an interrupted search resumes where it stopped.

mpi4py and propulate are imported inside the functions that need them, so importing this
module (or fgexp.lr) never starts MPI. A diverged evaluation has loss inf and is never
extracted; a setting whose evaluations all diverged gets no row.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fgexp.lr.grid import all_diverged_message, check_limits
from fgexp.lr.pruning import surrogate_factory
from fgexp.lr.registry import Task
from fgexp.lr.table import (LRTableError, check_outputs, check_tolerance, check_writable_dir,
                            extract_best, log_search, merge_rows, result_row, setting_id,
                            table_path)

LIMIT_NAME = "lr_log10"  # the one searched parameter
CHECKPOINT = "island_0_ckpt.pickle"  # Propulate's checkpoint file for island 0
BACKUP = "island_0_ckpt.bkp"         # the previous checkpoint, kept by Propulate


@dataclass(frozen=True)
class PropulateConfig:
    lo: float = -6.0                      # log10 of the smallest rate searched
    hi: float = 0.0                       # log10 of the largest rate searched
    population: int = 8                   # breeding population size (paper: 8)
    evaluations: int = 100                # total over all ranks (paper: 100 per setting)
    seed: int = 0                         # seeds the evolutionary search (plus the rank)
    seeds: tuple[int, ...] = (0,)         # training seeds per evaluation; losses averaged
    checkpoints: str = "scratch/lr_checkpoints"  # one subdirectory per task and setting
    prune_factor: float = 2.0             # prune when loss > factor x the best run's loss ...
    prune_fraction: float = 0.05          # ... for more than this fraction of its steps
    tolerance: float = 0.05               # extraction: "within 5% of the best loss"

    def validate(self) -> "PropulateConfig":
        check_limits(self.lo, self.hi)
        if self.population < 1 or self.evaluations < 1:
            raise ValueError("need --population >= 1 and --evaluations >= 1")
        if not self.seeds:
            raise ValueError("each evaluation needs at least one training seed")
        if self.prune_factor <= 1 or not 0 <= self.prune_fraction < 1:
            raise ValueError("need a prune factor > 1 and a prune fraction in [0, 1)")
        check_tolerance(self.tolerance)
        return self

    def generations(self, ranks: int) -> int:
        """Propulate counts generations per rank: evaluations spread evenly, rounded up."""
        return math.ceil(self.evaluations / ranks)

    def fingerprint(self) -> dict:
        """Options a checkpoint must share with the run that resumes it."""
        return {"lo": self.lo, "hi": self.hi, "population": self.population,
                "seeds": list(self.seeds)}


# ---------------------------------------------------------------------------------------------
# Checks before any MPI communication (identical on every rank, so all ranks exit together)

def check_mpi(expected_ranks: int | None):
    """COMM_WORLD after refusing set-ups that would deadlock or mismatch."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    if "MPICH" in MPI.Get_library_version() and size < 2:
        raise ValueError("Propulate needs at least 2 MPI ranks with MPICH (one rank deadlocks): "
                         "run it as `mpirun -n 2 ...` (make lr-search RANKS=2)")
    if expected_ranks is not None and expected_ranks != size:
        raise ValueError(f"--ranks {expected_ranks} but MPI started {size} ranks; "
                         f"start it with `mpirun -n {expected_ranks} ...`")
    return comm


def checkpoint_dir(config: PropulateConfig, task: Task, setting: Mapping) -> Path:
    return Path(config.checkpoints) / task.name / setting_id(setting, task.setting_columns)


def check_checkpoint(path: Path, config: PropulateConfig) -> None:
    """Refuse an unwritable checkpoint directory, or one made with other search options."""
    check_writable_dir(path, "checkpoint directory")
    options = path / "search.json"
    if options.exists():
        try:
            old = json.loads(options.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LRTableError(f"checkpoint options {options}: not JSON ({err}); "
                               "remove the checkpoint directory or use another --checkpoints") \
                from None
        if not isinstance(old, dict):
            raise LRTableError(f"checkpoint options {options}: expected a JSON object")
        if old != config.fingerprint():
            diff = ", ".join(k for k in old.keys() | config.fingerprint().keys()
                             if old.get(k) != config.fingerprint().get(k))
            raise ValueError(f"checkpoint {path} was made with other search options "
                             f"(differs in: {diff}); use another --checkpoints or remove it")


def saved_population(path: Path) -> list:
    """Evaluated individuals in a checkpoint directory (empty when there is none)."""
    for name in (CHECKPOINT, BACKUP):
        if (path / name).is_file():
            with open(path / name, "rb") as fh:
                return pickle.load(fh)
    return []


def repair_checkpoint(path: Path) -> None:
    """Fall back to Propulate's backup when a kill cut the checkpoint short mid-write.

    Propulate writes the checkpoint in place (after moving the old one to .bkp) and only
    tolerates OSError when loading it, so a truncated file would stop every resume.
    """
    current = path / CHECKPOINT
    if not current.is_file():
        return
    try:
        with open(current, "rb") as fh:
            pickle.load(fh)
    except (EOFError, pickle.UnpicklingError, ValueError, AttributeError):
        backup = path / BACKUP
        if backup.is_file():
            shutil.copyfile(backup, current)
        else:
            current.unlink()
        print(f"warning: {current} was incomplete; resuming from "
              f"{'its backup' if backup.is_file() else 'scratch'}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The search

def _loss_fn(task: Task, setting: Mapping, seeds: Sequence[int], bar=None):
    """Propulate's loss: the seeds' interim losses, averaged step by step."""
    def loss_fn(ind):
        if bar is not None:
            bar.update()  # counts evaluations started on this rank (pruned ones end early)
        lr = 10 ** float(ind[LIMIT_NAME])
        runs = [task.objective(dict(setting), lr, seed) for seed in seeds]
        for losses in zip(*runs):
            mean = sum(losses) / len(losses)
            yield mean if math.isfinite(mean) else math.inf
    return loss_fn


def _route_logs(path: Path, rank: int) -> None:
    """Send Propulate's log lines to <checkpoint>/propulate.log instead of the terminal."""
    log = logging.getLogger("propulate")
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path / "propulate.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _propulator_class():
    from propulate import Propulator

    class ResumablePropulator(Propulator):
        """Propulator that also resumes when the checkpoint holds nothing of this rank yet.

        Propulate resumes each rank at its own last generation + 1 and fails (max of an empty
        list) if a search was interrupted before this rank's first evaluation reached the
        checkpoint; that rank then simply starts at generation 0 with the saved population.
        """

        def __init__(self, *args, checkpoint_path: Path, **kwargs):
            try:
                super().__init__(*args, checkpoint_path=checkpoint_path, **kwargs)
            except ValueError:
                population = saved_population(Path(checkpoint_path))
                if not population or any(ind.rank == self.island_comm.rank for ind in population):
                    raise
                self.population, self.generation = population, 0

    return ResumablePropulator


def _unique(population: list) -> list:
    seen, out = set(), []
    for ind in population:
        key = (float(ind[LIMIT_NAME]), float(ind.loss), ind.rank, ind.generation)
        if key not in seen:
            seen.add(key)
            out.append(ind)
    return out


def search_setting(task: Task, setting: Mapping, config: PropulateConfig, comm,
                   progress: bool = False) -> dict | None:
    """One setting's search on all ranks; rank 0 returns the row (or {"all_diverged": True}
    when no evaluation has a finite loss), the others None."""
    from propulate import get_default_propagator
    from tqdm import tqdm
    rank = comm.Get_rank()
    path = checkpoint_dir(config, task, setting)
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / "search.json").write_text(json.dumps(config.fingerprint()) + "\n")
        repair_checkpoint(path)
    comm.barrier()
    _route_logs(path, rank)
    rng = random.Random(config.seed + rank)
    propagator = get_default_propagator(config.population, {LIMIT_NAME: (config.lo, config.hi)},
                                        rng=rng)
    horizon = getattr(task, "horizon", lambda s: None)(dict(setting))
    generations = config.generations(comm.Get_size())
    bar = tqdm(total=generations, desc="rank 0 evaluations", unit="run", leave=False,
               disable=not progress)
    propulator = _propulator_class()(
        _loss_fn(task, setting, config.seeds, bar), propagator, rng=rng, island_comm=comm,
        propulate_comm=comm, generations=generations, checkpoint_path=path,
        surrogate_factory=surrogate_factory(config.prune_factor, config.prune_fraction, horizon))
    bar.update(getattr(propulator, "generation", 0))  # already done before a resume
    propulator.propulate(logging_interval=10, debug=0)
    bar.close()
    comm.barrier()
    if rank != 0:
        return None
    population = _unique(propulator.population)
    lrs = [10 ** float(ind[LIMIT_NAME]) for ind in population]
    losses = [float(ind.loss) for ind in population]
    if not any(map(math.isfinite, losses)):
        return {"all_diverged": True, "evaluations": len(population)}
    lr = extract_best(lrs, losses, config.tolerance)
    return result_row(setting, task.setting_columns, lr, losses[lrs.index(lr)], len(population),
                      "propulate")


def run_propulate(task: Task, settings: Sequence[Mapping], config: PropulateConfig,
                  lr_dir: Path | str, ranks: int | None = None, progress: bool = True
                  ) -> tuple[list[dict], list[str]]:
    """Search every setting in turn on all ranks; rank 0 merges each row as soon as it is done.

    Returns (rank 0's rows, one message per setting whose evaluations all diverged); the
    messages reach every rank, so all of them can exit with the same status.

    Every check happens before any MPI communication and identically on all ranks, so a bad
    option ends every rank with the same one-line error instead of leaving some of them waiting.
    """
    config.validate()
    check_outputs(lr_dir, task.name, task.setting_columns)
    for setting in settings:
        check_checkpoint(checkpoint_dir(config, task, setting), config)
    comm = check_mpi(ranks)
    rank = comm.Get_rank()
    try:
        _use_gpu_of_rank(rank)
        rows, failed = _search_all(task, settings, config, lr_dir, comm, progress and rank == 0)
    except Exception as err:  # one failing rank must not leave the others blocked forever
        # sys.__stderr__: the script silences the other ranks' duplicate one-line refusals only.
        print(f"error on rank {rank}: {type(err).__name__}: {err}", file=sys.__stderr__,
              flush=True)
        comm.Abort(1)
        raise
    return rows, failed


def _search_all(task, settings, config, lr_dir, comm, progress: bool):
    from tqdm import tqdm
    rows, failed = [], []
    path = table_path(lr_dir, task.name)
    for setting in tqdm(settings, desc=f"propulate {task.name}", unit="setting",
                        disable=not progress):
        row = search_setting(task, setting, config, comm, progress)
        if row is not None and row.get("all_diverged"):
            failed.append(all_diverged_message(task, setting, config.lo, config.hi, path))
        elif row is not None:
            merge_rows(path, task.setting_columns, [row])
            rows.append(row)
            print(f"{setting_id(setting, task.setting_columns)}: lr={row['lr']:.4g} "
                  f"loss={row['loss']:.4g} ({row['evaluations']} evaluations)", flush=True)
    if comm.Get_rank() == 0:
        log_search(lr_dir, task.name, {"backend": "propulate", "ranks": comm.Get_size(),
                                       "config": dataclasses.asdict(config), "rows": rows,
                                       "all_diverged": failed})
    return rows, comm.bcast(failed, root=0)


def _use_gpu_of_rank(rank: int) -> None:
    """One GPU per rank (rank % device_count) when CUDA is there; tasks use the current device."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
