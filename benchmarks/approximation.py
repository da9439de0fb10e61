"""Approximation-quality engines: per-sample loop vs batched brute force vs exact reduced.

Rows: one per (n, k, method, implementation) with the median samples/s over repetitions, the
spread (half the range of the repetitions, samples/s) and the speed-up over the per-sample loop
measured in the same run. With quick=False, also the paper preset's wall time from scratch
(normal and cone grids, into a temporary directory) and the loop's time for the same grid,
estimated from timed loop samples of every (n, k) setting (too slow to run in full).
Case `projection`: fgexp.aggregate.projection of one float32 tangent set of FC-1024's size
(1.86M) for k = 1, 4, 16, against the QR path it falls back to, forced for every set
(median ms over repetitions, ratio to QR in the same run).

    python benchmarks/approximation.py [--quick]
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from fgexp import aggregate
from fgexp import approximation as approx
from fgexp.lr.rules import network_dimension

IMPLEMENTATIONS = ("loop", "batched", "reduced")


def _sampler(implementation: str, n: int, k: int, method: str):
    """A callable samples -> None drawing that many samples with one implementation."""
    group = approx.group_of(method)
    seq = approx.setting_seed(0, "normal", n, k, group)
    if implementation == "loop":
        return lambda s: approx.loop_baseline(n, k, method, s, approx.torch_generator(seq))
    engine = "brute" if implementation == "batched" else "reduced"
    return lambda s: approx.sample_group(n, k, group, [method], s, seq, engine=engine)


def _timed(fn, samples: int) -> float:
    start = time.perf_counter()
    fn(samples)
    return time.perf_counter() - start


def _calibrate(fn, target_s: float, cap: int) -> int:
    """Samples per repetition: grow x4 until one call takes target_s, at most cap."""
    fn(1)  # warm-up: first-call costs (allocator, lazy imports) must not set the size
    samples = 1
    while samples < cap and _timed(fn, samples) < target_s:
        samples *= 4
    return min(samples, cap)


def measure(implementation: str, n: int, k: int, method: str, repetitions: int,
            target_s: float) -> dict:
    fn = _sampler(implementation, n, k, method)
    samples = _calibrate(fn, target_s, cap=1000)
    rates = [samples / _timed(fn, samples) for _ in range(repetitions)]
    return {"case": "engine", "n": n, "k": k, "method": method,
            "implementation": implementation, "samples_per_s": statistics.median(rates),
            "spread": (max(rates) - min(rates)) / 2, "repetitions": repetitions,
            "samples": samples}


def engine_rows(quick: bool) -> list[dict]:
    rows = []
    repetitions, target_s = (3, 0.03) if quick else (5, 0.2)
    for n in (64, 1024, 16384):
        for k in (1, 16, 64):
            for method in ("mean", "projection"):
                case = [measure(impl, n, k, method, repetitions, target_s)
                        for impl in IMPLEMENTATIONS]
                for row in case:
                    row["speedup_vs_loop"] = row["samples_per_s"] / case[0]["samples_per_s"]
                rows += case
    return rows


def _loop_seconds_per_sample(n: int, k: int, method: str) -> float:
    """Seconds per loop sample; a fast first sample only warms up, then more are timed."""
    fn = _sampler("loop", n, k, method)
    samples, elapsed = 1, _timed(fn, 1)
    while elapsed < 0.02 and samples < 1000:
        samples *= 8
        elapsed = _timed(fn, samples)
    return elapsed / samples


def paper_rows() -> list[dict]:
    """The paper preset's cells from scratch, and the loop's estimated time for the same grid."""
    preset = approx.PRESETS["paper"]
    start = time.perf_counter()
    for cone in (False, True):  # the cells experiments/approximation_quality.py computes
        for _, kwargs in approx.cells(preset, cone):
            approx.run_cell(**kwargs)
    wall_s = time.perf_counter() - start
    # Loop estimate, Gaussian grid only: the four conical methods each cost about one "mean"
    # sample; single is a k = 1 mean; the projection is timed itself.
    loop_s = 0.0
    for n in preset.n:
        loop_s += preset.samples * _loop_seconds_per_sample(n, 1, "mean")  # single
        for k in preset.k:
            per_sample = (4 * _loop_seconds_per_sample(n, k, "mean")
                          + _loop_seconds_per_sample(n, k, "projection"))
            loop_s += preset.samples * per_sample
    return [
        {"case": "paper_preset", "implementation": "reduced", "wall_s": wall_s,
         "repetitions": 1, "speedup_vs_loop": loop_s / wall_s,
         "note": "normal and cone grids, from scratch, one process (compute only)"},
        {"case": "paper_preset", "implementation": "loop", "wall_s": loop_s, "repetitions": 1,
         "speedup_vs_loop": 1.0,
         "note": "estimated: timed loop samples per (n, k) x 1000, Gaussian grid only"},
    ]


def _projection_ms(tangents_kxn, jvps_k, repetitions: int) -> list[float]:
    aggregate.projection(tangents_kxn, jvps_k)  # warm-up
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        aggregate.projection(tangents_kxn, jvps_k)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def projection_rows(quick: bool) -> list[dict]:
    """The Gram path against the QR fallback on one network-sized Gaussian tangent set."""
    rows, repetitions = [], 3 if quick else 7
    gen = torch.Generator().manual_seed(0)
    n = network_dimension("fc", "mnist", 1024, "weight")
    for k in ((1, 16) if quick else (1, 4, 16)):
        tangents_kxn = torch.randn(k, n, generator=gen)
        jvps_k = torch.randn(k, generator=gen)
        case = []
        for implementation, max_cond in (("gram", aggregate._MAX_GRAM_COND), ("qr", {})):
            saved, aggregate._MAX_GRAM_COND = aggregate._MAX_GRAM_COND, max_cond
            try:
                times = _projection_ms(tangents_kxn, jvps_k, repetitions)
            finally:
                aggregate._MAX_GRAM_COND = saved
            case.append({"case": "projection", "n": n, "k": k,
                         "method": "projection", "implementation": implementation,
                         "ms": statistics.median(times), "spread": (max(times) - min(times)) / 2,
                         "repetitions": repetitions})
        for row in case:
            row["ratio_to_qr"] = row["ms"] / case[-1]["ms"]
        rows += case
    return rows


def run(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    np.random.seed(0)
    rows = projection_rows(quick) + engine_rows(quick)
    if not quick:
        rows += paper_rows()
    return rows


def _print_table(rows: list[dict]) -> None:
    columns = ["case", "n", "k", "method", "implementation", "samples_per_s", "spread",
               "speedup_vs_loop", "ms", "ratio_to_qr", "wall_s"]
    print(" ".join(f"{c:>15}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:>15.4g}" if isinstance(v, float) else f"{v!s:>15}")
        print(" ".join(cells))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings only (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _print_table(run(quick=args.quick))
