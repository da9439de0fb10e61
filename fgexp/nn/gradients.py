"""Set `.grad` on a network's parameters: backprop, or a forward gradient of weights or activities.

`set_gradients(model, inputs, targets, spec)` computes the batch loss and one gradient per
parameter, as `spec` (fgexp.directional.GradientSpec) asks:

- bp: ordinary backprop.
- weight perturbation: k global tangents over all parameters, flattened (n = parameter count);
  d_i = <dL/dtheta, v_i> for the batch loss L; the estimate is aggregate(V, d) over that global
  tangent, split back into the parameters.
- activity perturbation: tangents on every block's output, global across blocks (one tangent is
  the concatenation over all blocks), then each block's parameter gradient is the block-local
  VJP of that block's activity estimate (no gradient flows between blocks). Two tangent schemes:
  * shared (the paper's): one tangent v_i of per-example size N = sum_l |h_l(b)|, the same for
    every example of the batch. For example b, d_{b,i} = sum_l <dL_b/dh_l(b), v_{l,i}> with L_b
    example b's own loss; the estimate of dL_b/dh(b) is aggregate(V, d_b) (a projection is per
    example, onto span(V) in the global N-space) and divided by B for the mean batch loss.
  * independent: every example gets its own tangent entries, v_i has size B*N over the whole
    batch's activations, d_i is the directional derivative of the batch loss L itself, and the
    estimate of dL/dH is aggregate(V, d). This is what coupled models need (below).

Modes: `forward` gets every directional derivative by forward-mode AD (torch.func.jvp, vmapped
over the k tangents, split into chunks of spec.chunk_size); no backward pass through the network
happens. Each block's tangent is added to that block's output and carried through every later
block, so the first block's tangent reaches the loss as much as the last one's. A shared tangent
entering a block that starts with a Linear is mapped once per tangent rather than once per
example (same numbers, B times fewer multiply-adds there). For the block-local VJPs the tangent
pass runs under no_grad, keeps each block's input and recomputes one block at a time, so the
whole network's activations are never stored; with one tangent per chunk and no coupled layers
it records the blocks' graphs in the tangent pass instead, one forward pass cheaper
(`keeps_graph`). `simulated` backprops to the exact gradient (of the parameters, or of the block
outputs) and takes d = V @ grad; given the same tangents both modes give the same d and the same
gradients (tested).

BatchNorm. In train mode BatchNorm couples the examples of a batch: L_b depends on every
example's activations through the batch statistics. With a tangent shared across the batch,
forward mode measures sum_b' <dL_b/dh(b'), v>, not <dL/dh(b), v>, and the shared scheme would be
biased. Models with a BatchNorm layer in train mode (ResNet18 while training) therefore use the
independent scheme in both modes: the batch loss's directional derivative along tangents
independent across examples is exact, so the estimate stays unbiased (E[v v^T] = I) and both
modes define the same estimator. Models without coupled layers (FC, ViT: LayerNorm is per
example; any model in eval mode) use the shared scheme. Running statistics are updated exactly
once per step from the unperturbed batch, as in one ordinary training step: the tangent passes
run with statistic tracking switched off, and the activity VJP recompute (or, for weight
perturbation in forward mode, one extra no-grad forward pass) updates them.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.directional import (GradientSpec, flat_size, flatten, jvps_params_forward,
                               module_loss, unflatten)

_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {input key: shapes}
SCHEMES = ("shared", "independent")  # activity tangents: shared across the batch, or not

LossFn = Callable[..., torch.Tensor]  # loss_fn(logits, targets, reduction="none") -> (B,)


def set_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  spec: GradientSpec, generator: torch.Generator | None = None,
                  loss_fn: LossFn = F.cross_entropy, *,
                  activity_tangents: str | None = None) -> torch.Tensor:
    """Set p.grad (replacing any old one) on every trainable parameter; return the batch loss.

    loss_fn is called as loss_fn(logits, targets, reduction="none"), like torch's functional
    losses; the batch loss is the mean over examples. activity_tangents overrides the tangent
    scheme of activity perturbation (default: `activity_scheme(model)`).
    """
    if not isinstance(spec, GradientSpec):
        raise ValueError(f"spec must be a GradientSpec, got {type(spec).__name__}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if spec.is_exact:
        loss, grads = _backprop(model, inputs, targets, params, loss_fn)
    elif spec.perturbation == "weight":
        loss, grads = _weight_gradients(model, inputs, targets, params, spec, generator, loss_fn)
    else:
        scheme = _resolve_scheme(model, activity_tangents)
        loss, grads = _activity_gradients(model, inputs, targets, spec, generator, loss_fn, scheme)
    for name, p in params.items():
        p.grad = grads[name].detach().reshape(p.shape).to(p.dtype)
    return loss.detach()


def batch_loss_fn(loss_fn: LossFn, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: loss_fn(logits, targets, reduction="none").mean()


# Coupled layers and BatchNorm statistics

def couples_examples(model: nn.Module) -> bool:
    """True when a layer mixes the examples of a batch (BatchNorm in train mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in model.modules())


