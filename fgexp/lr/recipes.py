"""LR recipes: the exact searches that made each committed table in results/lrs/.

A recipe is a list of stages run in order into one table; a stage is one search (task preset,
`--set` overrides, the settings it covers, backend and its config). A later stage replaces the
rows of the settings it covers, so each row of a table comes from the last stage that covers
its setting. `make lrs-<recipe>` runs one; `experiments/lr_search.py --recipe NAME
--list-settings` prints what it would search, without compute. Running a recipe writes
`<table>.recipe.json` beside the table, naming the make target that rebuilds it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fgexp.lr.closed_form import FullHorizonConfig, refine_full_horizon
from fgexp.lr.grid import GridConfig, log_grid, run_grid
from fgexp.lr.registry import get_task, matching, parse_selection, settings_as_args
from fgexp.lr.table import check_outputs, setting_key
from fgexp.paper import PAPER_NS
from fgexp.results import atomic_write_text


@dataclass(frozen=True)
class Stage:
    task: str                                  # "task:preset", as for --task
    select: tuple[str, ...] = ()               # --select items: the settings it covers
    options: tuple[tuple[str, str], ...] = ()  # --set overrides of the task preset
    grid: GridConfig | None = None             # backend "grid" ...
    full_horizon: FullHorizonConfig | None = None  # ... or "grid-full" around the table's rate
    anchor: str | None = None                  # an LR rule (fgexp.lr.rules): the grid's lo/hi
    #   are decades around the rate it predicts from the table's bp rate of the same setting

    @property
    def backend(self) -> str:
        return "grid" if self.grid is not None else "grid-full"

    def make_task(self):
        return get_task(self.task, **dict(self.options))


@dataclass(frozen=True)
class Recipe:
    name: str                  # --recipe NAME; make target lrs-NAME
    table: str                 # LR table name: <lr_dir>/<subdir>/<table>.csv
    stages: tuple[Stage, ...]  # run in order
    subdir: str = ""           # a folder of its own under the LR directory (a table for one
    #   variant of an experiment, e.g. another estimator, beside the experiment's own)

    @property
    def make_target(self) -> str:
        return f"lrs-{self.name}"

    def lr_dir(self, root: Path | str) -> Path:
        """Where the recipe's table lives, given the LR directory (results/lrs)."""
        return Path(root) / self.subdir


# Closed form (Figures 4 and 5b): 4 points per decade plus one refinement round of 5 rates,
# seeds 0 and 1, the 5% rule. Rosenbrock, for cost, first on a 2,500-step horizon over
# [1e-6, 1e-1] with tolerance 0 (on the short horizon every small rate lies within 5%), then
# re-searched on the full 25,000 steps around that rate, twice, the second time finer.
_CLOSED_FORM_GRID = GridConfig(lo=-6.0, hi=0.0, points_per_decade=4, refine=1, refine_points=5,
                               seeds=(0, 1), tolerance=0.05)
_ROSENBROCK_FULL = "n=" + ",".join(str(n) for n in PAPER_NS if 2 <= n <= 256)
_ROSENBROCK_FINE = "n=" + ",".join(str(n) for n in PAPER_NS if 4 <= n <= 256)
CLOSED_FORM = Recipe("closed-form", "closed_form", (
    Stage("closed_form:paper", ("function=sphere",), grid=_CLOSED_FORM_GRID),
    Stage("closed_form:paper", ("function=styblinski-tang",), grid=_CLOSED_FORM_GRID),
    Stage("closed_form:cone", grid=_CLOSED_FORM_GRID),
    Stage("closed_form:paper", ("function=rosenbrock",), (("max_steps", "2500"),),
          grid=dataclasses.replace(_CLOSED_FORM_GRID, hi=-1.0, tolerance=0.0)),
    Stage("closed_form:paper", ("function=rosenbrock", _ROSENBROCK_FULL),
          full_horizon=FullHorizonConfig(below=1.25, above=0.25, step=0.25, seeds=(0, 1),
                                         tolerance=0.0)),
    Stage("closed_form:paper", ("function=rosenbrock", _ROSENBROCK_FINE),
          full_horizon=FullHorizonConfig(below=0.25, above=0.25, step=0.0625, seeds=(0, 1),
                                         tolerance=0.0)),
))

