"""Ren et al.'s LocalMixer with local greedy losses (their Table 3), with multi-tangent rows.

A short learning-rate search per (setup, gradient) on the validation split comes first
(OUT/local_mixer_lrs.csv: a grid, then the half-decade neighbours of its best rate; skipped
when the config sets one `lr`), then every run trains with its searched rate
(OUT/local_mixer.csv, one row per run and epoch). Both resume cell by cell.

    python experiments/local_mixer.py --preset cpu --out results      # mnist5k, ~30 min, 1 core
    python experiments/local_mixer.py --preset paper --device cuda --set download=true
    python experiments/local_mixer.py --preset cpu --set gradients=bp,lg-fg-a:projection:16

Gradients: bp, lg-bp, fg-w, fg-a, lg-fg-w, lg-fg-a, or METHOD:AGGREGATION:K for the
forward-gradient ones (e.g. lg-fg-a:projection:16). Setups: SIZE@DATASET (S/1/1@mnist5k).
Every LocalConfig field can be set with --set FIELD=VALUE (tuples as comma lists).
"""
from __future__ import annotations

import dataclasses
import sys

import _common
import _networks

from fgexp.nn.local_runs import PRESETS

NAME = "local_mixer"
SEARCH_NAME = "local_mixer_lrs"
# Fields that name the sweep or say where data lives: left out of the manifest's config, so
# runs of other setups, gradients or seeds can share one results directory.
SWEEP_FIELDS = ("setups", "gradients", "seeds", "data_root", "download")
SEARCH_FIELDS = ("batch_size", "momentum", "weight_decay", "mode", "scope", "search_epochs",
                 "search_seed", "train_limit", "eval_limit")


def parse(argv):
    parser = _common.make_parser(__doc__, PRESETS)
    parser.formatter_class = _common.argparse.RawDescriptionHelpFormatter
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a LocalConfig field, e.g. --set epochs=4 "
                             "--set setups=M/1/16@mnist5k (repeatable)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--list-runs", action="store_true",
                        help="print the runs' cell ids, then exit")
    return parser.parse_args(argv)


def overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise _common.UsageError(f"expected FIELD=VALUE after --set, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def record(cfg, keep=None) -> dict:
    fields = dataclasses.asdict(cfg)
    return {k: v for k, v in fields.items()
            if k not in SWEEP_FIELDS and (keep is None or k in keep)}


def search(args, cfg, todo, data, device) -> dict:
    """The searched rate of every run's (setup, gradient): the grid, then (search_refine) the
    half-decade neighbours of each best grid rate; computes missing search cells only."""
    from fgexp.nn import local_runs as lr_runs
    from fgexp.results import RunDir
    rd = RunDir(args.out, SEARCH_NAME, {**record(cfg, SEARCH_FIELDS), "preset": args.preset},
                lr_runs.SEARCH_COLUMNS, lr_runs.SEARCH_KEY_COLUMNS).check()
    points = {lr_runs.rate_key(r): r for r in todo}
    grid = {key: cfg.search_lrs for key in points}
    best = search_cells(args, cfg, rd, points, grid, data, device)
    if cfg.search_refine:
        refined = {key: lr_runs.neighbours(best[key]) for key in points if key in best}
        best = search_cells(args, cfg, rd, points, refined, data, device)
    return {key: best.get(key, min(cfg.search_lrs)) for key in points}


def search_cells(args, cfg, rd, points, rates, data, device) -> dict:
    """Run the missing (point, rate) search cells; the best rate per point over all rows."""
    from tqdm import tqdm

    from fgexp.nn import local_runs as lr_runs
    cells = [(f"{r.size.replace('/', '-')}_{r.dataset}_{r.gradient}_lr{lr:g}", r, lr)
             for key, r in points.items() for lr in rates.get(key, ())]
    done = rd.done()
    missing = [c for c in cells if c[0] not in done]
    if missing:
        rd.start(args.preset)
        for cell_id, r, lr in tqdm(missing, desc=SEARCH_NAME, unit="run",
                                   disable=args.no_progress):
            bar = tqdm(total=cfg.search_epochs * len(data[r.dataset].train), desc=cell_id,
                       unit="img", leave=False, disable=args.no_progress)
            with bar:
                rd.write_cell(cell_id, lr_runs.search_rows(r.size, r.dataset, data[r.dataset],
                                                           r.spec, cfg, lr, device, bar))
        rd.finish()
    wanted = set(points)
    return {key: lr for key, lr in lr_runs.best_rates(rd.rows()).items() if key in wanted}


@_common.cli
def main(argv=None):
    args = parse(argv)
    from fgexp.config import coerce
    from fgexp.nn import local_runs as lr_runs
    cfg = coerce(PRESETS[args.preset], overrides(args.set))
    lr_runs.validate(cfg)
    all_runs = lr_runs.runs(cfg)
    if args.list_runs:
        print("\n".join(r.cell_id for r in all_runs))
        return 0
    _common.setup_torch(args.threads)
    device = _networks.pick_device(args.device)
    from tqdm import tqdm

    from fgexp.results import RunDir
    rd = RunDir(args.out, NAME, {**record(cfg), "preset": args.preset}, lr_runs.COLUMNS,
                lr_runs.KEY_COLUMNS).check()
    todo = [r for r in all_runs if r.cell_id not in rd.done()]
    data = {d: lr_runs.load_data(cfg, d) for d in dict.fromkeys(r.dataset for r in todo)}
    rates = ({lr_runs.rate_key(r): cfg.lr for r in todo} if cfg.lr is not None
             else search(args, cfg, todo, data, device))
    rd.start(args.preset)
    for r in tqdm(todo, desc=NAME, unit="run", disable=args.no_progress):
        lr = rates[lr_runs.rate_key(r)]
        bar = tqdm(total=cfg.epochs * len(data[r.dataset].train), desc=r.cell_id, unit="img",
                   leave=False, disable=args.no_progress)
        with bar:
            history, state = lr_runs.train_rows(r.size, data[r.dataset], r.spec, cfg, lr,
                                                r.seed, cfg.epochs, device, bar)
        fixed = lr_runs.fixed_row(r, lr, state.status)
        rd.write_cell(r.cell_id, [{**fixed, **row} for row in history])
    rd.finish()
    print(f"{NAME}: {len(todo)} runs trained, results in {rd.csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
