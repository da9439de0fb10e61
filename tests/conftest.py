import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Experiment scripts import their shared helpers as `_common`; make that work in tests too.
sys.path.insert(0, str(ROOT / "experiments"))
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
