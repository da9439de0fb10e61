"""Per-epoch training cost of every gradient for ResNet18 and the ViT of the `resnet_vit` cpu
preset (hidden size and patch in the `width` and `patch` columns), in simulated and forward
mode, with ResNet18's activity tangent schemes
(docs/resnet_vit.md).

Rows: one per (model, scheme, mode, gradient) at the preset's training batch (64) on the first
64 mnist5k training digits, the model at its seed-0 initialization in train mode:
`seconds_per_step`, the median wall seconds of one set_gradients step after a warm-up (and its
CPU seconds), its ratio to bp's step, and `train_epoch_seconds`, that step times the 55 steps of
one 3500-digit epoch. `eval_epoch_seconds` (the same on every row of a model) is the time the
preset's runs also spend each epoch evaluating all three splits (5000 digits at batch 1024).
ResNet18 runs per-example (the paper's scheme), held-stats and independent tangents; the ViT,
without BatchNorm, its one (shared) scheme. Per-example forward mode runs B = 64 passes per
tangent, so it is timed at k = 1 only (one step, no warm-up); its other tangent counts cost
about k times that and have no row.

    python benchmarks/run.py --only epoch_cost   # -> results/benchmarks/epoch_cost.csv
    python benchmarks/epoch_cost.py [--quick]     # print the rows only
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from fgexp.nn import runs as nets
from fgexp.nn.activity import ActivitySpec
from fgexp.nn.gradients import set_gradients
from fgexp.nn.train import evaluate
from nn_steps import time_steps

BATCH = 64
TRAIN_IMAGES, EVAL_IMAGES = 3500, 5000  # mnist5k: training split; all three splits
VIT_WIDTH = nets.PRESETS["resnet_vit"]["cpu"].widths[0]
VIT_PATCH = nets.PRESETS["resnet_vit"]["cpu"].vit_patch
SCHEMES = {"resnet18": ("per-example", "held-stats", "independent"), "vit": ("shared",)}
CPU = torch.device("cpu")


def setup(model_name: str):
    """The preset's model at its seed-0 initialization, the data, and a training batch."""
    data = nets.load_data(nets.NetConfig(datasets=("mnist5k",)), "mnist5k")
    width = VIT_WIDTH if model_name == "vit" else None
    run = nets.Run(model_name, "mnist5k", width, "bp", None, 0)
    model = nets.build_model(run, data, seed=0, vit_patch=VIT_PATCH).train()
    return model, data, data.train.x[:BATCH], data.train.y[:BATCH]


def eval_seconds(model, data) -> float:
    """One pass of evaluation over the three splits, as fgexp.nn.train runs each epoch."""
    start = time.perf_counter()
    with torch.no_grad():
        for split in (data.train, data.val, data.test):
            evaluate(model, split, 1024)
    return time.perf_counter() - start


def cases(model_name: str, quick: bool):
    """(scheme, mode, gradient label, k) in table order; bp first, once. Quick: two gradients,
    no independent tangents and no per-example forward step (15 s at k = 1)."""
    gradients = [("fg-mean", 1), ("frog", 2)] if quick else \
        [("fg-mean", 1), ("fg-mean", 2), ("fg-mean", 4), ("fg-mean", 16),
         ("frog", 2), ("frog", 4), ("frog", 16)]
    yield "exact", "simulated", "bp", None
    for scheme in SCHEMES[model_name]:
        if quick and scheme == "independent":
            continue
        for mode in ("simulated", "forward"):
            for gradient, k in gradients:
                if scheme == "per-example" and mode == "forward" and (quick or k > 1):
                    continue  # B passes per tangent: about k x the k = 1 row
                yield scheme, mode, gradient, k


def bench_model(model_name: str, quick: bool) -> list[dict]:
    model, data, inputs, targets = setup(model_name)
    evaluation = eval_seconds(model, data)
    steps = math.ceil(TRAIN_IMAGES / BATCH)
    rows = []
    for scheme, mode, gradient, k in cases(model_name, quick):
        spec = ActivitySpec(gradient, k or 1, "normal", mode, perturbation="activity",
                            activity_tangents=None if scheme == "exact" else scheme)
        generator = torch.Generator().manual_seed(0)
        slow = scheme == "per-example" and mode == "forward"
        warmup, repetitions = (0, 1) if quick or slow else (1, 2)
        timing = time_steps(lambda: set_gradients(model, inputs, targets, spec, generator,
                                                  activity_tangents=spec.activity_tangents),
                            CPU, warmup, repetitions)
        vit = model_name == "vit"
        rows.append({"model": model_name, "width": VIT_WIDTH if vit else "",
                     "patch": VIT_PATCH if vit else "", "batch": BATCH, "scheme": scheme,
                     "mode": mode, "gradient": gradient, "k": k or "", **timing,
                     "train_epoch_seconds": timing["seconds_per_step"] * steps,
                     "eval_epoch_seconds": evaluation})
    bp = rows[0]["seconds_per_step"]
    for row in rows:
        row["time_ratio_to_bp"] = row["seconds_per_step"] / bp
    return rows


def run(quick: bool) -> list[dict]:
    return [row for name in SCHEMES for row in bench_model(name, quick)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="bp and two gradients per model, the cheaper schemes only")
    args = parser.parse_args(argv)
    for row in run(args.quick):
        print({key: round(v, 4) if isinstance(v, float) else v for key, v in row.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
