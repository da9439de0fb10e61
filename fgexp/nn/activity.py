"""Activity perturbation: forward gradients on every block's output, turned into parameter
gradients by block-local VJPs (no gradient flows between blocks).

Entry point: `activity_gradients`, called by fgexp.nn.gradients.set_gradients. The tangent
schemes (SCHEMES: shared across the batch, or independent per example; for BatchNorm in train
mode also the paper's per-example scheme and held batch statistics), the two modes and the
memory plan are explained in docs/network_gradients.md.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.directional import GradientSpec, flatten
from fgexp.nn.schemes import (  # noqa: F401  (re-exported: the scheme API lives there)
    COUPLED_SCHEMES, EXAMPLE_PASSES, SCHEMES, ActivitySpec, activity_scheme, check_models_scheme,
    check_scheme, couples_examples, frozen_batch_stats, held_batch_stats, resolve_scheme,
    shares_tangents)

_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {input key: shapes}

LossFn = Callable[..., torch.Tensor]  # loss_fn(logits, targets, reduction="none") -> (B,)



# Tangents, perturbed passes and block-local VJPs

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


def sample_tangents(model, inputs, spec, generator, scheme):
    """Global tangents (k, N) and their per-block views (k, *shape_l)."""
    shapes = block_shapes(model, inputs)
    if shares_tangents(scheme):
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


def per_example_jvps_forward(model, inputs, targets, tangent_views, loss_fn=F.cross_entropy,
                             chunk_size=None):
    """The per-example scheme in forward mode: d_{b,i} = <dL/dh(b), v_i> (L: the summed batch
    loss) by one forward-mode pass per example and tangent, carrying v_i on example b's
    activations and zero on the others'. B passes per tangent, EXAMPLE_PASSES examples at a
    time; returns losses (B,), derivatives (B, k) and the blocks' saved inputs.
    """
    batch, k = len(inputs), tangent_views[0].shape[0]
    columns_kxc, saved, losses_b = [], None, None
    for start in range(0, batch, EXAMPLE_PASSES):
        rows = torch.arange(start, min(start + EXAMPLE_PASSES, batch), device=inputs.device)
        views = []
        for v in tangent_views:  # (k, *shape) -> (k * c, B, *shape), one example nonzero
            one_hot = v.new_zeros(k, len(rows), batch, *v.shape[1:])
            one_hot[:, torch.arange(len(rows)), rows] = v.unsqueeze(1)
            views.append(one_hot.flatten(0, 1))
        losses_b, jvps_txb, block_inputs = activity_jvps_forward(
            model, inputs, targets, views, loss_fn, chunk_size)
        saved = block_inputs if saved is None else saved
        columns_kxc.append(jvps_txb.sum(-1).reshape(k, len(rows)))
    return losses_b, torch.cat(columns_kxc, dim=1).T, saved


def _activity_grads_simulated(model, inputs, targets, loss_fn, scheme):
    """Backprop: per-example losses, what the local VJPs need and dLoss/dh_l per block.

    The second value is every block's output with its graph, or for held-stats (whose backprop
    runs under held statistics, while its VJPs must see train-mode BatchNorm) every block's
    input, to recompute the block from.
    """
    held = scheme == "held-stats"
    with torch.enable_grad(), held_batch_stats(model) if held else nullcontext():
        h, outputs = inputs, []
        for block in model.blocks:
            h = block(h)
            outputs.append(h)
        losses_b = loss_fn(h, targets, reduction="none")
        # shared tangents: the summed loss's gradient at example b's activations, dL_b/dh_l(b)
        # without coupling, BatchNorm's coupling included otherwise (per-example);
        # independent: the batch loss's gradient over the whole batch's activations.
        total = losses_b.sum() if shares_tangents(scheme) else losses_b.mean()
        grads = torch.autograd.grad(total, outputs, retain_graph=not held)
    if held:
        outputs = [h.detach() for h in [inputs, *outputs[:-1]]]
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

    Derivatives: (B, k) per example (schemes sharing tangents) or (k,) of the batch loss
    (independent). The third value is each block's saved input (forward mode, and held-stats,
    whose VJPs see train-mode BatchNorm) or output with its graph (simulated).
    """
    if mode == "forward" and scheme == "per-example":
        return per_example_jvps_forward(model, inputs, targets, tangent_views, loss_fn,
                                        chunk_size)
    if mode == "forward":
        with held_batch_stats(model) if scheme == "held-stats" else nullcontext():
            losses_b, jvps_kxb, saved = activity_jvps_forward(
                model, inputs, targets, tangent_views, loss_fn, chunk_size, keep_graph)
        return losses_b, (jvps_kxb.T if shares_tangents(scheme) else jvps_kxb.mean(-1)), saved
    losses_b, outputs, act_grads = _activity_grads_simulated(model, inputs, targets, loss_fn,
                                                             scheme)
    lead = 1 if shares_tangents(scheme) else 0
    grad_n = flatten(dict(enumerate(act_grads)), lead=lead)  # (B, N) or (B*N,)
    tangents_kxn = torch.cat([v.reshape(len(v), -1) for v in tangent_views], dim=-1)
    return losses_b, grad_n @ tangents_kxn.T, outputs


def scheme_target(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, scheme: str,
                  loss_fn: LossFn = F.cross_entropy) -> dict:
    """The parameter gradient, by name, that a scheme's mean estimate averages to (E[v v^T] = I):
    the exact activity gradients, of the schemes' own targets, through the block-local VJPs.
    bp's gradient for every unbiased scheme; held-stats' shows its bias."""
    losses_b, outputs, act_grads = _activity_grads_simulated(model, inputs, targets, loss_fn,
                                                             scheme)
    scale = 1 / len(losses_b) if shares_tangents(scheme) else 1  # the summed loss's -> mean's
    return _local_vjps(model, outputs, [g * scale for g in act_grads],
                       recompute=scheme == "held-stats")


def activity_gradients(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                       spec: GradientSpec, generator: torch.Generator | None, loss_fn: LossFn,
                       scheme: str) -> tuple[torch.Tensor, dict]:
    """The batch loss and every trainable parameter's activity-perturbation gradient, by name."""
    tangents_kxn, views = sample_tangents(model, inputs, spec, generator, scheme)
    keep_graph = spec.mode == "forward" and keeps_graph(spec, scheme)
    losses_b, jvps, saved = activity_directional_derivatives(
        model, inputs, targets, views, spec.mode, scheme, loss_fn, spec.chunk_size, keep_graph)
    batch, shared = len(losses_b), shares_tangents(scheme)
    if shared:
        estimate = shared_aggregate(tangents_kxn, jvps, spec.aggregation) / batch  # (B, N)
    else:
        estimate = aggregate(tangents_kxn, jvps, spec.aggregation)  # (B*N,)
    sizes = [v[0].numel() for v in views]
    shapes = [(batch, *v.shape[1:]) if shared else v.shape[1:] for v in views]
    del tangents_kxn, views  # k times the activations: not needed for the VJPs
    parts = estimate.split(sizes, dim=-1)
    activity_grads = [part.reshape(shape) for part, shape in zip(parts, shapes)]  # (B, ...)
    recompute = (spec.mode == "forward" and not keep_graph) or scheme == "held-stats"
    grads = _local_vjps(model, saved, activity_grads, recompute=recompute)
    return losses_b.mean(), grads
