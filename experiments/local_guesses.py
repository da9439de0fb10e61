"""Guessed tangents from local auxiliary losses, alone and with random ones, by mean and by
projection (the paper's outlook, Section 5; Fournier et al. 2023). docs/local_guesses.md.

One CSV row per run and epoch (OUT/local_guesses.csv); a run is (model, width, tangent set, k,
aggregation, seed). A preset is one or more parts (FC, ResNet18); --set changes every part.

    python experiments/local_guesses.py --preset cpu --out results            # ~30 min, 1 core
    python experiments/local_guesses.py --preset paper --set data_root=data --set download=true
    python experiments/local_guesses.py --preset paper --list-runs > list.txt   # SLURM:
    bash slurm/submit_array.sh experiments/local_guesses.py list.txt local_guesses
"""
from __future__ import annotations

import shlex
import sys

import _common
import _networks

NAME = "local_guesses"


def parser():
    from fgexp.nn.guess_runs import PRESETS
    p = _common.make_parser(__doc__, PRESETS)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a GuessConfig field of every part, e.g. --set seeds=0 "
                        "--set methods=bp,guess:4 --set mode=forward")
    p.add_argument("--perturbation", default="activity", choices=("activity", "weight"),
                   help="where tangents live; guesses are block-output gradients, so only "
                        "activity is supported")
    p.add_argument("--only", type=_common.str_list, metavar="CELL,...",
                   help="run only these cells (ids as --list-runs prints them)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--list-runs", action="store_true",
                   help="print one argument line per run (a SLURM array list), then exit")
    return p


def configs(args):
    """The preset's parts with every --set applied (fgexp.config.coerce reads the values)."""
    from fgexp.config import coerce
    from fgexp.nn.guess_runs import PRESETS
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise _common.UsageError(f"--set {item!r}: expected FIELD=VALUE, e.g. seeds=0,1")
        overrides[field.strip()] = value.strip()
    return tuple(coerce(part, overrides) for part in PRESETS[args.preset])


@_common.cli
def main(argv=None):
    args = parser().parse_args(argv)
    _common.setup_torch(args.threads)
    from tqdm import tqdm

    from fgexp.nn import guess_runs as g
    from fgexp.results import RunDir
    from fgexp.nn.guesses import GuessSpec
    GuessSpec(perturbation=args.perturbation)  # weight: one clear line
    parts = configs(args)
    g.validate(parts)
    todo_all = [(cfg, r) for cfg in parts for r in g.runs(cfg)]
    if args.only is not None:
        unknown = sorted(set(args.only) - {r.cell_id for _, r in todo_all})
        if unknown:
            raise _common.UsageError(f"--only {unknown[0]}: no such run in preset "
                                     f"{args.preset} (see --list-runs)")
        todo_all = [(cfg, r) for cfg, r in todo_all if r.cell_id in args.only]
    if args.list_runs:
        sets = [f"--set {shlex.quote(item)}" for item in args.set]
        print("\n".join(" ".join(["--preset", args.preset, "--only", r.cell_id,
                                   "--out", shlex.quote(args.out), *sets])
                         for _, r in todo_all))
        return 0
    device = _networks.pick_device(args.device)
    rates = {(id(cfg), w): g.learning_rate(cfg, w) for cfg in parts for w in cfg.widths}
    record = {"parts": [g.config_record(cfg) for cfg in parts], "preset": args.preset}
    rd = RunDir(args.out, NAME, record, g.COLUMNS, g.KEY_COLUMNS,
                timing_columns=g.TIMING_COLUMNS).check()
    done = rd.done()
    todo = [(cfg, r) for cfg, r in todo_all if r.cell_id not in done]
    rd.start(args.preset)
    data = {}
    for cfg, r in tqdm(todo, desc=NAME, unit="run", disable=args.no_progress):
        key = (cfg.dataset, cfg.train_limit, cfg.eval_limit)
        if key not in data:
            data[key] = g.load_data(cfg)
        total = cfg.max_epochs * len(data[key].train)
        with tqdm(total=total, desc=r.cell_id, unit="img", leave=False,
                  disable=args.no_progress) as bar:
            rows = g.run_rows(r, cfg, data[key], rates[(id(cfg), r.width)], device, bar)
        rd.write_cell(r.cell_id, rows)
    rd.finish()
    print(f"{NAME}: {len(todo)} runs trained, results in {rd.csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
