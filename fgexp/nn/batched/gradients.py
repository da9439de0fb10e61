"""One training step's gradients for R stacked FC runs: bp, or a forward gradient of the
block outputs (activity) or of the weights, in forward or simulated mode.

Runs sharing a GradientSpec form a group: their tangents are drawn one run at a time from
each run's own generator (the draws fgexp.nn.gradients makes for that run alone) and then
stacked, so the estimate is the single-run estimate computed with a leading run dimension.
Activity tangents are shared across the examples of a batch (the scheme FC models get by
default; docs/network_gradients.md). For an FC network every block is one Linear (+ ReLU),
so backprop, forward-mode tangent propagation and the block-local VJPs are written out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.directional import GradientSpec
from fgexp.nn.batched.stacked import StackedFC, cross_entropy_runs, forward


def groups(specs: Sequence[GradientSpec]) -> list[tuple[GradientSpec, list[int]]]:
    """(spec, positions) for each distinct spec, in order of first appearance."""
    out: dict[GradientSpec, list[int]] = {}
    for i, spec in enumerate(specs):
        out.setdefault(spec, []).append(i)
    return list(out.items())


def draw(spec: GradientSpec, n: int, gens: Sequence[torch.Generator], like: torch.Tensor):
    """Tangents (Rg, k, n): one draw per run from its own generator."""
    return torch.stack([tangent_samplers.sample(spec.sampler, (), spec.k, n, g,
                                                angle_deg=spec.angle_deg, dtype=like.dtype,
                                                device=like.device) for g in gens])


def output_grads(stacked: StackedFC, masks, delta_rxbxc: torch.Tensor) -> list[torch.Tensor]:
    """Backprop: dL_b/dh_l (R, B, n_l) of every block output, L the sum of example losses."""
    grads = [delta_rxbxc]
    for l in range(len(stacked.weights) - 1, 0, -1):
        dz = grads[0] if l == len(stacked.weights) - 1 else grads[0] * masks[l]
        grads.insert(0, torch.matmul(dz, stacked.weights[l]))
    return grads


def weight_grads(stacked: StackedFC, inputs, masks, out_grads) -> dict[str, torch.Tensor]:
    """Block-local VJPs: each layer's (R, ...) gradients from its own output gradient."""
    grads = {}
    last = len(stacked.weights) - 1
    for l, ((w_name, b_name), a) in enumerate(zip(stacked.names, inputs)):
        dz = out_grads[l] if l == last else out_grads[l] * masks[l]
        grads[w_name] = torch.matmul(dz.transpose(1, 2), a)
        grads[b_name] = dz.sum(1)
    return grads


def shared_aggregate_runs(tangents_rxkxn: torch.Tensor, jvps_rxbxk: torch.Tensor,
                          method: str) -> torch.Tensor:
    """fgexp.nn.activity.shared_aggregate with a leading run dimension: (R, B, n).

    The aggregation is linear in the derivatives: estimates for the k unit vectors first.
    """
    r, k, n = tangents_rxkxn.shape
    unit = torch.eye(k, dtype=jvps_rxbxk.dtype, device=jvps_rxbxk.device).expand(r, k, k)
    basis_rxkxn = aggregate(tangents_rxkxn.unsqueeze(1).expand(r, k, k, n), unit, method)
    return torch.matmul(jvps_rxbxk, basis_rxkxn)


def activity_jvps_forward(weights, masks, delta, views) -> torch.Tensor:
    """Forward-mode directional derivatives (Rg, B, k) of each example's loss along block-
    output tangents views[l] (Rg, k, n_l), no backward pass: the tangent of block l's output
    is pushed through the later layers (ReLU masks of the primal pass) into the logits and
    contracted with the loss's derivative there."""
    last = len(weights) - 1
    u = views[0]  # (Rg, k, n_0): shared across the batch until the first mask
    for l in range(1, last + 1):
        w_t = weights[l].transpose(1, 2)
        dz = torch.matmul(u, w_t if u.dim() == 3 else w_t.unsqueeze(1))
        if l < last:
            dz = (dz.unsqueeze(1) if dz.dim() == 3 else dz) * masks[l].unsqueeze(2)
        shared_v = views[l].unsqueeze(1) if dz.dim() == 4 else views[l]
        u = dz + shared_v
    if u.dim() == 3:  # a single block: the tangent reaches the loss unmasked
        u = u.unsqueeze(1)
    return (u * delta.unsqueeze(2)).sum(-1)


