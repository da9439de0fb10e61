"""fgexp: multi-tangent forward gradients, the core library of the experiment suite.

`import fgexp` loads nothing heavy: the names below load their module (and torch) on first use,
so that fgexp.paper, fgexp.config and the plotting stage start quickly. MPI, Propulate and
torchvision load only where they are used.

The module fgexp.aggregate keeps its name: use `from fgexp.aggregate import aggregate`.
"""
from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "METHODS": "fgexp.aggregate", "projection": "fgexp.aggregate",
    "GRADIENTS": "fgexp.paper", "MODES": "fgexp.directional",
    "GradientSpec": "fgexp.directional", "estimate": "fgexp.directional",
    "jvps_forward": "fgexp.directional",
    "SAMPLERS": "fgexp.tangents", "sample": "fgexp.tangents",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fgexp' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
