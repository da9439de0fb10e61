"""Per-step cost of network gradients: bp vs forward gradients (weight and activity perturbation).

Rows: one per (model, batch, method) with the median wall time of one set_gradients step over
repetitions taken after a warm-up, its interquartile range, the median CPU time of this process
(less disturbed by other processes on a shared machine), the peak extra memory of one step, and
both as ratios to bp measured in the same run. Methods are labelled
`bp`, `<mode>-<perturbation>-<aggregation>-k<k>` (e.g. forward-activity-frog-k16), plus two
references for FC-1024 weight perturbation: `loop-weight-mean-k<k>` (one jvp pass per tangent,
the authors' scheme) and `draw-normal-k<k>` (only drawing the k x 1.9M normal numbers, as the
step draws them: into a buffer reused across steps for k > 1). The mean and the projection of
one mode, perturbation and k are timed interleaved, a step of each in turn, so that their ratio
is taken over the same moments.

Peak memory, two measures. `peak_memory_bytes` (the one the ratios use) is the peak of the
bytes held by tensors during the step, over those held before it: on CUDA from
torch.cuda.max_memory_allocated, on CPU from the allocation record of torch's profiler (every
allocation and free of the CPU allocator, in order), the same quantity. It counts activations,
tangents, gradients and every temporary, but not allocator caching. `peak_rss_bytes` (CPU
only) is the growth of this process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over its resident set before the step, with glibc's mmap threshold pinned
at 64 KiB and the free heap trimmed so that freed tensors go back to the system; it adds
allocator overhead and depends on the heap's state, so it is coarser. Gradients are cleared
before the measured steps, so every method allocates its own.

    python benchmarks/nn_steps.py [--quick] [--case NAME ...] [--csv PATH]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.func import functional_call, jvp

from fgexp import tangents as tangent_samplers
from fgexp.directional import GradientSpec, flat_size, unflatten
from fgexp.nn.gradients import batch_loss_fn, set_gradients
from fgexp.nn.models import build
from fgexp.paper import MODELS

AGGREGATIONS = {"mean": "fg-mean", "frog": "frog"}


def _device_for(model: str) -> torch.device:
    # FC-1024 is the CPU reference of the issue; the convolutional and attention models use a
    # GPU when there is one.
    if model != "fc" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _malloc_threshold(size: int) -> None:
    """glibc only: pin the mmap threshold (M_MMAP_THRESHOLD) and trim the free heap.

    Small (64 KiB) while measuring the resident set, so freed tensors leave it; 32 MiB (the
    ceiling glibc's own adaptive threshold reaches) while timing, since an mmap per tensor would
    add page faults that an ordinary run does not pay. The trim threshold (M_TRIM_THRESHOLD)
    follows at twice the mmap threshold, as glibc's adaptive rule sets it: left at its 128 KiB
    default, the top of the heap would go back to the system after every large free, and
    every step would fault its pages in again.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, size)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 * size)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory(fn, device: torch.device) -> dict:
    """Peak extra bytes of one call of fn: held by tensors, and of the resident set (CPU).

    NaN where a measure is not available.
    """
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return {"peak_memory_bytes": float(torch.cuda.max_memory_allocated(device) - before),
                "peak_rss_bytes": float("nan")}
    tensors = peak_tensor_bytes_cpu(fn)
    gc.collect()
    _malloc_threshold(64 * 1024)
    try:
        return {"peak_memory_bytes": tensors, "peak_rss_bytes": _peak_rss(fn)}
    finally:
        _malloc_threshold(32 * 2**20)


def peak_tensor_bytes_cpu(fn) -> float:
    """Peak of the bytes the CPU allocator hands to tensors during fn(), over the level before.

    torch's profiler records every allocation and free (profile_memory); summing them in time
    order gives the live bytes at every moment, as CUDA's allocator statistics would.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a torch without the raw event list
        return float("nan")
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


@contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop log lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_rss(fn) -> float:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        before = _status_kib("VmRSS")
        fn()
        return float((_status_kib("VmHWM") - before) * 1024)
    except OSError:
        return float("nan")


def time_steps(fn, device: torch.device, warmup: int, repetitions: int) -> dict:
    return time_interleaved([fn], device, warmup, repetitions)[0]


def time_interleaved(fns, device: torch.device, warmup: int, repetitions: int) -> list[dict]:
    """Timing rows of several step functions, taking one step of each in turn per repetition:
    a drift in the machine's speed then reaches all of them alike, so the ratios between them
    are taken over the same moments."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    walls, cpus = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repetitions):
        for i, fn in enumerate(fns):
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            walls[i].append(time.perf_counter() - wall)
            cpus[i].append(time.process_time() - cpu)
    rows = []
    for wall_s, cpu_s in zip(walls, cpus):
        q25, _, q75 = (statistics.quantiles(wall_s, n=4) if len(wall_s) > 1
                       else (wall_s[0],) * 3)
        rows.append({"seconds_per_step": statistics.median(wall_s), "seconds_q25": q25,
                     "seconds_q75": q75, "cpu_seconds_per_step": statistics.median(cpu_s),
                     "repetitions": repetitions})
    return rows