def weight_jvps_forward(weights, inputs, masks, delta, tangents) -> torch.Tensor:
    """Forward-mode directional derivatives (Rg, k) of the batch-mean loss along parameter
    tangents {name: (Rg, k, *shape)} (weights then bias per layer)."""
    last = len(weights) - 1
    da = None
    for l, (dw, db) in enumerate(tangents):
        dz = torch.matmul(inputs[l].unsqueeze(1), dw.transpose(-1, -2)) + db.unsqueeze(2)
        if da is not None:
            dz = dz + torch.matmul(da, weights[l].transpose(1, 2).unsqueeze(1))
        da = dz if l == last else dz * masks[l].unsqueeze(1)
    return (da * delta.unsqueeze(1)).sum(-1).mean(-1)  # (Rg, k, B, C) -> (Rg, k)


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def _split(flat_rx_n: torch.Tensor, like: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """(Rg, ..., P) -> one (Rg, ..., *shape) view per parameter of `like` ((Rg, *shape))."""
    sizes = [p[0].numel() for p in like.values()]
    lead = flat_rx_n.shape[:-1]
    return [part.reshape(*lead, *p.shape[1:])
            for part, p in zip(flat_rx_n.split(sizes, dim=-1), like.values())]


def from_outputs(spec: GradientSpec) -> bool:
    """bp and activity perturbation: parameter gradients by block-local VJPs of output
    gradients (exact or estimated); weight perturbation estimates them directly."""
    return spec.is_exact or spec.perturbation == "activity"


def step_gradients(stacked: StackedFC, a_rxbxd: torch.Tensor, y_rxb: torch.Tensor,
                   specs: Sequence[GradientSpec], tangent_gens: Sequence[torch.Generator],
                   draws: tangent_samplers.NormalBuffer | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch losses (R,) and every parameter's gradient (R, ...) as each run's spec asks;
    `draws`: where weight perturbation draws its normal tangents, reused across steps."""
    inputs, masks, logits = forward(stacked, a_rxbxd)
    losses_rxb = cross_entropy_runs(logits, y_rxb)
    batch = losses_rxb.shape[1]
    delta = logits.softmax(-1) - F.one_hot(y_rxb, logits.shape[-1]).to(logits.dtype)
    # One backward pass for the whole batch when any run needs the exact output gradients
    # (bp, simulated mode); forward-mode runs never read them.
    backprop = any(s.is_exact or s.mode == "simulated" for s in specs)
    exact = output_grads(stacked, masks, delta) if backprop else None
    sizes = [m.shape[-1] for m in masks] + [logits.shape[-1]]
    estimates = [torch.empty(*delta.shape[:2], n, dtype=delta.dtype, device=delta.device)
                 for n in sizes]  # block l: (R, B, n_l), filled group by group
    weight_runs = {}  # position -> {name: (...)} of weight-perturbation runs
    for spec, pos in groups(specs):
        idx = torch.as_tensor(pos, device=logits.device)
        gens = [tangent_gens[i] for i in pos]
        if from_outputs(spec):
            est = _activity_estimate(spec, stacked, idx, gens, masks, delta, exact, sizes, batch)
            for e, part in zip(estimates, est):
                e[idx] = part
            continue
        exact_out = None if exact is None else [g[idx] / batch for g in exact]
        sub = stacked.select(pos)
        est = _weight_estimate(spec, sub, [a[idx] for a in inputs], [m[idx] for m in masks],
                               delta[idx], exact_out, gens, draws)
        weight_runs.update({i: {name: g[r] for name, g in zip(sub.params(), est)}
                            for r, i in enumerate(pos)})
    if not weight_runs:  # block-local VJPs of every run at once
        return losses_rxb.mean(1), weight_grads(stacked, inputs, masks, estimates)
    grads = {name: torch.empty_like(p) for name, p in stacked.params().items()}
    outputs = [i for i, s in enumerate(specs) if from_outputs(s)]
    if outputs:
        idx = torch.as_tensor(outputs, device=logits.device)
        local = weight_grads(stacked.select(outputs), [a[idx] for a in inputs],
                             [m[idx] for m in masks], [e[idx] for e in estimates])
        for name in grads:
            grads[name][idx] = local[name]
    for i, run_grads in weight_runs.items():
        for name, g in run_grads.items():
            grads[name][i] = g
    return losses_rxb.mean(1), grads


def _activity_estimate(spec, stacked, idx, gens, masks, delta, exact, sizes, batch):
    """Each block output's estimated gradient (Rg, B, n_l) (bp: the exact one) / B."""
    if spec.is_exact:
        return [g[idx] / batch for g in exact]
    tangents = draw(spec, sum(sizes), gens, delta)  # (Rg, k, N)
    if spec.mode == "forward":
        jvps = activity_jvps_forward([w[idx] for w in stacked.weights],
                                     [m[idx] for m in masks], delta[idx],
                                     list(tangents.split(sizes, dim=-1)))
    else:
        grad_rxbxn = torch.cat([g[idx] for g in exact], dim=-1)
        jvps = torch.matmul(grad_rxbxn, tangents.transpose(1, 2))
    estimate = shared_aggregate_runs(tangents, jvps, spec.aggregation) / batch
    return list(estimate.split(sizes, dim=-1))


def _weight_estimate(spec, sub: StackedFC, inputs, masks, delta, exact_out, gens, draws):
    """Weight perturbation: k global tangents over all parameters of each run (Rg, ...)."""
    like = sub.params()
    n = sum(p[0].numel() for p in like.values())
    if draws is not None and spec.sampler == "normal":  # (Rg, k, P), into a reused buffer
        tangents = draws.draw(spec.k, n, list(gens), dtype=delta.dtype, device=delta.device)
    else:
        tangents = draw(spec, n, gens, delta)
    if spec.mode == "forward":
        views = _split(tangents, like)
        jvps = weight_jvps_forward(sub.weights, inputs, masks, delta,
                                   list(zip(views[0::2], views[1::2])))
    else:
        exact_rxp = _flat(weight_grads(sub, inputs, masks, exact_out))
        jvps = torch.matmul(tangents, exact_rxp.unsqueeze(-1)).squeeze(-1)
    return _split(aggregate(tangents, jvps, spec.aggregation), like)
