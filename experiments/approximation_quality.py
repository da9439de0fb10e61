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
import dataclasses
import os
import sys
import time
from pathlib import Path

import _common

from fgexp.approximation import COLUMNS, ENGINES, KEY_COLUMNS, METHODS, check_methods, run_cell

NAME = "approximation_quality"


@dataclasses.dataclass(frozen=True)
class ApproximationConfig:
    n: tuple[int, ...]            # gradient dimensions, Gaussian tangents (Figure 3)
    k: tuple[int, ...]            # numbers of tangents; the projection uses min(k, n) of them
    methods: tuple[str, ...]      # single (k = 1 only), sum, mean, *_normalized, projection
    samples: int                  # independent tangent draws per setting
    seed: int                     # run seed; each setting derives its own stream from it
    cone_n: tuple[int, ...]       # gradient dimensions of the cone grid (Figure 5a)
    cone_k: tuple[int, ...]       # numbers of cone tangents
    cone_angles: tuple[float, ...]  # degrees between every further tangent and the first
    cone_methods: tuple[str, ...]   # methods on cone tangents
    engine: str = "reduced"       # reduced: exact O(k) simulation; brute: full n-dim tangents


PRESETS = {
    "paper": ApproximationConfig(
        n=tuple(2 ** e for e in range(15)), k=tuple(2 ** e for e in range(11)),
        methods=METHODS, samples=1000, seed=0,
        cone_n=(64,), cone_k=(4, 16, 64), cone_angles=(15.0, 30.0, 45.0, 60.0, 75.0, 90.0),
        cone_methods=("mean", "projection")),
    "smoke": ApproximationConfig(
        n=(1, 4, 16, 64), k=(1, 4, 16, 128), methods=METHODS, samples=200, seed=0,
        cone_n=(16,), cone_k=(4, 16), cone_angles=(30.0, 90.0),
        cone_methods=("mean", "projection")),
}


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


def resolve(args) -> ApproximationConfig:
    """Preset plus flags; with --cone, --n/--k/--methods/--angles set the cone grid."""
    given = _common.grid_overrides(args, ("n", "k", "methods"), ("samples", "seed", "engine"))
    return dataclasses.replace(PRESETS[args.preset], **given)


def validate(config: ApproximationConfig, cone: bool) -> None:
    ns, ks = (config.cone_n, config.cone_k) if cone else (config.n, config.k)
    for label, values in (("n", ns), ("k", ks)):
        if not values or min(values) < 1:
            raise _common.UsageError(f"every {label} must be >= 1, got {list(values)}")
    lists = {"n": ns, "k": ks, "methods": config.cone_methods if cone else config.methods}
    if cone:
        lists["angles"] = config.cone_angles
    for label, values in lists.items():
        if len(set(values)) != len(values):  # repeated settings would repeat CSV keys
            raise _common.UsageError(f"--{label} lists a value twice: {list(values)}")
    if config.samples < 2:
        raise _common.UsageError(f"--samples must be >= 2 (spread and CI), got {config.samples}")
    if cone:
        check_methods(config.cone_methods, "cone")
        if not config.cone_angles or not all(0 < a <= 90 for a in config.cone_angles):
            raise _common.UsageError(f"cone angles must lie in (0, 90], got "
                                     f"{list(config.cone_angles)}")
        if min(ns) < 2 and max(ks) > 1:
            raise _common.UsageError("the cone sampler needs n >= 2 for k > 1")
    else:
        check_methods(config.methods, "normal")


def cells(config: ApproximationConfig, cone: bool) -> list[tuple[str, dict]]:
    """(cell id, run_cell arguments): one cell per n, and per angle for cones."""
    if not cone:
        return [(f"normal/n={n}", dict(n=n, ks=config.k, methods=config.methods,
                                       sampler="normal", angle_deg=None)) for n in config.n]
    return [(f"cone/n={n}/angle={a:g}", dict(n=n, ks=config.cone_k, methods=config.cone_methods,
                                             sampler="cone", angle_deg=float(a)))
            for n in config.cone_n for a in config.cone_angles]


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
    config = resolve(args)
    validate(config, args.cone)
    _common.setup_torch(args.threads)
    run = _common.run_dir(args, NAME, config, COLUMNS, KEY_COLUMNS, argv)
    run.start(args.preset)
    done = run.done()
    todo = [(cid, kw) for cid, kw in cells(config, args.cone) if cid not in done]
    from tqdm import tqdm
    start = time.perf_counter()
    for cell_id, kwargs in tqdm(todo, desc=NAME, disable=args.no_progress, unit="cell"):
        rows, raw = run_cell(samples=config.samples, seed=config.seed, engine=config.engine,
                             **kwargs)
        if args.raw:
            save_raw(run.dir / f"{NAME}_raw.npz", raw, kwargs["sampler"])
        run.write_cell(cell_id, rows)
    run.finish()
    skipped = len(cells(config, args.cone)) - len(todo)
    print(f"{NAME}: {len(todo)} cells computed, {skipped} already done, "
          f"{time.perf_counter() - start:.1f} s -> {run.csv_path}")

if __name__ == "__main__":
    sys.exit(main())
