"""Shared by the LR test files: experiments/lr_search.py as a real subprocess, optionally under
mpirun, and the tiny closed-form task both files search."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
COLUMNS = ("function", "n", "angle_deg")
# A tiny closed-form setting: Sphere, n = 4, single tangent, 50 steps, 10 interim losses.
TINY = ["--task", "closed_form", "--set", "max_steps=50", "--set", "interim=10", "--no-progress"]


def lr_search(*args, mpi_ranks: int | None = None, timeout: int = 300):
    cmd = [sys.executable, str(ROOT / "experiments" / "lr_search.py"), *map(str, args)]
    if mpi_ranks:
        cmd = [str(MPIRUN), "-n", str(mpi_ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