def activity_scheme(model: nn.Module) -> str:
    """The activity tangent scheme a model gets by default (see the module docstring)."""
    return "independent" if couples_examples(model) else "shared"


def _resolve_scheme(model: nn.Module, scheme: str | None) -> str:
    if not hasattr(model, "blocks"):
        raise ValueError(f"activity perturbation needs a model with .blocks (a BlockModel from "
                         f"fgexp.nn.models.build); {type(model).__name__} has none")
    in_blocks = {id(p) for p in model.blocks.parameters()}
    outside = [name for name, p in model.named_parameters()
               if p.requires_grad and id(p) not in in_blocks]
    if outside:
        raise ValueError(f"activity perturbation needs every trainable parameter inside a block; "
                         f"outside .blocks: {', '.join(outside[:3])}")
    if scheme is None:
        return activity_scheme(model)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown activity tangent scheme {scheme!r}; "
                         f"allowed: {', '.join(SCHEMES)}")
    if scheme == "shared" and couples_examples(model):
        raise ValueError("shared activity tangents are biased for a model whose BatchNorm layers "
                         "are in train mode; use 'independent' (the default for such models)")
    return scheme


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


# bp and weight perturbation

def _backprop(model, inputs, targets, params, loss_fn):
    with torch.enable_grad():
        loss = batch_loss_fn(loss_fn, targets)(model(inputs))
        grads = torch.autograd.grad(loss, list(params.values()))
    return loss, dict(zip(params, grads))


