"""GPU check, minutes long: CUDA correctness, step cost and memory, short mnist5k training runs.

Parts (docs/benchmarks.md, "GPU check"):
  correctness  forward equals simulated (FC, ResNet18, ViT; weight and activity perturbation;
               k = 1, 4; mean and projection) within the CPU tests' bound; bp on CUDA equals bp
               on CPU for the same weights and batch; seeded tangents reproduce. TF32 is off here.
  steps        benchmarks/nn_steps.py's measurement on CUDA: bp, forward and simulated frog,
               activity and weight, k = 1, 4, 16; FC-1024 and FC-4096 (batch 64), ResNet18
               (128), ViT (64); median s/step with CUDA synchronisation, peak memory from
               torch.cuda.max_memory_allocated (reset per case), ratios to bp of the same run.
  training     a few epochs of FC-4096 and ResNet18 on mnist5k, bp and frog k = 16.
Writes <out>/{correctness,nn_steps,training}_cuda.csv (_cpu for the `--device cpu --tiny` dry
run), provenance on every row. Exit 0: checks passed; 1: one failed; 2: refused (no CUDA, ...).

    python benchmarks/device_check.py [--out DIR] [--budget-s S] [--estimate-only] [--part P]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PARTS = ("correctness", "steps", "training")


@dataclass(frozen=True)
class CheckConfig:
    check_models: tuple = (("fc", 1024), ("resnet18", None), ("vit", None))  # (model, width)
    image_size: int = 28              # pixels; MNIST digits
    check_batch: int = 8              # examples per correctness batch (the slow CPU test's size)
    check_ks: tuple[int, ...] = (1, 4)  # tangents in the correctness checks
    tolerance: float = 1e-4           # relative error bound of tests/test_nn_gradients.py
    bench: tuple = (("fc", 1024, 64), ("fc", 4096, 64), ("resnet18", None, 128),
                    ("vit", None, 64))  # (model, width, batch) of the step benchmark
    bench_ks: tuple[int, ...] = (1, 4, 16)
    warmup: int = 3                   # untimed steps per case (kernel loading and selection)
    repetitions: int = 20             # timed steps per case; the median is reported
    train_models: tuple = (("fc", 4096), ("resnet18", None))  # (model, width) on mnist5k
    train_gradients: tuple[str, ...] = ("bp", "frog:16")
    train_mode: str = "forward"       # the forward-mode path (the paper simulates; equal by part 1)
    # SGD rates from the LR tables (results/lrs: fc_mnist.csv at width 1024, resnet_vit.csv)
    lrs: tuple = (("fc", "bp", 0.19), ("fc", "frog", 0.4), ("resnet18", "bp", 0.01),
                  ("resnet18", "frog", 0.001))
    epochs: int = 5                   # training epochs per run
    train_limit: int | None = None    # training digits (None: all 3500)
    eval_limit: int | None = None     # validation and test digits (None: 500 and 1000)
    budget_s: float = 480.0           # refuse to start above this estimate; skip work past it


FULL = CheckConfig()
# The CPU dry run: every code path at toy sizes, in seconds (tests/test_device_check.py).
TINY = CheckConfig(check_models=(("fc", 12), ("vit", 16)), image_size=8, check_batch=3,
                   check_ks=(1, 2), bench=(("fc", 16, 4),), bench_ks=(2,), warmup=0,
                   repetitions=2, train_models=(("fc", 32),), train_gradients=("bp", "frog:2"),
                   epochs=1, train_limit=16, eval_limit=16)

# The run-time estimate. No GPU has run this suite, so these are reasoned guesses for one
# H200/A100: published ResNet18 training throughput (about 3000 ImageNet images/s on an A100,
# about 14 TFLOP/s effective) makes our 28-pixel steps (12 GFLOP for bp at batch 128) compute
# well under 1 ms, so eager steps are bound by kernel launches (a few hundred at about 10-20 us
# each): 15 ms for ResNet18 and ViT, 2 ms for FC. The committed CPU runs
# (results/benchmarks/nn_steps.csv) give the cost of each extra tangent in bp steps (ResNet18
# and ViT activity k = 16: 5.5x and 10.5x bp; weight: about 1x bp per tangent), rounded up.
GPU_BP_STEP_S = {"fc": 0.002, "resnet18": 0.015, "vit": 0.015}
PER_TANGENT = {("forward", "activity"): 0.7, ("forward", "weight"): 1.2,
               ("simulated", "activity"): 0.2, ("simulated", "weight"): 0.2}
CPU_BP_STEP_S = 0.3  # the CPU bp reference of one correctness batch (ViT at batch 8: ~0.12 s)
EVAL_S = 1.0         # one evaluation of train, validation and test splits
FIXED_S = 60.0       # CUDA context, cuBLAS/cuDNN handles, lazy kernel loading, imports, data
SAFETY = 2.0         # the estimate is SAFETY x the sum of the guesses, plus FIXED_S


def step_guess_s(model: str, spec) -> float:
    if spec.is_exact:
        return GPU_BP_STEP_S[model]
    return GPU_BP_STEP_S[model] * (1 + spec.k * PER_TANGENT[spec.mode, spec.perturbation])


def step_methods(ks) -> list[tuple[str, object]]:
    from fgexp.directional import GradientSpec
    methods = [("bp", GradientSpec("bp"))]
    for mode in ("forward", "simulated"):
        for perturbation in ("activity", "weight"):
            for k in ks:
                spec = GradientSpec("frog", k=k, mode=mode, perturbation=perturbation)
                methods.append((f"{mode}-{perturbation}-frog-k{k}", spec))
    return methods


def correctness_specs(cfg: CheckConfig):
    """(forward spec, simulated spec) pairs of the forward-equals-simulated checks."""
    from fgexp.directional import GradientSpec
    return [tuple(GradientSpec(g, k=k, mode=m, perturbation=p) for m in ("forward", "simulated"))
            for p in ("weight", "activity") for k in cfg.check_ks for g in ("fg-mean", "frog")]


def train_steps(cfg: CheckConfig) -> int:
    from fgexp.nn.data import MNIST5K_SPLIT
    return math.ceil((cfg.train_limit or MNIST5K_SPLIT[0]) / 64)  # batch 64 for MNIST-like data


def train_spec(cfg: CheckConfig, token: str):
    from fgexp.nn.runs import NetConfig, Run, spec_of
    from fgexp.paper import parse_gradient
    return spec_of(Run("x", "mnist5k", None, *parse_gradient(token), 0),
                   NetConfig(mode=cfg.train_mode, perturbation="activity"))


def estimate_s(cfg: CheckConfig, parts=PARTS) -> dict:
    """Guessed GPU seconds per part (SAFETY included) and in total (FIXED_S added)."""
    guess = dict.fromkeys(parts, 0.0)
    if "correctness" in parts:
        for model, _ in cfg.check_models:
            pairs = sum(step_guess_s(model, f) + step_guess_s(model, s)
                        for f, s in correctness_specs(cfg))
            guess["correctness"] += pairs + 3 * GPU_BP_STEP_S[model] + CPU_BP_STEP_S
    if "steps" in parts:
        for model, _, _ in cfg.bench:
            calls = cfg.warmup + cfg.repetitions + 1  # the last: the memory measurement
            guess["steps"] += calls * sum(step_guess_s(model, spec)
                                          for _, spec in step_methods(cfg.bench_ks))
    if "training" in parts:
        for model, _ in cfg.train_models:
            for token in cfg.train_gradients:
                epoch = train_steps(cfg) * step_guess_s(model, train_spec(cfg, token)) + EVAL_S
                guess["training"] += cfg.epochs * epoch + EVAL_S
    guess = {part: SAFETY * s for part, s in guess.items()}
    return {**guess, "total": FIXED_S + sum(guess.values())}


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def flat_grads(model, inputs, targets, spec, seed: int):
    import torch
    from fgexp.nn.gradients import set_gradients
    model = copy.deepcopy(model)  # fresh BatchNorm statistics for every step
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    set_gradients(model, inputs, targets, spec, generator)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def correctness_rows(cfg: CheckConfig, device) -> list[dict]:
    import torch
    from fgexp import tangents
    from fgexp.directional import GradientSpec
    from fgexp.nn.models import build
    rows = []

    def record(check, model, value_fn, bound, spec=None):
        """One row; an error in value_fn (a kernel without forward-mode AD, say) fails only it."""
        try:
            value, note = float(value_fn()), ""
        except RuntimeError as err:
            value, note = math.nan, f"{type(err).__name__}: {err}"[:300]
        rows.append({"check": check, "model": model, "gradient": spec.gradient if spec else "bp",
                     "k": spec.k if spec else "", "perturbation": spec.perturbation if spec else "",
                     "value": value, "bound": bound, "passed": bool(value <= bound), "note": note})

    for name, width in cfg.check_models:
        torch.manual_seed(0)
        model = build(name, in_channels=1, image_size=cfg.image_size, num_classes=10,
                      width=width).to(device).train()
        x = torch.randn(cfg.check_batch, 1, cfg.image_size, cfg.image_size, device=device)
        y = torch.randint(0, 10, (cfg.check_batch,), device=device)
        grads = functools.partial(flat_grads, model, x, y)
        for forward, simulated in correctness_specs(cfg):
            record("forward=simulated", name, lambda: relative_error(grads(forward, 1),
                                                                     grads(simulated, 1)),
                   cfg.tolerance, forward)
        bp = GradientSpec("bp")
        record("bp device=cpu", name, lambda: relative_error(grads(bp, 0).cpu(), flat_grads(
            copy.deepcopy(model).cpu(), x.cpu(), y.cpu(), bp, 0)), cfg.tolerance)

        def draws_differ():
            draws = [tangents.sample("normal", (), 4, 1000, torch.Generator(device=device)
                                     .manual_seed(7), device=device) for _ in range(2)]
            return not torch.equal(*draws)

        record("seeded tangents equal", name, draws_differ, 0.0)
        spec = correctness_specs(cfg)[-1][0]  # forward, activity, frog, the largest k
        record("seeded step repeats", name, lambda: relative_error(grads(spec, 7), grads(spec, 7)),
               1e-6, spec)
    return rows


def step_rows(cfg: CheckConfig, device, clock) -> list[dict]:
    import nn_steps  # a sibling module: this script's directory is on sys.path when it runs
    rows = []
    for model, width, batch in cfg.bench:
        methods = step_methods(cfg.bench_ks)
        guess = (cfg.warmup + cfg.repetitions + 1) * sum(step_guess_s(model, s) for _, s in methods)
        label = f"fc-{width}" if model == "fc" else model
        if clock.over(guess):
            rows.append({"model": label, "batch": batch, "method": "skipped (budget)"})
            continue
        try:
            rows += nn_steps.bench_model(model, batch, False, methods, device=device, width=width,
                                         image_size=cfg.image_size,
                                         steps=(cfg.warmup, cfg.repetitions))
        except RuntimeError as err:  # out of memory, a missing kernel: keep the other cases
            rows.append({"model": label, "batch": batch, "method": f"error: {err}"[:200]})
            if device.type == "cuda":
                sys.modules["torch"].cuda.empty_cache()
    return rows


def training_rows(cfg: CheckConfig, device, clock) -> list[dict]:
    from fgexp.nn import data as datasets
    from fgexp.nn.runs import NetConfig, Run, build_model, train_config
    from fgexp.nn.train import epochs, evaluate
    from fgexp.paper import parse_gradient
    data = datasets.load("mnist5k").limit(cfg.train_limit, cfg.eval_limit)
    lrs = {(model, label): lr for model, label, lr in cfg.lrs}
    net = NetConfig(mode=cfg.train_mode, max_epochs=cfg.epochs, patience=cfg.epochs)
    rows = []
    for model_name, width in cfg.train_models:
        for token in cfg.train_gradients:
            run = Run(model_name, "mnist5k", width, *parse_gradient(token), 0)
            spec = train_spec(cfg, token)
            lr = lrs[model_name, run.gradient]
            fixed = {"model": model_name, "width": width or "", "gradient": run.gradient,
                     "k": run.k or "", "mode": "" if spec.is_exact else spec.mode,
                     "perturbation": "" if spec.is_exact else spec.perturbation, "lr": lr}
            guess = cfg.epochs * (train_steps(cfg) * step_guess_s(model_name, spec) + EVAL_S)
            if clock.over(guess):
                rows.append({**fixed, "status": "skipped (budget)"})
                continue
            model = build_model(run, data, run.seed, device)
            tcfg = train_config(net, run, lr)
            loss, acc = evaluate(model, data.train, tcfg.eval_batch_size, device)
            rows.append({**fixed, "epoch": 0, "train_loss": loss, "train_acc": acc})
            try:
                for row, state, _ in epochs(model, data, spec, tcfg, run.seed, device=device):
                    rows.append({**fixed, **row, "status": state.status or ""})
            except RuntimeError as err:  # keep the other runs
                rows.append({**fixed, "status": f"error: {err}"[:200]})
    return rows


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self, guess_s: float) -> bool:
        """True when starting work of guess_s seconds would run past the budget."""
        return self.elapsed() + guess_s > self.budget_s


def provenance(torch, device, commit: str | None) -> dict:
    from run import machine_columns  # benchmarks/run.py: machine, device, torch, threads, commit
    columns = machine_columns()
    if device.type != "cuda":
        columns["device"] = "cpu"
    return {**columns, "cuda": torch.version.cuda or "", "commit": commit or columns["commit"]}


COLUMNS = {
    "correctness": ("check", "model", "gradient", "k", "perturbation", "value", "bound", "passed",
                    "note"),
    "training": ("model", "width", "gradient", "k", "mode", "perturbation", "lr", "epoch",
                 "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "epoch_seconds", "status"),
}
PROVENANCE = ("machine", "device", "torch", "cuda", "threads", "commit")


def write_csv(out: Path, part: str, rows: list[dict], common: dict, device) -> Path:
    from fgexp.store import atomic_write_text, rows_to_csv
    path = out / f"{'nn_steps' if part == 'steps' else part}_{device.type}.csv"
    own = COLUMNS.get(part) or list(dict.fromkeys(c for row in rows for c in row
                                                  if c not in PROVENANCE))
    # provenance wins: nn_steps' own "device" column says only "cuda" or "cpu"
    atomic_write_text(path, rows_to_csv([{**r, **common} for r in rows], [*PROVENANCE, *own]))
    return path


def summary(part: str, rows: list[dict]) -> str:
    if part == "correctness":
        failed = [r for r in rows if not r["passed"]]
        worst = max((r["value"] for r in rows if r["check"] == "forward=simulated"), default=0)
        bp = max((r["value"] for r in rows if r["check"] == "bp device=cpu"), default=0)
        lines = [f"correctness: {len(rows) - len(failed)}/{len(rows)} passed; worst relative "
                 f"error forward vs simulated {worst:.1e}, bp device vs cpu {bp:.1e}"]
        return "\n".join(lines + [f"  FAILED {r['check']} {r['model']} {r['gradient']} "
                                  f"k={r['k']} {r['perturbation']}: {r['value']:.2e} > "
                                  f"{r['bound']:.0e} {r.get('note', '')}" for r in failed])
    if part == "steps":
        import nn_steps
        measured = [r for r in rows if "seconds_per_step" in r]
        other = [f"  {r['model']}: {r['method']}" for r in rows if "seconds_per_step" not in r]
        return "\n".join(["steps:", nn_steps.table(measured), *other])
    from fgexp.paper import gradient_token
    lines = ["training (train loss before -> after, last validation accuracy, s/epoch):"]
    for key in dict.fromkeys((r["model"], r["width"], r["gradient"], r["k"]) for r in rows):
        run = [r for r in rows if (r["model"], r["width"], r["gradient"], r["k"]) == key]
        name = f"{key[0]}{f'-{key[1]}' if key[1] else ''} {gradient_token(key[2], key[3] or None)}"
        done = [r for r in run if "train_loss" in r]  # epoch 0 and every finished epoch
        if len(done) < 2:
            lines.append(f"  {name}: {run[-1].get('status') or 'no epochs'}")
            continue
        first, last, status = done[0], done[-1], run[-1].get("status") or "running"
        fell = "falls" if last["train_loss"] < first["train_loss"] else "DOES NOT FALL"
        lines.append(f"  {name}: {first['train_loss']:.3f} -> {last['train_loss']:.3f} ({fell}), "
                     f"val acc {last['val_acc']:.3f}, {last['epoch_seconds']:.1f} s/epoch, "
                     + status)
    return "\n".join(lines)


@contextlib.contextmanager
def full_fp32(torch):
    """No TF32 in matmuls and convolutions: the correctness bounds are float32 bounds."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, value in zip(flags, saved):
            f.allow_tf32 = value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"),
                        help="directory for the CSVs (default results/benchmarks)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run)")
    parser.add_argument("--part", choices=PARTS, action="append", dest="parts",
                        help="run only this part (repeatable; default: all)")
    parser.add_argument("--budget-s", type=float, help=f"seconds (default {FULL.budget_s:.0f})")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the run-time estimate and exit (needs no GPU)")
    parser.add_argument("--commit", help="commit for the rows where the tree has no .git")
    args = parser.parse_args(argv)
    if args.budget_s is not None and not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    if args.device == "cpu" and not args.tiny and not args.estimate_only:
        parser.error("on a CPU only the dry run exists: --device cpu --tiny")
    args.parts = tuple(p for p in PARTS if p in (args.parts or PARTS))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = TINY if args.tiny else FULL
    if args.budget_s is not None:
        cfg = dataclasses.replace(cfg, budget_s=args.budget_s)
    try:
        import torch
    except ImportError as err:
        print(f"device check: refused, {sys.executable} cannot import torch ({err})")
        return 2
    if args.device == "cuda" and not args.estimate_only and not torch.cuda.is_available():
        print(f"device check: refused, no CUDA device visible to torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'}); for the CPU dry run: "
              "--device cpu --tiny")
        return 2
    guess = estimate_s(cfg, args.parts)
    print(f"device check: estimated GPU run time {guess['total']:.0f} s ("
          + ", ".join(f"{p} {guess[p]:.0f} s" for p in args.parts)
          + f", setup {FIXED_S:.0f} s), budget {cfg.budget_s:.0f} s", flush=True)
    if guess["total"] > cfg.budget_s:
        print("device check: refused, the estimate exceeds the budget")
        return 2
    if args.estimate_only:
        return 0
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    common, clock, failed = provenance(torch, device, args.commit), Clock(cfg.budget_s), False
    print(f"device check on {common['device']}, torch {common['torch']}, CUDA "
          f"{common['cuda'] or 'none'}, commit {common['commit']}", flush=True)
    for part in args.parts:
        if part == "correctness":
            with full_fp32(torch):
                rows = correctness_rows(cfg, device)
            failed = not all(r["passed"] for r in rows)
        else:
            rows = (step_rows if part == "steps" else training_rows)(cfg, device, clock)
        path = write_csv(args.out, part, rows, common, device)
        print(f"{summary(part, rows)}\n  -> {path} ({clock.elapsed():.0f} s so far)", flush=True)
    print(f"device check: {'FAILED' if failed else 'passed'} in {clock.elapsed():.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
