"""Throughput of FC network runs trained as one batch (fgexp.nn.batched) against the same runs
trained one after another (fgexp.nn.train), in run-steps per second.

Cases: FC-256 and FC-1024 on mnist5k at batch 64, R = 1, 8, 24, 48 runs, both modes,
simulated-mode activity perturbation as in Figure 6 (forward mode: forward-mode activity
perturbation). The R runs cycle through the 8 gradients of Figure 6 (bp, fg-mean k = 1, 2, 4,
16, frog k = 2, 4, 16) with seeds 0, 1, ... Each measurement is one training epoch over the
first `steps` x 64 training digits (the real loops: per-run SGD steps, no evaluation),
repeated after a warm-up; rows hold the median seconds, the run-steps per second of both and
their ratio, measured in the same process.

    python benchmarks/nn_batched.py [--quick]
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from fgexp.nn import runs as nets
from fgexp.nn.batched.loop import train_epoch as batched_epoch
from fgexp.nn.batched.stacked import stack
from fgexp.nn.data import DataSet, Split
from fgexp.nn.gradients import set_gradients
from fgexp.nn.train import seeded_generators
from fgexp.nn.train import train_epoch as single_epoch
from fgexp.paper import PAPER_GRADIENTS, parse_gradient

WIDTHS = (256, 1024)
RUNS = (1, 8, 24, 48)


def figure6_runs(width: int, count: int) -> list[nets.Run]:
    """`count` runs cycling through the Figure 6 gradients, seeds counting up per cycle."""
    return [nets.Run("fc", "mnist5k", width, *parse_gradient(PAPER_GRADIENTS[i % 8]), i // 8)
            for i in range(count)]


def time_batched(runs, cfg, split, reps) -> float:
    models = [nets.build_model(r, DATASET[0], r.seed) for r in runs]
    specs = [nets.spec_of(r, cfg) for r in runs]
    tcfgs = [nets.train_config(cfg, r, 1e-3) for r in runs]
    lrs = torch.full((len(runs),), 1e-3)
    x, y = split.x.flatten(1), split.y
    times = []
    for _ in range(reps + 1):  # the first is the warm-up
        stacked, gens = stack(models), [seeded_generators(r.seed) for r in runs]
        start = time.perf_counter()
        batched_epoch(stacked, x, y, specs, lrs, tcfgs, gens)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def time_sequential(runs, cfg, split, reps) -> float:
    times = []
    for _ in range(reps + 1):
        total = 0.0
        for r in runs:
            model = nets.build_model(r, DATASET[0], r.seed)
            tcfg = nets.train_config(cfg, r, 1e-3)
            optimizer = torch.optim.SGD(model.parameters(), lr=tcfg.lr)
            batch_gen, tangent_gen = seeded_generators(r.seed)
            start = time.perf_counter()
            single_epoch(model, split, nets.spec_of(r, cfg), optimizer, tcfg, batch_gen,
                         tangent_gen, None, set_gradients)
            total += time.perf_counter() - start
        times.append(total)
    return statistics.median(times[1:])


DATASET: list[DataSet] = []  # loaded once per process


def run(quick: bool) -> list[dict]:
    cfg = nets.PRESETS["fc_mnist"]["cpu"]
    if not DATASET:
        DATASET.append(nets.load_data(cfg, "mnist5k"))
    steps, reps = (3, 1) if quick else (5, 2)
    split = Split(DATASET[0].train.x[:steps * 64], DATASET[0].train.y[:steps * 64])
    rows = []
    for width in WIDTHS:
        for mode in ("simulated", "forward"):
            mode_cfg = dataclasses.replace(cfg, mode=mode)
            for count in RUNS[:2] if quick else RUNS:
                runs = figure6_runs(width, count)
                batched = time_batched(runs, mode_cfg, split, reps)
                sequential = time_sequential(runs, mode_cfg, split, reps)
                rows.append({"case": f"fc{width}-{mode}-activity-R{count}", "width": width,
                             "mode": mode, "runs": count, "batch": 64, "steps": steps,
                             "batched_seconds": batched, "sequential_seconds": sequential,
                             "batched_run_steps_per_s": count * steps / batched,
                             "sequential_run_steps_per_s": count * steps / sequential,
                             "speedup": sequential / batched})
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    import argparse
    import warnings
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="R = 1 and 8 only (seconds)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    torch.set_num_threads(1)
    run(quick=args.quick)
