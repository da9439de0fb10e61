"""Closed-form descent: batched forward-mode engine vs one forward-mode pass per tangent and seed.

Rows: one per (function, n, k, implementation) with the median steps/s over repetitions (one
step advances all 5 seeds), the spread (half the range of the repetitions) and the speed-up
over the loop measured in the same run.
- loop: for each seed and step, k separate forward-mode passes (torch.func.jvp on the (n,)
  iterate, one per tangent), then the mean and the update: how the authors' code works.
- batched: fgexp.descent.descend, all seeds and all k tangents in one forward-mode pass.
- batched-8: fgexp.descent.descend_many with the 8 gradients of Figure 4 in one batch
  (steps/s per gradient, so comparable with the single-gradient rows).
With quick=False, also the Figure 4 paper preset's wall time, read from the manifest of the
committed run (results/closed_form.manifest.json).

    python benchmarks/descent.py [--quick]
"""
from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch
from torch.func import jvp

from fgexp import functions
from fgexp.descent import descend, descend_many
from fgexp.directional import GradientSpec
from fgexp.tangents import generators

SEEDS = (0, 1, 2, 3, 4)
LR = 1e-5  # small enough to stay finite for every case; speed does not depend on it
PAPER_SPECS = [GradientSpec("bp")] + [GradientSpec("fg-mean", k=k) for k in (1, 2, 4, 16)] \
    + [GradientSpec("frog", k=k) for k in (2, 4, 16)]


def loop_steps(f, x0_n: torch.Tensor, k: int, steps: int) -> None:
    """The straightforward engine: one jvp per tangent, per seed, per step."""
    for gen in generators(SEEDS):
        x_n = x0_n.clone()
        for _ in range(steps):
            tangents_kxn = torch.randn(k, x_n.shape[0], generator=gen)
            jvps = [jvp(f, (x_n,), (v_n,))[1] for v_n in tangents_kxn]
            estimate_n = (torch.stack(jvps).unsqueeze(-1) * tangents_kxn).mean(0)
            x_n = x_n - LR * estimate_n


def _runner(implementation: str, f, x0_n: torch.Tensor, k: int):
    if implementation == "loop":
        return lambda steps: loop_steps(f, x0_n, k, steps)
    if implementation == "batched":
        spec = GradientSpec("fg-mean", k=k)
        return lambda steps: descend(f, x0_n, spec, [LR], SEEDS, steps, patience=10 ** 9)
    return lambda steps: descend_many(f, x0_n, PAPER_SPECS, [LR], SEEDS, steps,
                                      patience=10 ** 9)


def measure(implementation: str, name: str, n: int, k: int, steps: int,
            repetitions: int) -> dict:
    f = functions.get(name)
    run = _runner(implementation, f, f.start(n), k)
    run(max(1, steps // 4))  # warm-up
    rates = []
    for _ in range(repetitions):
        start = time.perf_counter()
        run(steps)
        rates.append(steps / (time.perf_counter() - start))
    per_gradient = len(PAPER_SPECS) if implementation == "batched-8" else 1
    rates = [r * per_gradient for r in rates]
    return {"case": "steps", "function": name, "n": n,
            "k": "1..16 (8 gradients)" if implementation == "batched-8" else k,
            "implementation": implementation, "seeds": len(SEEDS),
            "steps_per_s": statistics.median(rates), "spread": (max(rates) - min(rates)) / 2,
            "repetitions": repetitions, "steps": steps}


def step_rows(quick: bool) -> list[dict]:
    rows = []
    ks = (1, 16) if quick else (1, 4, 16)
    repetitions = 3 if quick else 5
    for n in (64, 1024):
        case = []
        for k in ks:
            loop = measure("loop", "rosenbrock", n, k, max(2, (8 if quick else 40) // k),
                           repetitions)
            batched = measure("batched", "rosenbrock", n, k, 40 if quick else 300, repetitions)
            for row in (loop, batched):
                row["speedup_vs_loop"] = row["steps_per_s"] / loop["steps_per_s"]
            case += [loop, batched]
        if not quick:
            many = measure("batched-8", "rosenbrock", n, 0, 200, repetitions)
            many["speedup_vs_loop"] = None
            case.append(many)
        rows += case
    return rows


def paper_row(manifest: Path) -> list[dict]:
    """Wall time of the committed Figure 4 paper run, from its manifest's sessions."""
    if not manifest.exists():
        return []
    data = json.loads(manifest.read_text())
    seconds = 0.0
    for session in data.get("sessions", []):
        if session.get("ended") and "--cone" not in session.get("argv", []):
            seconds += (dt.datetime.fromisoformat(session["ended"])
                        - dt.datetime.fromisoformat(session["started"])).total_seconds()
    return [{"case": "paper_preset", "implementation": "batched-8", "wall_s": seconds,
             "repetitions": 1, "note": f"Figure 4 paper preset ({data.get('preset')}), from "
             f"{manifest.name}: sum of its non-cone sessions (cells recomputed after a rate change "
             "count twice), shared 2-core machine"}]


def run(quick: bool) -> list[dict]:
    rows = step_rows(quick)
    if not quick:
        rows += paper_row(Path(__file__).resolve().parents[1] / "results"
                          / "closed_form.manifest.json")
    return rows


if __name__ == "__main__":
    import argparse
    import warnings
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings only (seconds)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    torch.set_num_threads(1)
    for row in run(quick=args.quick):
        print(row)
