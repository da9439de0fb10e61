"""ResNet18 (train-mode BatchNorm) at batch 128 on mnist5k: each activity tangent scheme's cosine to
the true gradient and its step cost, in both modes (docs/resnet_vit.md).

Rows: one per (scheme, mode, gradient). `cosine_mean`/`cosine_std`: the estimate's cosine to bp's
gradient over `draws` tangent draws (simulated mode; forward mode computes the same estimator,
tested); `target_cosine`: the cosine of what the mean estimate averages to (its expectation,
fgexp.nn.activity.scheme_target) to bp's gradient: 1 for an unbiased scheme, below 1 for
held-stats. Step times: median wall and CPU seconds of one set_gradients call after a warm-up
(per-example forward: one timed step, no warm-up: it runs B passes per tangent), its ratio to bp,
and `train_epoch_seconds`, the training steps of one 3500-image epoch at this batch (no
evaluation). The model is at its seed-0 initialization; the batch is the first 128 training
digits.

    python benchmarks/run.py --only bn_estimators   # -> results/benchmarks/bn_estimators.csv
    python benchmarks/bn_estimators.py [--quick]     # print the rows only
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F

from fgexp.directional import GradientSpec
from fgexp.nn import activity
from fgexp.nn import runs as nets
from fgexp.nn.gradients import set_gradients
from nn_steps import time_steps

TRAIN_IMAGES = 3500  # mnist5k's training split
CPU = torch.device("cpu")


def setup(batch: int):
    """ResNet18 at its seed-0 initialization in train mode, and the first `batch` digits."""
    data = nets.load_data(nets.NetConfig(datasets=("mnist5k",)), "mnist5k")
    run = nets.Run("resnet18", "mnist5k", None, "bp", None, 0)
    model = nets.build_model(run, data, seed=0).train()
    return model, data.train.x[:batch], data.train.y[:batch]


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """In float64: over ResNet18's 11M entries a float32 cosine is off by about 1e-3."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def estimate(model, inputs, targets, spec, scheme, seed) -> torch.Tensor:
    set_gradients(model, inputs, targets, spec, torch.Generator().manual_seed(seed),
                  activity_tangents=scheme)
    return flat_grads(model)


def cosine_columns(model, inputs, targets, spec, scheme, exact, draws) -> dict:
    values = [cosine(estimate(model, inputs, targets, spec, scheme, s), exact)
              for s in range(draws)]
    target = activity.scheme_target(model, inputs, targets, scheme)
    target_n = torch.cat([target[name].flatten() for name, _ in model.named_parameters()])
    return {"cosine_mean": statistics.mean(values),
            "cosine_std": statistics.stdev(values) if draws > 1 else math.nan,
            "draws": draws, "target_cosine": cosine(target_n, exact)}


def cases(quick: bool):
    """(scheme, mode, gradient, k, timed repetitions): every coupled scheme in both modes."""
    gradients = (("frog", 2),) if quick else (("fg-mean", 1), ("frog", 16))
    reps = 1 if quick else 3
    for gradient, k in gradients:
        for scheme in activity.COUPLED_SCHEMES:
            yield scheme, "simulated", gradient, k, reps
            if scheme != "per-example":
                yield scheme, "forward", gradient, k, (1 if k > 1 and not quick else reps)
            elif k == 1:  # B passes per tangent: one step, and only at k = 1
                yield scheme, "forward", gradient, k, 0


def run(quick: bool) -> list[dict]:
    batch = 16 if quick else 128
    draws = 2 if quick else 5
    model, inputs, targets = setup(batch)
    steps = math.ceil(TRAIN_IMAGES / batch)
    bp_spec = GradientSpec("bp")
    bp_time = time_steps(lambda: set_gradients(model, inputs, targets, bp_spec), CPU, 1,
                         1 if quick else 3)
    set_gradients(model, inputs, targets, bp_spec)
    exact = flat_grads(model)
    fixed = {"model": "resnet18", "dataset": "mnist5k", "batch": batch}
    rows = [{**fixed, "scheme": "", "mode": "", "gradient": "bp", "k": "", "cosine_mean": 1.0,
             "cosine_std": 0.0, "draws": 1, "target_cosine": 1.0, **bp_time,
             "time_ratio_to_bp": 1.0, "train_epoch_seconds": bp_time["seconds_per_step"] * steps}]
    cosines = {}
    for scheme, mode, gradient, k, reps in cases(quick):
        spec = GradientSpec(gradient, k=k, mode=mode, perturbation="activity")
        key = (scheme, gradient, k)
        if key not in cosines:  # the same estimator in both modes: measured once, simulated
            cosines[key] = cosine_columns(model, inputs, targets,
                                          GradientSpec(gradient, k=k, mode="simulated",
                                                       perturbation="activity"),
                                          scheme, exact, draws)
        timed = time_steps(lambda: estimate(model, inputs, targets, spec, scheme, 0), CPU,
                           warmup=1 if reps else 0, repetitions=max(reps, 1))
        rows.append({**fixed, "scheme": scheme, "mode": mode, "gradient": gradient, "k": k,
                     **cosines[key], **timed,
                     "time_ratio_to_bp": timed["seconds_per_step"] / bp_time["seconds_per_step"],
                     "train_epoch_seconds": timed["seconds_per_step"] * steps})
        print(f"{scheme:12} {mode:9} {gradient}:{k:<3} cos {cosines[key]['cosine_mean']:.4f} "
              f"target {cosines[key]['target_cosine']:.4f} "
              f"{timed['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 16, frog:2, one repetition")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import pandas as pd
    print(pd.DataFrame(run(args.quick)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
