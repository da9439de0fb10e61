"""Activity tangent schemes and what they need from BatchNorm: which scheme a model gets, the
checks that refuse a scheme a model or mode cannot serve, and the contexts that freeze or hold
BatchNorm's batch statistics (docs/network_gradients.md). Used by fgexp.nn.activity.
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fgexp.directional import GradientSpec

# Activity tangent schemes (docs/network_gradients.md). All but "independent" share one tangent
# of per-example shape across the batch; they differ only for train-mode BatchNorm:
#   shared       per-example losses' derivatives (refused with BatchNorm in train mode: biased)
#   per-example  the paper's: each example's derivative of the batch loss, coupling included
#   independent  tangents independent across examples, derivative of the batch loss
#   held-stats   BatchNorm's batch statistics held constant in the tangent pass (biased)
SCHEMES = ("shared", "per-example", "independent", "held-stats")
COUPLED_SCHEMES = SCHEMES[1:]  # those a model with train-mode BatchNorm can use
EXAMPLE_PASSES = 8  # per-example forward mode: examples per vmapped call (memory: 8 batches)


# Coupled layers and BatchNorm statistics

def couples_examples(model: nn.Module) -> bool:
    """True when a layer mixes the examples of a batch (BatchNorm in train mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in model.modules())


def activity_scheme(model: nn.Module) -> str:
    """The activity tangent scheme a model gets by default (docs/network_gradients.md)."""
    return "independent" if couples_examples(model) else "shared"


def resolve_scheme(model: nn.Module, scheme: str | None) -> str:
    """The scheme to use (`scheme`, or the model's default); ValueError for a model or scheme
    that activity perturbation cannot serve. Without coupling, per-example and held-stats are
    the shared scheme (the same estimator) and run as it."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"activity perturbation needs a model with .blocks (a BlockModel from "
                         f"fgexp.nn.models.build); {type(model).__name__} has none")
    in_blocks = {id(p) for p in model.blocks.parameters()}
    outside = [name for name, p in model.named_parameters()
               if p.requires_grad and id(p) not in in_blocks]
    if outside:
        raise ValueError(f"activity perturbation needs every trainable parameter inside a block; "
                         f"outside .blocks: {', '.join(outside[:3])}")
    check_scheme(scheme)
    if scheme is None:
        return activity_scheme(model)
    if not couples_examples(model):
        return "shared" if scheme != "independent" else scheme
    if scheme == "shared":
        raise ValueError("shared activity tangents are biased for a model whose BatchNorm layers "
                         f"are in train mode; use one of {', '.join(COUPLED_SCHEMES)} "
                         "(docs/network_gradients.md)")
    return scheme


def check_scheme(scheme: str | None) -> None:
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"unknown activity tangent scheme {scheme!r}; "
                         f"allowed: {', '.join(SCHEMES)}")


def check_models_scheme(models, scheme: str | None) -> None:
    """Before any compute: ValueError for shared tangents asked of a BatchNorm model (by name,
    fgexp.paper.BATCHNORM_MODELS), as resolve_scheme would refuse it at the first step."""
    from fgexp.paper import BATCHNORM_MODELS
    check_scheme(scheme)
    coupled = [m for m in models if m in BATCHNORM_MODELS]
    if scheme == "shared" and coupled:
        raise ValueError(f"--activity-tangents shared is biased for {', '.join(coupled)} "
                         f"(BatchNorm in train mode); use one of {', '.join(COUPLED_SCHEMES)}")


@dataclass(frozen=True)
class ActivitySpec(GradientSpec):
    """A GradientSpec that also names the activity tangent scheme (fgexp.nn.runs.spec_of)."""
    activity_tangents: str | None = None  # a SCHEMES name; None: activity_scheme(model)

    def __post_init__(self):
        super().__post_init__()
        check_scheme(self.activity_tangents)


@contextmanager
def frozen_batch_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm uses batch statistics but leaves the running ones untouched."""
    switched = [m for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                and m.track_running_stats]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True



def _held_batch_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm whose batch statistics are constants (detached: no tangent and no
    gradient flows through them); running statistics untouched.

    The value is the train kernel's (the detached difference restores it), so the saved block
    inputs match a bp forward pass: recomputed normalization drifts through deep layers of
    small batches (ResNet18's layer4 normalizes B values when its maps are 1 x 1)."""
    dims = [0, *range(2, x.dim())]
    mean, var = x.mean(dims), x.var(dims, unbiased=False)
    held = F.batch_norm(x, mean.detach(), var.detach(), module.weight, module.bias,
                        training=False, eps=module.eps)
    exact = F.batch_norm(x, None, None, module.weight, module.bias, training=True,
                         eps=module.eps)
    return held + (exact - held).detach()


@contextmanager
def held_batch_stats(model: nn.Module) -> Iterator[None]:
    """Every train-mode BatchNorm of `model` normalizes with its batch statistics held constant:
    the held-stats scheme's tangent pass (and its simulated backprop)."""
    switched = [m for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in switched:
        m.forward = types.MethodType(_held_batch_norm, m)
    try:
        yield
    finally:
        for m in switched:
            del m.forward


def shares_tangents(scheme: str) -> bool:
    """Tangents of one example's shape, the same for every example of the batch."""
    return scheme != "independent"
