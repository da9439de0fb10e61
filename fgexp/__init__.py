"""fgexp: multi-tangent forward gradients, the core library of the experiment suite.

Importing fgexp loads torch only: MPI, Propulate and torchvision load where they are used.

The module fgexp.aggregate keeps its name: use `from fgexp.aggregate import aggregate`.
"""
from fgexp.aggregate import METHODS, projection
from fgexp.directional import GRADIENTS, MODES, GradientSpec, estimate, jvps_forward
from fgexp.tangents import SAMPLERS, sample

__all__ = ["METHODS", "projection", "GRADIENTS", "MODES", "GradientSpec",
           "estimate", "jvps_forward", "SAMPLERS", "sample"]