def _pairs(methods) -> list[list[tuple[str, object]]]:
    """Methods in timing groups: the mean and the projection of one mode, perturbation and k
    together (timed interleaved, for their ratio), every other method alone."""
    groups: dict[str, list] = {}
    for label, method in methods:
        key = label.replace("-mean-", "-*-").replace("-frog-", "-*-")
        groups.setdefault(key if "-*-" in key else label, []).append((label, method))
    return list(groups.values())


def loop_baseline(model, inputs, targets, k: int, generator) -> None:
    """The authors' scheme: one forward-mode pass per tangent, one tangent drawn at a time."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    loss = batch_loss_fn(torch.nn.functional.cross_entropy, targets)
    n = flat_size(params)
    estimate = torch.zeros(n, device=inputs.device)
    with torch.no_grad():
        for _ in range(k):
            v_n = torch.randn(n, generator=generator, device=inputs.device)
            _, d = jvp(lambda p: loss(functional_call(model, p, (inputs,))), (params,),
                       (unflatten(v_n, params),))
            estimate += d * v_n / k
    for (name, p), g in zip(model.named_parameters(), unflatten(estimate, params).values()):
        p.grad = g


def _setup(model_name: str, batch: int, device: torch.device, width: int | None = None,
           image_size: int = 28):
    torch.manual_seed(0)
    width = width or (1024 if model_name == "fc" else None)
    model = build(model_name, in_channels=1, image_size=image_size, num_classes=10, width=width)
    model = model.to(device).train()
    inputs = torch.randn(batch, 1, image_size, image_size, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)
    return model, inputs, targets


def _methods(model_name: str, quick: bool) -> list[tuple[str, object]]:
    """(label, GradientSpec or ('loop'|'draw', k)) for one model."""
    if quick:
        return _quick_methods(model_name)
    methods = [("bp", GradientSpec("bp"))]
    for perturbation in ("activity", "weight"):
        for k in (1, 4, 16):
            if model_name == "resnet18" and perturbation == "weight" and k > 4:
                continue  # 16 x 11M tangent entries per step: the draw alone dominates
            for aggregation, gradient in AGGREGATIONS.items():
                label = f"forward-{perturbation}-{aggregation}-k{k}"
                methods.append((label, GradientSpec(gradient, k=k, perturbation=perturbation)))
        k_sim = 16 if perturbation == "activity" or model_name != "resnet18" else 4
        spec = GradientSpec("frog", k=k_sim, perturbation=perturbation, mode="simulated")
        methods.append((f"simulated-{perturbation}-frog-k{k_sim}", spec))
    if model_name == "fc":
        for k in (1, 4, 16):
            methods.append((f"loop-weight-mean-k{k}", ("loop", k)))
            methods.append((f"draw-normal-k{k}", ("draw", k)))
    return methods


def _memory_methods() -> list[tuple[str, object]]:
    """ResNet18 at batch 128, the issue's memory case: activity perturbation at every k.

    `-c4` rows split the k = 16 tangents into vmapped chunks of 4 (GradientSpec.chunk_size),
    which bounds the tangent pass's memory at the price of more passes.
    """
    methods = [("bp", GradientSpec("bp"))]
    for k in (1, 4, 16):
        for aggregation, gradient in AGGREGATIONS.items():
            spec = GradientSpec(gradient, k=k, perturbation="activity")
            methods.append((f"forward-activity-{aggregation}-k{k}", spec))
    for aggregation, gradient in AGGREGATIONS.items():
        spec = GradientSpec(gradient, k=16, perturbation="activity", chunk_size=4)
        methods.append((f"forward-activity-{aggregation}-k16-c4", spec))
    methods.append(("simulated-activity-frog-k16",
                    GradientSpec("frog", k=16, perturbation="activity", mode="simulated")))
    methods.append(("forward-weight-mean-k1", GradientSpec("fg-mean", k=1)))
    return methods


def _quick_methods(model_name: str) -> list[tuple[str, object]]:
    """Spot checks: the activity goals on FC, one forward case per other model."""
    if model_name != "fc":
        return [("bp", GradientSpec("bp")),
                ("forward-activity-mean-k4", GradientSpec("fg-mean", k=4, perturbation="activity"))]
    return [("bp", GradientSpec("bp")),
            ("forward-activity-mean-k1", GradientSpec("fg-mean", k=1, perturbation="activity")),
            ("forward-activity-frog-k16", GradientSpec("frog", k=16, perturbation="activity")),
            ("forward-weight-mean-k4", GradientSpec("fg-mean", k=4)),
            ("loop-weight-mean-k4", ("loop", 4)),
            ("draw-normal-k4", ("draw", 4))]


def _step_fn(method, model, inputs, targets, generator, draws):
    """One step of `method`; `draws` is its reused tangent buffer, as a training run has one."""
    if isinstance(method, GradientSpec):
        return lambda: set_gradients(model, inputs, targets, method, generator, draws=draws)
    kind, k = method
    if kind == "loop":
        return lambda: loop_baseline(model, inputs, targets, k, generator)
    n = sum(p.numel() for p in model.parameters())
    if k > 1:  # as the weight-perturbation step draws them: into a reused buffer
        return lambda: draws.draw(k, n, generator, device=inputs.device)
    return lambda: tangent_samplers.sample("normal", (), k, n, generator, device=inputs.device)


def _describe(method) -> dict:
    if isinstance(method, GradientSpec):
        exact = method.is_exact
        return {"gradient": method.gradient, "k": "" if exact else method.k,
                "mode": "" if exact else method.mode,
                "perturbation": "" if exact else method.perturbation}
    kind, k = method
    return {"gradient": "fg-mean" if kind == "loop" else "", "k": k, "mode": kind,
            "perturbation": "weight"}


def bench_model(model_name: str, batch: int, quick: bool, methods=None, *,
                device: torch.device | None = None, width: int | None = None,
                image_size: int = 28, steps: tuple[int, int] | None = None) -> list[dict]:
    """Rows of one model; device, width (FC/ViT), image size and (warm-up, repetitions)
    default to this suite's own choices (benchmarks/device_check.py sets them)."""
    device = device or _device_for(model_name)
    model, inputs, targets = _setup(model_name, batch, device, width, image_size)
    generator = torch.Generator(device=device).manual_seed(0)
    # FC steps take milliseconds; ResNet18 and ViT steps on a CPU take seconds.
    warmup, repetitions = (1, 3) if quick or batch > 32 else (1, 7)
    if model_name == "fc":
        warmup, repetitions = (1, 5) if quick else (2, 21)
    warmup, repetitions = steps or (warmup, repetitions)
    model_label = f"fc-{width or 1024}" if model_name == "fc" else model_name
    rows = []
    _malloc_threshold(32 * 2**20)
    for group in _pairs(methods or _methods(model_name, quick)):
        draws = [tangent_samplers.NormalBuffer() for _ in group]
        fns = [_step_fn(method, model, inputs, targets, generator, d)
               for (_, method), d in zip(group, draws)]
        timings = time_interleaved(fns, device, warmup, repetitions)
        for (label, method), fn, timing, d in zip(group, fns, timings, draws):
            model.zero_grad(set_to_none=True)
            d.release()  # the step's tangents count as its own memory
            memory = peak_memory(fn, device)
            rows.append({"model": model_label, "batch": batch,
                         "method": label, **_describe(method), **timing, **memory,
                         "device": device.type})
    bp = rows[0]
    for row in rows:
        row["time_ratio_to_bp"] = row["seconds_per_step"] / bp["seconds_per_step"]
        row["cpu_time_ratio_to_bp"] = row["cpu_seconds_per_step"] / bp["cpu_seconds_per_step"]
        row["memory_ratio_to_bp"] = row["peak_memory_bytes"] / bp["peak_memory_bytes"]
    return rows


