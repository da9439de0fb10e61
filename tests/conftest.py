import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def run_script(path: str, *args: str, cwd: Path | str = ROOT,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """`python <path> args...` as a user types it (path relative to the repository root): the
    script finds its own helpers (experiments/_common.py) the way a user's shell does."""
    return subprocess.run([sys.executable, str(ROOT / path), *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


@pytest.fixture
def script():
    return run_script