def _weight_gradients(model, inputs, targets, params, spec, generator, loss_fn):
    first = next(iter(params.values()))
    tangents_kxn = tangent_samplers.sample(
        spec.sampler, (), spec.k, flat_size(params), generator, angle_deg=spec.angle_deg,
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


# Activity perturbation

def shared_aggregate(tangents_kxn: torch.Tensor, jvps_bxk: torch.Tensor,
                     method: str) -> torch.Tensor:
    """aggregate() for B derivative vectors sharing one tangent set: (k, n), (B, k) -> (B, n).

    Every aggregation is linear in the derivatives, so the estimates for the k unit vectors
    e_i are computed once (one projection basis instead of B) and combined.
    """
    k, n = tangents_kxn.shape
    unit_kxk = torch.eye(k, dtype=jvps_bxk.dtype, device=jvps_bxk.device)
    basis_kxn = aggregate(tangents_kxn.expand(k, k, n), unit_kxk, method)
    return jvps_bxk @ basis_kxn


def block_shapes(model: nn.Module, inputs: torch.Tensor) -> list[torch.Size]:
    """Each block's full output shape (B, ...), from a shape-only pass on the meta device.

    The pass costs about as much Python time as a small real step, so its result is kept per
    model and input shape (a weak cache: it goes with the model).
    """
    cache = _SHAPES.setdefault(model, {})
    key = (tuple(inputs.shape), inputs.dtype)
    if key not in cache:
        shapes, h = [], inputs.to("meta")
        with torch.no_grad():
            for block in model.blocks:
                state = {name: t.to("meta") for name, t in
                         [*block.named_parameters(), *block.named_buffers()]}
                h = functional_call(block, state, (h,))
                shapes.append(h.shape)
        cache[key] = shapes
    return cache[key]


def _sample_activity_tangents(model, inputs, spec, generator, scheme):
    """Global tangents (k, N) and their per-block views (k, *shape_l)."""
    shapes = block_shapes(model, inputs)
    if scheme == "shared":
        shapes = [s[1:] for s in shapes]
    sizes = [s.numel() for s in shapes]
    first = next(iter(model.parameters()))
    tangents_kxn = tangent_samplers.sample(
        spec.sampler, (), spec.k, sum(sizes), generator, angle_deg=spec.angle_deg,
        dtype=first.dtype, device=inputs.device)
    views = [t.reshape(spec.k, *s) for t, s in zip(tangents_kxn.split(sizes, dim=-1), shapes)]
    return tangents_kxn, views


def _perturbed_block(block: nn.Module, h: torch.Tensor, eps: torch.Tensor | None):
    """block(h + eps).

    A tangent shared across the batch stays shared through an affine map: when the block
    starts with a Linear, W (h + eps) + b = (W h + b) + W eps maps the shared tangent once per
    tangent instead of once per example (16 x 1024^2 instead of 16 x 64 x 1024^2 multiply-adds
    for FC-1024 at k = 16, batch 64). Same numbers, far less work.
    """
    if eps is None:
        return block(h)
    if (eps.dim() < h.dim() and isinstance(block, nn.Sequential) and len(block)
            and isinstance(block[0], nn.Linear)):
        z = block[0](h) + F.linear(eps, block[0].weight)
        for module in block[1:]:
            z = module(z)
        return z
    return block(h + eps)


def _perturbed_losses(model, inputs, targets, loss_fn):
    """f(eps) = per-example losses (B,) with eps_l added to block l's output.

    aux: every block's (unperturbed) input and output.

    Block l's perturbation is applied where block l + 1 reads it (or where the loss does).
    """
    def f(eps):
        h, block_inputs, block_outputs, pending = inputs, [], [], None
        for block, eps_l in zip(model.blocks, eps):
            block_inputs.append(h)
            h = _perturbed_block(block, h, pending)
            block_outputs.append(h)
            pending = eps_l
        return loss_fn(h + pending, targets, reduction="none"), (block_inputs, block_outputs)
    return f


def activity_jvps_forward(model, inputs, targets, tangent_views, loss_fn=F.cross_entropy,
                          chunk_size=None, keep_graph=False):
    """Forward-mode AD along block-output tangents (k, *shape_l), batched over k.

    Returns per-example losses (B,), their directional derivatives (k, B) and each block's
    unperturbed input (keep_graph False: the pass runs under no_grad) or output with its autograd
    graph (keep_graph True: the graph of the first chunk is recorded, tangent ops included).
    BatchNorm statistics stay frozen.
    """
    f = _perturbed_losses(model, inputs, targets, loss_fn)
    zeros = [torch.zeros(v.shape[1:], dtype=v.dtype, device=v.device) for v in tangent_views]

    def along(views):
        losses_b, jvps_b, (block_inputs, block_outputs) = jvp(f, (zeros,), (views,), has_aux=True)
        return losses_b.detach(), jvps_b.detach(), block_outputs if keep_graph else block_inputs

    batched = vmap(along, in_dims=(0,), out_dims=(None, 0, None))
    k = tangent_views[0].shape[0]
    step = chunk_size or k
    parts = []
    with frozen_batch_stats(model):
        for start in range(0, k, step):
            with torch.set_grad_enabled(keep_graph and start == 0):
                parts.append(batched([v[start:start + step] for v in tangent_views]))
    losses_b, _, saved = parts[0]
    return losses_b, torch.cat([jvps for _, jvps, _ in parts]), saved


def _activity_grads_simulated(model, inputs, targets, loss_fn, scheme):
    """Backprop: per-example losses, block outputs (with graph) and dLoss/dh_l per block."""
    with torch.enable_grad():
        h, outputs = inputs, []
        for block in model.blocks:
            h = block(h)
            outputs.append(h)
        losses_b = loss_fn(h, targets, reduction="none")
        # shared: sum over examples gives each example its own dL_b/dh_l(b) (no coupling);
        # independent: the batch loss's gradient over the whole batch's activations.
        total = losses_b.sum() if scheme == "shared" else losses_b.mean()
        grads = torch.autograd.grad(total, outputs, retain_graph=True)
    return losses_b, outputs, grads


def _block_params(block: nn.Module) -> dict:
    return {name: p for name, p in block.named_parameters() if p.requires_grad}


def _local_vjps(model, tensors: list, activity_grads, recompute: bool):
    """Block-local VJPs: each block's parameters from its own output gradient only.

    tensors[l] is block l's output with its graph (simulated; autograd.grad then walks block l
    alone, since only its parameters are asked for), or, with recompute, block l's saved input:
    the block is recomputed from it, which also updates BatchNorm statistics once per step.

    Memory: the blocks go last to first, and each saved tensor is dropped from `tensors` once its
    block is done. The last blocks hold most of the parameters (ResNet18: layer4 has 75% of
    them), so their VJP, the step's largest, runs while few other gradients exist yet.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    grads = {}
    for index in reversed(range(len(model.blocks))):
        block, out, g = model.blocks[index], tensors[index], activity_grads[index]
        tensors[index] = None
        params = _block_params(block)
        if not params:
            continue
        with torch.enable_grad():
            if recompute:
                out = block(out.detach())
            local = torch.autograd.grad(out, list(params.values()), g, retain_graph=not recompute)
        del out
        grads.update({names[id(p)]: t for p, t in zip(params.values(), local)})
    return grads


def keeps_graph(spec: GradientSpec, scheme: str) -> bool:
    """Forward mode: record the blocks' graphs in the tangent pass instead of recomputing them.

    Recording saves one forward pass, but the graph also holds the tangent operations' inputs,
    k times a layer's activations; so only with one tangent per chunk, and never for coupled
    models (their running statistics are updated by the recompute).
    """
    return scheme == "shared" and min(spec.k, spec.chunk_size or spec.k) == 1


def activity_directional_derivatives(model, inputs, targets, tangent_views, mode: str,
                                     scheme: str, loss_fn: LossFn = F.cross_entropy,
                                     chunk_size: int | None = None, keep_graph: bool = False):
    """Per-example losses (B,), directional derivatives and what the local VJPs need.

    Derivatives: (B, k) per example (shared scheme) or (k,) of the batch loss (independent).
    The third value is each block's saved input (forward) or output with its graph (simulated).
    """
    if mode == "forward":
        losses_b, jvps_kxb, saved = activity_jvps_forward(
            model, inputs, targets, tangent_views, loss_fn, chunk_size, keep_graph)
        return losses_b, (jvps_kxb.T if scheme == "shared" else jvps_kxb.mean(-1)), saved
    losses_b, outputs, act_grads = _activity_grads_simulated(model, inputs, targets, loss_fn,
                                                             scheme)
    lead = 1 if scheme == "shared" else 0
    grad_n = flatten(dict(enumerate(act_grads)), lead=lead)  # (B, N) or (B*N,)
    tangents_kxn = torch.cat([v.reshape(len(v), -1) for v in tangent_views], dim=-1)
    return losses_b, grad_n @ tangents_kxn.T, outputs


def _activity_gradients(model, inputs, targets, spec, generator, loss_fn, scheme):
    tangents_kxn, views = _sample_activity_tangents(model, inputs, spec, generator, scheme)
    keep_graph = spec.mode == "forward" and keeps_graph(spec, scheme)
    losses_b, jvps, saved = activity_directional_derivatives(
        model, inputs, targets, views, spec.mode, scheme, loss_fn, spec.chunk_size, keep_graph)
    batch = len(losses_b)
    if scheme == "shared":
        estimate = shared_aggregate(tangents_kxn, jvps, spec.aggregation) / batch  # (B, N)
    else:
        estimate = aggregate(tangents_kxn, jvps, spec.aggregation)  # (B*N,)
    sizes = [v[0].numel() for v in views]
    shapes = [(batch, *v.shape[1:]) if scheme == "shared" else v.shape[1:] for v in views]
    del tangents_kxn, views  # k times the activations: not needed for the VJPs
    parts = estimate.split(sizes, dim=-1)
    activity_grads = [part.reshape(shape) for part, shape in zip(parts, shapes)]  # (B, ...)
    recompute = spec.mode == "forward" and not keep_graph
    grads = _local_vjps(model, saved, activity_grads, recompute=recompute)
    return losses_b.mean(), grads
