"""Approximation quality of forward gradients (paper Sections 4.1 and 4.3; Figures 3 and 5a).

For the true gradient g = ones(n), every setting (n, k, method) draws SAMPLES independent sets
of k tangents and writes one CSV row: mean, standard deviation and 95% CI of the cosine
similarity to g and of the norm ratio |estimate| / |g|.

  python experiments/approximation_quality.py --preset paper --out results          # Figure 3
  python experiments/approximation_quality.py --preset paper --cone --out results   # Figure 5a
  python experiments/approximation_quality.py --n 2^4..2^6 --k 1,8,64 --samples 500 --raw

Both modes write DIR/approximation_quality.csv (sampler normal or cone); the config holds both
grids, so one directory takes both runs. With --cone, --n, --k, --methods and --angles set the
cone grid. One cell per n (per n and angle for cones): a rerun skips finished cells.
The default engine simulates Gaussian tangents exactly in O(k) numbers per draw (see
fgexp/approximation.py); --engine brute draws the full (samples, k, n) tangents instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _common

from fgexp import approximation
from fgexp.approximation import COLUMNS, ENGINES, KEY_COLUMNS, METHODS, PRESETS

NAME = "approximation_quality"
# Flags that override config fields (with --cone, n, k, methods and angles set the cone grid).
FIELDS = ("n", "k", "methods", "angles", "samples", "seed", "engine")


def parse(argv):
    parser = _common.make_parser(__doc__, PRESETS)
    # Keep the docstring's line breaks and still show every default.
    parser.formatter_class = type("Formatter", (argparse.RawDescriptionHelpFormatter,
                                                argparse.ArgumentDefaultsHelpFormatter), {})
    parser.add_argument("--cone", action="store_true",
                        help="run the cone grid (Section 4.3) instead of Gaussian tangents")
    parser.add_argument("--n", type=_common.int_list, help="dimensions, e.g. 2^0..2^14")
    parser.add_argument("--k", type=_common.int_list, help="numbers of tangents, e.g. 1,4,16")
    parser.add_argument("--methods", type=_common.str_list,
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--angles", type=_common.float_list,
                        help="cone angles in degrees (with --cone), e.g. 15,30,45")
    parser.add_argument("--samples", type=int, help="tangent draws per setting")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument("--engine", choices=ENGINES,
                        help="reduced (exact, fast) or brute (full tangents; reference)")
    parser.add_argument("--raw", action="store_true",
                        help=f"also keep per-sample values in OUT/{NAME}_raw.npz")
    return parser.parse_args(argv)


def save_raw(path: Path, raw: dict, sampler: str) -> None:
    """Add one cell's per-sample values to a compressed npz (rewritten atomically)."""
    import numpy as np
    arrays = dict(np.load(path)) if path.exists() else {}
    for (n, k, method, angle), (cos_s, ratio_s) in raw.items():
        key = f"{sampler}/n={n}/k={k}/{method}" + ("" if angle is None else f"/angle={angle:g}")
        arrays[f"{key}/cos"], arrays[f"{key}/norm_ratio"] = cos_s, ratio_s
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


@_common.cli
def main(argv=None):
    args = parse(argv)
    config = approximation.resolve(PRESETS[args.preset], _common.given(args, FIELDS), args.cone)
    approximation.validate(config, args.cone)
    _common.setup_torch(args.threads)
    run = _common.run_dir(args, NAME, config, COLUMNS, KEY_COLUMNS, argv)
    run.start(args.preset)
    done = run.done()
    all_cells = approximation.cells(config, args.cone)
    todo = [(cid, kw) for cid, kw in all_cells if cid not in done]
    from tqdm import tqdm
    start = time.perf_counter()
    for cell_id, kwargs in tqdm(todo, desc=NAME, disable=args.no_progress, unit="cell"):
        rows, raw = approximation.run_cell(**kwargs)
        if args.raw:
            save_raw(run.dir / f"{NAME}_raw.npz", raw, kwargs["sampler"])
        run.write_cell(cell_id, rows)
    run.finish()
    print(f"{NAME}: {len(todo)} cells computed, {len(all_cells) - len(todo)} already done, "
          f"{time.perf_counter() - start:.1f} s -> {run.csv_path}")


if __name__ == "__main__":
    sys.exit(main())