CASES = (*MODELS, "resnet18-memory")


def run(quick: bool, cases=None) -> list[dict]:
    """FC-1024 at batch 64 on CPU, ResNet18 and ViT at a small batch (CUDA when present), and
    (full run) ResNet18's activity perturbation at batch 128 for the memory goal."""
    cases = cases or (CASES[:3] if quick else CASES)
    small = 4 if quick else 32
    rows = []
    for case in cases:
        if case == "fc":
            rows += bench_model("fc", 64, quick)
        elif case == "resnet18-memory":
            rows += bench_model("resnet18", 128, quick, _memory_methods())
        else:
            rows += bench_model(case, small, quick)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'model':10} {'batch':>5} {'method':30} {'ms/step':>9} {'IQR ms':>13} "
             f"{'x bp':>6} {'cpu x bp':>8} {'peak MiB':>9} {'mem x bp':>8} {'RSS MiB':>8}"]
    for r in rows:
        iqr = f"{r['seconds_q25'] * 1e3:.1f}-{r['seconds_q75'] * 1e3:.1f}"
        lines.append(f"{r['model']:10} {r['batch']:>5} {r['method']:30} "
                     f"{r['seconds_per_step'] * 1e3:9.1f} {iqr:>13} {r['time_ratio_to_bp']:6.2f} "
                     f"{r['cpu_time_ratio_to_bp']:8.2f} {r['peak_memory_bytes'] / 2**20:9.1f} "
                     f"{r['memory_ratio_to_bp']:8.2f} {r['peak_rss_bytes'] / 2**20:8.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--case", choices=CASES, action="append", dest="cases",
                        help="run only this case (repeatable; default: all, quick: the first 3)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = run(args.quick, args.cases)
    print(table(rows))
    if args.csv:
        import pandas as pd
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
