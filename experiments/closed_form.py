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
import sys
import time

import _common

from fgexp import closed_form
from fgexp.closed_form import COLUMNS, KEY_COLUMNS, PRESETS
from fgexp.paper import FUNCTIONS

NAME = "closed_form"
# Flags that override config fields (with --cone, the first four set the cone grid), and --k.
FIELDS = ("functions", "n", "gradients", "angles", "k", "seeds", "max_steps", "patience", "mode",
          "lr_table", "lr_rule")


def parse(argv):
    parser = _common.make_parser(__doc__, PRESETS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--cone", action="store_true",
                        help="run the cone grid (Section 4.3, Figure 5b) instead of Figure 4's")
    parser.add_argument("--functions", type=_common.str_list,
                        help=f"comma-separated subset of {','.join(FUNCTIONS)}")
    parser.add_argument("--n", type=_common.int_list, help="dimensions, e.g. 2^0..2^10")
    parser.add_argument("--gradients", type=_common.str_list,
                        help="e.g. bp,fg-mean:1,frog:16 (label:k; fg-mean:1 is the single tangent;"
                        " a label without :k takes --k, or k = 1)")
    parser.add_argument("--k", type=_common.int_list,
                        help="tangent counts for labels without ':k', e.g. 2,4; alone, every "
                        "forward gradient of the preset takes them (bp stays)")
    parser.add_argument("--angles", type=_common.float_list,
                        help="cone angles in degrees (with --cone), e.g. 15,30,45")
    parser.add_argument("--seeds", type=_common.int_list, help="tangent seeds, e.g. 0..4")
    parser.add_argument("--max-steps", type=int, help="step limit (default: the paper's)")
    parser.add_argument("--patience", type=int, help="steps without improvement before stopping")
    parser.add_argument("--mode", choices=closed_form.MODES,
                        help="forward-mode AD (default) or V @ grad after backprop")
    parser.add_argument("--lr-table", help="LR table CSV (default results/lrs/closed_form.csv)")
    parser.add_argument("--lr-rule", help="take every forward-gradient rate from this rule of "
                        "fgexp.lr.rules (isotropic, same-as-bp), applied to bp's rate in the "
                        "LR table (docs/lr_rules.md)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1[,V2]",
                        help="run only the cells whose function, n or angle is listed (repeatable;"
                        " not part of the config: later runs add the other cells to --out)")
    return parser.parse_args(argv)


@_common.cli
def main(argv=None):
    args = parse(argv)
    config = closed_form.resolve(PRESETS[args.preset], _common.given(args, FIELDS), args.cone)
    closed_form.validate(config, args.cone)
    _common.check_table(args.lr_table, "--lr-table")
    _common.setup_torch(args.threads)
    run = _common.run_dir(args, NAME, config, COLUMNS, KEY_COLUMNS, argv)
    all_cells = closed_form.select_cells(closed_form.cells(config, args.cone), args.only)
    run.check()
    done = run.done()
    todo = [(cid, cell) for cid, cell in all_cells if cid not in done]
    closed_form.lookup_rates(config, args.cone, todo)
    run.start(args.preset)
    from tqdm import tqdm
    start = time.perf_counter()
    bar = tqdm(todo, desc=NAME, disable=args.no_progress, unit="cell")
    for cell_id, cell in bar:
        bar.set_postfix_str(cell_id)
        run.write_cell(cell_id, closed_form.run_cell(config, cell, progress=not args.no_progress))
    run.finish()
    print(f"{NAME}: {len(todo)} cells computed, {len(all_cells) - len(todo)} already done, "
          f"{time.perf_counter() - start:.1f} s -> {run.csv_path}")


if __name__ == "__main__":
    sys.exit(main())
