"""Set `.grad` on a network's parameters: backprop, or a forward gradient of weights or activities.

`set_gradients(model, inputs, targets, spec)` computes the batch loss and one gradient per
trainable parameter as `spec` (fgexp.directional.GradientSpec) asks: bp and weight
perturbation (k global tangents over all parameters) live here, activity perturbation
(tangents on the blocks' outputs) in fgexp.nn.activity. How each estimate is formed, the two
modes (forward-mode AD, or simulated from backprop), the tangent schemes and BatchNorm are
explained in docs/network_gradients.md.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.directional import (GradientSpec, flat_size, flatten, jvps_params_forward,
                               module_loss, unflatten)
# activity_scheme is re-exported: fgexp.nn.gradients.activity_scheme stays the documented name.
from fgexp.nn.activity import (LossFn, activity_gradients, activity_scheme,  # noqa: F401
                               couples_examples, frozen_batch_stats, resolve_scheme)


def set_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  spec: GradientSpec, generator: torch.Generator | None = None,
                  loss_fn: LossFn = F.cross_entropy, *,
                  activity_tangents: str | None = None,
                  draws: tangent_samplers.NormalBuffer | None = None) -> torch.Tensor:
    """Set p.grad (replacing any old one) on every trainable parameter; return the batch loss.

    loss_fn is called as loss_fn(logits, targets, reduction="none"), like torch's functional
    losses; the batch loss is the mean over examples. activity_tangents names the tangent
    scheme of activity perturbation (fgexp.nn.activity.SCHEMES; default: the spec's
    `activity_tangents` (an ActivitySpec's), else `activity_scheme(model)`). draws: where
    weight perturbation draws k > 1 normal tangents, reused across the steps of a run (the
    same numbers as fresh draws, without mapping new memory each step).
    """
    if not isinstance(spec, GradientSpec):
        raise ValueError(f"spec must be a GradientSpec, got {type(spec).__name__}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if spec.is_exact:
        loss, grads = _backprop(model, inputs, targets, params, loss_fn)
    elif spec.perturbation == "weight":
        loss, grads = _weight_gradients(model, inputs, targets, params, spec, generator, loss_fn,
                                        draws)
    else:
        scheme = resolve_scheme(model, activity_tangents
                                or getattr(spec, "activity_tangents", None))
        loss, grads = activity_gradients(model, inputs, targets, spec, generator, loss_fn, scheme)
    for name, p in params.items():
        p.grad = grads[name].detach().reshape(p.shape).to(p.dtype)
    return loss.detach()


def batch_loss_fn(loss_fn: LossFn, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: loss_fn(logits, targets, reduction="none").mean()


# bp and weight perturbation

def _backprop(model, inputs, targets, params, loss_fn):
    with torch.enable_grad():
        loss = batch_loss_fn(loss_fn, targets)(model(inputs))
        grads = torch.autograd.grad(loss, list(params.values()))
    return loss, dict(zip(params, grads))


def _weight_gradients(model, inputs, targets, params, spec, generator, loss_fn, draws):
    first = next(iter(params.values()))
    n = flat_size(params)
    if draws is not None and spec.sampler == "normal" and spec.k > 1:
        # a buffer reused across steps: the estimate below is new memory for k > 1
        tangents_kxn = draws.draw(spec.k, n, generator, dtype=first.dtype, device=first.device)
    else:
        tangents_kxn = tangent_samplers.sample(
            spec.sampler, (), spec.k, n, generator, angle_deg=spec.angle_deg,
            dtype=first.dtype, device=first.device)
    if spec.mode == "forward":
        with torch.no_grad(), frozen_batch_stats(model):
            loss, jvps_k = jvps_params_forward(
                module_loss(model, batch_loss_fn(loss_fn, targets), inputs), params,
                tangents_kxn, spec.chunk_size)
        if couples_examples(model):
            with torch.no_grad():
                model(inputs)  # running statistics: once per step, from the unperturbed batch
    else:
        loss, grads = _backprop(model, inputs, targets, params, loss_fn)
        jvps_k = tangents_kxn @ flatten(grads)
    if spec.k == 1 and spec.aggregation in ("mean", "sum"):
        # d v, written into the tangent's own memory (the same numbers aggregate() gives)
        estimate_n = tangents_kxn[0].mul_(jvps_k[0])
    else:
        estimate_n = aggregate(tangents_kxn, jvps_k, spec.aggregation)
    return loss, unflatten(estimate_n, params)
