"""Drawing k x n standard normal tangents: fgexp's draw against alternatives and the write floor.

Rows: one per (device, k, variant) for n = FC-1024's parameter count (1.86M), with the median
seconds over repetitions after a warm-up, the cost per million numbers, its ratio to the
memory-bandwidth floor measured in the same run (writing the same bytes into a buffer that is
already mapped: `fill`), and whether the variant gives exactly fgexp's numbers for the same seed
(`same_stream`: compared bitwise, so a faster variant that changes any committed result is
visible as such). CUDA rows are added when a GPU is present.

Variants:
- `fgexp` fgexp.tangents.sample("normal", (), k, n, generator): one torch.randn call for all k.
- `per-tangent` k torch.randn(n) calls on the same generator, then one stack (the authors' way).
- `fgexp-out` fgexp.tangents.normal(..., out=buffer): the same call into a reused buffer.
- `rand-out` torch's uniform numbers into a reused buffer: the generator's own floor.
- `numpy-pcg64-out` numpy's PCG64 ziggurat normals (a per-seed stream too, but another one).
- `fill-fresh` writing the bytes into a freshly allocated tensor (page faults included).
- `fill` writing them into a reused buffer: the floor.

    python benchmarks/draw.py [--quick]
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from fgexp import tangents as tangent_samplers
from fgexp.lr.rules import network_dimension

SEED = 0
VARIANTS = ("fgexp", "per-tangent", "fgexp-out", "rand-out", "numpy-pcg64-out", "fill-fresh",
            "fill")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _variant(name: str, k: int, n: int, device: torch.device):
    """A callable drawing (or writing) k x n float32 numbers, reseeded on every call."""
    gen = torch.Generator(device=device)
    buf_kxn = torch.empty(k, n, device=device)
    if name == "fgexp":
        return lambda: tangent_samplers.sample("normal", (), k, n, gen.manual_seed(SEED),
                                               device=device)
    if name == "per-tangent":
        def per_tangent():
            gen.manual_seed(SEED)
            return torch.stack([torch.randn(n, generator=gen, device=device) for _ in range(k)])
        return per_tangent
    if name == "fgexp-out":
        return lambda: tangent_samplers.normal((), k, n, gen.manual_seed(SEED), out=buf_kxn)
    if name == "rand-out":
        return lambda: torch.rand(k, n, generator=gen.manual_seed(SEED), out=buf_kxn)
    if name == "numpy-pcg64-out":
        out_kxn = buf_kxn.numpy()
        return lambda: np.random.default_rng(SEED).standard_normal(
            (k, n), dtype=np.float32, out=out_kxn)
    if name == "fill-fresh":
        return lambda: torch.empty(k, n, device=device).fill_(1.0)
    return lambda: buf_kxn.fill_(1.0)


def _seconds(fn, device: torch.device, repetitions: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repetitions):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _same_stream(name: str, out, reference: torch.Tensor) -> bool | None:
    if name.startswith("fill"):
        return None
    out = torch.as_tensor(out)
    return bool(out.shape == reference.shape and torch.equal(out.to(reference.device),
                                                             reference))


def device_rows(device: torch.device, n: int, ks, repetitions: int) -> list[dict]:
    rows = []
    for k in ks:
        reference = _variant("fgexp", k, n, device)()
        case = []
        for name in VARIANTS:
            if name == "numpy-pcg64-out" and device.type != "cpu":
                continue
            fn = _variant(name, k, n, device)
            times = _seconds(fn, device, repetitions)
            seconds = statistics.median(times)
            case.append({"case": "draw", "variant": name, "device": device.type, "k": k, "n": n,
                         "seconds": seconds, "spread_s": (max(times) - min(times)) / 2,
                         "repetitions": repetitions, "ms_per_million": seconds * 1e9 / (k * n),
                         "same_stream": _same_stream(name, fn(), reference)})
        floor = next(r["seconds"] for r in case if r["variant"] == "fill")
        fgexp = next(r["seconds"] for r in case if r["variant"] == "fgexp")
        for row in case:
            row["ratio_to_floor"] = row["seconds"] / floor
            row["ratio_to_fgexp"] = row["seconds"] / fgexp
        rows += case
    return rows


def run(quick: bool) -> list[dict]:
    n = network_dimension("fc", "mnist", 1024, "weight")  # FC-1024's 1.86M parameters
    ks = (1, 16) if quick else (1, 4, 16)
    repetitions = 3 if quick else 7
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return [row for device in devices for row in device_rows(device, n, ks, repetitions)]


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k = 1 and 16, 3 repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for row in run(quick=args.quick):
        print(f"{row['device']:5} k={row['k']:<3} {row['variant']:16} "
              f"{row['seconds'] * 1e3:8.2f} ms {row['ms_per_million']:6.2f} ms/M "
              f"x floor {row['ratio_to_floor']:6.2f} x fgexp {row['ratio_to_fgexp']:5.2f} "
              f"same stream {row['same_stream']}")