# FC on mnist5k (cpu preset), over the full training horizon (up to 200 epochs, patience 10 on
# the validation loss), seed 0, the 5% rule. One fixed 3-rate grid per setting, 0.3 decades
# apart, anchored on that setting's rate from the earlier 20-epoch search (3 points per decade,
# seeds 0 and 1; docs/learning_rates.md): forward gradients from a quarter of it up to it (a
# longer horizon favours smaller rates), bp from half to twice it.
_FC_20_EPOCH_RATES = {  # (width, gradient token) -> rate of the 20-epoch search
    (256, "bp"): 0.0921055317689482, (1024, "bp"): 0.19306977288832505,
    (256, "fg-mean:1"): 0.0017782794100389228, (1024, "fg-mean:1"): 0.0008659643233600654,
    (256, "fg-mean:2"): 0.0017782794100389228, (1024, "fg-mean:2"): 0.0008659643233600654,
    (256, "fg-mean:4"): 0.003651741272548377, (1024, "fg-mean:4"): 0.0017782794100389228,
    (256, "fg-mean:16"): 0.007498942093324558, (1024, "fg-mean:16"): 0.003651741272548377,
    (256, "frog:2"): 0.40470899507597613, (1024, "frog:2"): 0.8483428982440722,
    (256, "frog:4"): 0.40470899507597613, (1024, "frog:4"): 0.8483428982440722,
    (256, "frog:16"): 0.19306977288832505, (1024, "frog:16"): 0.40470899507597613,
}
_FC_GRID = GridConfig(points_per_decade=3, seeds=(0,), tolerance=0.05)


def _fc_stage(width: int, token: str, rate: float) -> Stage:
    label, _, k = token.partition(":")
    below, above = (0.3, 0.3) if label == "bp" else (0.6, 0.0)
    select = (f"width={width}", f"gradient={label}", *((f"k={k}",) if k else ()))
    return Stage("fc_mnist:cpu", select, grid=dataclasses.replace(
        _FC_GRID, lo=math.log10(rate) - below, hi=math.log10(rate) + above))


FC_CPU = Recipe("fc-cpu", "fc_mnist", tuple(
    _fc_stage(width, token, rate) for (width, token), rate in
    sorted(_FC_20_EPOCH_RATES.items(), key=lambda item: item[0][0])))  # width 256 first

# ResNet18/ViT (cpu preset: ResNet18 with the paper's per-example activity tangents, the ViT at
# hidden size 128 and patch 7) on the preset's whole training split, seed 0; only the
# validation loss is evaluated. bp first, over the runs' whole horizon (search_epochs none:
# up to max_epochs, with the preset's early stopping; a 3-epoch horizon picked a rate at which
# the ViT's bp stopped at 17.1 % error), 2 rates per decade over 1e-2..1, 1% tolerance. Then
# every forward gradient over `search_epochs` (3) epochs, on 2 rates per decade from half a
# decade below to one and a half above the isotropic rule's rate from that bp rate
# (docs/lr_rules.md: the mean's rate is about k/N of bp's, the projection's bp's; searched FC
# rates lie 4-5x above it). Where the best loss lies on an edge of a grid, up to 3 more rates
# beyond it. Forward gradients take the best loss (tolerance 0): within 3 epochs they move
# the loss by less than 1% of its value (ViT fg-mean k = 1: 2.302 to 2.288), so a relative
# tolerance would take the log-centre of every rate tried.
_NET_GRID = GridConfig(lo=-2.0, hi=0.0, points_per_decade=2, seeds=(0,), tolerance=0.01,
                       extend=3)
_NET_ANCHORED = dataclasses.replace(_NET_GRID, lo=-0.5, hi=1.5, tolerance=0.0)
RESNET_VIT_CPU = Recipe("resnet-vit-cpu", "resnet_vit", (
    Stage("resnet_vit:cpu", ("gradient=bp",), (("search_epochs", "none"),), grid=_NET_GRID),
    Stage("resnet_vit:cpu", ("gradient=fg-mean",), anchor="isotropic", grid=_NET_ANCHORED),
    Stage("resnet_vit:cpu", ("gradient=frog",), anchor="isotropic", grid=_NET_ANCHORED),
))

# ResNet18 with held batch statistics (`make resnet-vit-held-stats`): the same recipe on that
# estimator, into a table of its own (results/lrs/held_stats/): at the per-example estimator's
# rates its runs degraded after 4 to 8 epochs.
_HELD = (("activity_tangents", "held-stats"),)
RESNET_VIT_CPU_HELD_STATS = Recipe("resnet-vit-cpu-held-stats", "resnet_vit", tuple(
    dataclasses.replace(stage, select=("model=resnet18", *stage.select),
                        options=(*stage.options, *_HELD))
    for stage in RESNET_VIT_CPU.stages), subdir="held_stats")

