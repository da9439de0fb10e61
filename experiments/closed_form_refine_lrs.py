"""Refine closed-form learning rates on the full step horizon (Rosenbrock, 25,000 steps).

The grid search of experiments/lr_search.py runs Rosenbrock with a 2,500-step horizon (the
full 25,000 steps x 26 rates x 88 settings is out of reach on 2 CPU cores). A short horizon
favours rates that make fast early progress; with forward gradients those rates stall later
(noisy steps leave the valley, early stopping ends the run). This script re-searches each
setting on the full horizon, on a log grid around its current rate (from `--below` decades
under to `--above` decades over, `--step` apart), with every gradient of one (function, n)
and every rate and seed in one batched descent, extracts the rate with
fgexp.lr_search.extract_best and merges it into the LR table (backend "grid-full").

  python experiments/closed_form_refine_lrs.py --function rosenbrock --n 2,4,8,16,32,64,128,256
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import _common


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", default="rosenbrock", help="a name in fgexp.functions")
    parser.add_argument("--n", type=_common.int_list, required=True, help="dimensions")
    parser.add_argument("--gradients", type=_common.str_list,
                        default=["bp", "fg-mean:1", "fg-mean:2", "fg-mean:4", "fg-mean:16",
                                 "frog:2", "frog:4", "frog:16"], help="label:k or bp")
    parser.add_argument("--below", type=float, default=1.25, help="decades under the rate")
    parser.add_argument("--above", type=float, default=0.25, help="decades over the rate")
    parser.add_argument("--step", type=float, default=0.25, help="grid step in decades")
    parser.add_argument("--seeds", type=_common.int_list, default=[0, 1])
    parser.add_argument("--patience", type=int, default=100, help="as in the grid search")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="extraction tolerance (0: the rate of the best mean loss)")
    parser.add_argument("--lr-table", default="results/lrs/closed_form.csv")
    return parser.parse_args(argv)


@_common.cli
def main(argv=None):
    args = parse(argv)
    import torch

    from closed_form import parse_gradient, search_command
    from fgexp import functions
    from fgexp.descent import descend_many
    from fgexp.directional import GradientSpec
    from fgexp.lr_search import extract_best, log_search, lookup_lr, merge_rows, result_row
    function = functions.get(args.function)
    if args.step <= 0 or args.below < 0 or args.above < 0:
        raise _common.UsageError("need --step > 0 and non-negative --below/--above")
    offsets = [-args.below + i * args.step
               for i in range(int(round((args.below + args.above) / args.step)) + 1)]
    rows = []
    for n in args.n:
        settings = []
        for text in args.gradients:
            label, k = parse_gradient(text)
            setting = {"function": args.function, "n": n, "angle_deg": None, "gradient": label,
                       "k": k, "sampler": None if label == "bp" else "normal"}
            setting["old_lr"] = lookup_lr(args.lr_table, setting, search_command(setting, False))
            settings.append(setting)
        specs = [GradientSpec(s["gradient"], s["k"] or 1) for s in settings]
        lrs_lxg = [[s["old_lr"] * 10 ** d for s in settings] for d in offsets]
        start = time.perf_counter()
        results = descend_many(function, function.start(n), specs, lrs_lxg, args.seeds,
                               function.max_steps, args.patience)
        for g, (setting, result) in enumerate(zip(settings, results)):
            gap_l = (result.best_value.double() - function.minimum(n)).clamp(min=0).mean(1)
            lrs = [row[g] for row in lrs_lxg]
            losses = [v if math.isfinite(v) else math.inf for v in gap_l.tolist()]
            picked = extract_best(lrs, losses, args.tolerance)  # 10**log10(lr): may round
            i = min(range(len(lrs)), key=lambda j: abs(math.log10(lrs[j] / picked)))
            lr, loss = lrs[i], losses[i]
            rows.append(result_row(setting, ("function", "n", "angle_deg"), lr, loss,
                                   len(lrs) * len(args.seeds), "grid-full"))
            print(f"{args.function} n={n} {setting['gradient']}:{setting['k'] or ''} "
                  f"{setting['old_lr']:.3g} -> {lr:.3g} (loss {loss:.4g})", flush=True)
        merge_rows(args.lr_table, ("function", "n", "angle_deg"), rows[-len(settings):])
        print(f"n={n}: {time.perf_counter() - start:.0f} s", flush=True)
    from pathlib import Path
    log_search(Path(args.lr_table).parent, Path(args.lr_table).stem,
               {"backend": "grid-full", "config": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    sys.exit(main())