RECIPES = {r.name: r for r in (CLOSED_FORM, FC_CPU, RESNET_VIT_CPU, RESNET_VIT_CPU_HELD_STATS)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
    return RECIPES[name]


def planned(recipe: Recipe, select: Sequence[str] = ()) -> list[tuple[Stage, object, list[dict]]]:
    """(stage, task, settings) of every stage with settings left after `select` (extra filter).

    Builds every task and checks every selection and config before any compute.
    """
    extra = parse_selection(select)
    plan = []
    for stage in recipe.stages:
        task = stage.make_task()
        if task.name != recipe.table:
            raise ValueError(f"recipe {recipe.name}: stage {stage.task} writes table "
                             f"{task.name}, not {recipe.table}")
        (stage.grid or stage.full_horizon).validate()
        chosen = matching(task, parse_selection(stage.select))
        keys = {setting_key(s, task.setting_columns) for s in matching(task, extra)}
        chosen = [s for s in chosen if setting_key(s, task.setting_columns) in keys]
        if chosen:
            plan.append((stage, task, chosen))
    if not plan:
        raise ValueError(f"no setting of recipe {recipe.name} matches {' '.join(select)}")
    return plan


def anchor_rate(task, setting: Mapping, rule: str, lr_dir: Path | str, recipe: Recipe) -> float:
    """The centre of an anchored stage's grid: `rule`'s rate from bp's rate of the same model,
    data set and width in the table (MissingLearningRate names the recipe's bp search)."""
    from fgexp.lr.rules import network_dimension, predict
    from fgexp.lr.table import lookup_lr, table_path
    bp = {**setting, "gradient": "bp", "k": ""}
    select = " ".join(f"--select {c}={bp[c]}" for c in task.setting_columns
                      if bp.get(c) not in (None, ""))
    lr_bp = lookup_lr(table_path(lr_dir, task.name), bp,
                      f"make {recipe.make_target} ARGS='{select} --select gradient=bp'")
    config = task.config  # a network task (its model's n depends on the config's ViT patch)
    width = setting.get("width")
    n = network_dimension(setting["model"], setting["dataset"],
                          None if width in (None, "") else int(width), config.perturbation,
                          config.vit_patch if setting["model"] == "vit" else None)
    return predict(setting, lr_bp, rule, n=n)


def _check_anchors(recipe: Recipe, plan, lr_dir: Path | str) -> None:
    """Every anchored setting finds bp's rate: in the table already, or from an earlier stage
    of this run (MissingLearningRate before any compute otherwise)."""
    from fgexp.lr.rules import RULES
    searched = set()
    for stage, task, settings in plan:
        if stage.anchor is not None and not hasattr(task, "config"):
            raise ValueError(f"recipe {recipe.name}: an anchored stage needs a network task, "
                             f"not {stage.task}")
        if stage.anchor is not None:
            if stage.anchor not in RULES:
                raise ValueError(f"recipe {recipe.name}: unknown anchor rule {stage.anchor!r}; "
                                 f"allowed: {', '.join(RULES)}")
            for setting in settings:
                if _group(setting, task) not in searched:
                    anchor_rate(task, setting, stage.anchor, lr_dir, recipe)
        searched |= {_group(s, task) for s in settings if s["gradient"] == "bp"}


def _group(setting: Mapping, task) -> tuple[str, ...]:
    """The setting columns' values (model, data set, width): what shares one bp rate."""
    return setting_key(setting, task.setting_columns)[:len(task.setting_columns)]


def _run_anchored(stage: Stage, task, settings, recipe: Recipe, lr_dir: Path | str,
                  progress: bool, extra: Mapping) -> tuple[list[dict], list[str]]:
    """An anchored grid, one setting at a time: bounds around each setting's rule rate."""
    rows, failed = [], []
    for setting in settings:
        centre = anchor_rate(task, setting, stage.anchor, lr_dir, recipe)
        grid = dataclasses.replace(stage.grid, lo=math.log10(centre) + stage.grid.lo,
                                   hi=math.log10(centre) + stage.grid.hi)
        done, bad = run_grid(task, [setting], grid, lr_dir, progress,
                             {**extra, "anchor": stage.anchor, "anchor_lr": centre})
        rows += done
        failed += bad
    return rows, failed


def expected_rows(recipe: Recipe) -> dict[tuple, tuple[str, tuple[int, ...]]]:
    """Setting key -> (backend, possible evaluation counts) of the row the recipe leaves for it
    (no compute; a grid that extends its edges may run up to `extend` more rates)."""
    out = {}
    for stage, task, settings in planned(recipe):
        for setting in settings:
            out[setting_key(setting, task.setting_columns)] = (stage.backend,
                                                               _evaluations(stage))
    return out


def _evaluations(stage: Stage) -> tuple[int, ...]:
    if stage.grid is not None:
        g = stage.grid
        rates = len(log_grid(g.lo, g.hi, g.points_per_decade)) + g.refine * g.refine_points
        return tuple((rates + extra) * len(g.seeds) for extra in range(g.extend + 1))
    return (len(stage.full_horizon.offsets()) * len(stage.full_horizon.seeds),)


def describe(stage: Stage, task, settings: Sequence[Mapping]) -> str:
    """One line: backend, bounds, seeds, tolerance and horizon of a stage."""
    options = "".join(f" --set {k}={v}" for k, v in stage.options)
    if stage.grid is not None:
        g = stage.grid
        bounds = (f"grid {g.lo:+g}..{g.hi:+g} decades around the {stage.anchor} rule's rate "
                  f"from the table's bp rate" if stage.anchor is not None
                  else f"grid log10 lr in [{g.lo:g}, {g.hi:g}]")
        how = (f"{bounds}, {g.points_per_decade} per decade"
               + (f", up to {g.extend} more beyond the edge holding the best loss"
                  if g.extend else "")
               + (f", {g.refine} refinement(s) of {g.refine_points}" if g.refine else "")
               + f", seeds {','.join(map(str, g.seeds))}, tolerance {g.tolerance:g}")
    else:
        f = stage.full_horizon
        how = (f"grid-full around the table's rate, -{f.below:g}..+{f.above:g} decades in "
               f"steps of {f.step:g}, seeds {','.join(map(str, f.seeds))}, "
               f"tolerance {f.tolerance:g}")
    return (f"{stage.task}{options} {' '.join('--select ' + s for s in stage.select)}: "
            f"{how}; horizon {_horizon(task, settings)}; {len(settings)} setting(s)")


def _horizon(task, settings) -> str:
    if hasattr(task, "steps"):
        steps = sorted({task.steps(s) for s in settings})
        return "/".join(map(str, steps)) + " steps"
    return f"{task.horizon(settings[0])} epoch(s)"


def listing(recipe: Recipe, select: Sequence[str] = ()) -> list[str]:
    """What `make lrs-NAME` searches: a header per stage, then one line per setting."""
    table = Path(recipe.subdir) / f"{recipe.table}.csv"
    lines = [f"# recipe {recipe.name} (make {recipe.make_target}) -> {table}"]
    for i, (stage, task, settings) in enumerate(planned(recipe, select), start=1):
        lines.append(f"# stage {i}: {describe(stage, task, settings)}")
        lines += settings_as_args(task, settings)
    return lines


def write_sidecar(recipe: Recipe, lr_dir: Path | str) -> Path:
    """<table>.recipe.json: the make target and the full recipe that rebuild the table.

    It describes the whole recipe even after a --select run: which settings one run covered
    is in that run's log entries (argv, recipe, stage)."""
    path = Path(lr_dir) / f"{recipe.table}.recipe.json"
    record = {"table": f"{recipe.table}.csv", "make_target": recipe.make_target,
              "command": f"python experiments/lr_search.py --recipe {recipe.name}",
              "stages": [{"task": s.task, "select": list(s.select), "options": dict(s.options),
                          "backend": s.backend, **({"anchor": s.anchor} if s.anchor else {}),
                          "config": dataclasses.asdict(s.grid or s.full_horizon)}
                         for s in recipe.stages]}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def run_recipe(recipe: Recipe, lr_dir: Path | str, select: Sequence[str] = (),
               progress: bool = True) -> tuple[list[dict], list[str]]:
    """Run every stage in order into <lr_dir>/<subdir>/<table>.csv; (rows, all-diverged
    messages).

    Every stage's task, selection and config, and the table directory, table and log, are
    checked before the first stage computes anything.
    """
    plan = planned(recipe, select)
    lr_dir = recipe.lr_dir(lr_dir)
    check_outputs(lr_dir, recipe.table, plan[0][1].setting_columns)
    _check_anchors(recipe, plan, lr_dir)
    rows, failed = [], []
    for i, (stage, task, settings) in enumerate(plan, start=1):
        extra = {"recipe": recipe.name, "make_target": recipe.make_target, "stage": i}
        if stage.anchor is not None:
            done, bad = _run_anchored(stage, task, settings, recipe, lr_dir, progress, extra)
        elif stage.grid is not None:
            done, bad = run_grid(task, settings, stage.grid, lr_dir, progress, extra)
        else:
            done, bad = refine_full_horizon(
                task, settings, stage.full_horizon, lr_dir,
                f"python experiments/lr_search.py --recipe {recipe.name}", progress, extra)
        rows += done
        failed += bad
    write_sidecar(recipe, lr_dir)
    return rows, failed
