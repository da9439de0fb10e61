"""Ren et al.'s local greedy losses on a LocalMixer, and the six training methods of their
Table 3: BP, LG-BP, FG-W, FG-A, LG-FG-W, LG-FG-A, each forward-gradient method with k tangents
combined by an fgexp.aggregate method inside every local loss.

Local losses (docs/local_losses.md). Block b's local head reads its block output, LayerNormed
per (token, group) and averaged over tokens. One local loss per slice of that output:
- scope "block": one loss per block; "patch": one per (block, token); "group": one per
  (block, token, group), Ren et al.'s choice. Every slice's loss has the value of the block's
  cross-entropy, but its derivative flows only through its own slice of the block output
  (the rest is stop-gradient), so the slices' gradients add up to the block loss's gradient.
- LG methods put a stop-gradient between blocks; the readout trains on the detached last block.
Heads (local heads and readout) always get their exact gradient from the detached features.

Forward gradients of a local loss j use only the perturbation coordinates S_j it depends on:
activities (perturbation points after each linear layer's LayerNorm, tangents per example) or
weights (tangents shared by the batch). The estimate of the gradient on S_j is
aggregate(V|S_j, d_j) with the k directional derivatives d_j of loss j; the estimates of all
local losses are added. Activity estimates reach the weights by layer-local VJPs, with
tangents restricted to active ReLU units (Ren et al.'s masking; the directional derivatives
are the same, the gradient is zero elsewhere). Global FG-W / FG-A are the case of one loss,
the readout's cross-entropy, with S = everything.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import METHODS as AGGREGATIONS
from fgexp.directional import MODES, flatten, unflatten
from fgexp.nn.local_units import aggregate_units, units
from fgexp.nn.mixer import LocalMixer, normed_groups

METHODS = ("bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a")
SCOPES = ("block", "patch", "group")


@dataclass(frozen=True)
class LocalSpec:
    """Which method, and how its forward gradients are formed."""
    method: str = "lg-fg-a"     # a METHODS entry
    k: int = 1                  # tangents per step (forward-gradient methods)
    aggregation: str = "mean"   # fgexp.aggregate method combining the k tangents per local loss
    mode: str = "forward"       # "forward" (forward-mode AD) or "simulated" (from backprop)
    scope: str = "group"        # local losses per block, (block, token) or (block, token, group)
    sampler: str = "normal"     # fgexp.tangents sampler

    def __post_init__(self):
        for name, value, allowed in (("method", self.method, METHODS),
                                     ("aggregation", self.aggregation, AGGREGATIONS),
                                     ("mode", self.mode, MODES), ("scope", self.scope, SCOPES),
                                     ("sampler", self.sampler, tangent_samplers.SAMPLERS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")

    @property
    def is_local(self) -> bool:
        return self.method.startswith("lg")

    @property
    def perturbation(self) -> str | None:
        """"weight" (FG-W, LG-FG-W), "activity" (FG-A, LG-FG-A), None (BP, LG-BP)."""
        if "fg" not in self.method:
            return None
        return "weight" if self.method.endswith("-w") else "activity"


# Local losses

def local_logits(features_bxpxc: torch.Tensor, head: torch.nn.Linear, groups: int):
    """Block b's local head on its output: (B, P, C) -> logits (B, classes)."""
    return head(normed_groups(features_bxpxc, groups).mean(1).flatten(1))


def restricted_losses(features_bxpxc, head, groups: int, targets_b, scope: str) -> torch.Tensor:
    """Per-example local losses (B, J): J = 1, P or P * G (token-major) for the scopes.

    Every column has the value of the block's cross-entropy; its derivative flows only through
    its own slice of `features` (one token, or one token's group of channels).
    """
    normed = normed_groups(features_bxpxc, groups)  # (B, P, G, C/G)
    b, p, g, c = normed.shape
    weight_kxgxc = head.weight.reshape(-1, g, c)
    parts = torch.einsum("npgc,kgc->npgk", normed, weight_kxgxc) / p  # (B, P, G, classes)
    logits = parts.sum((1, 2)) + head.bias
    live = parts - parts.detach()  # value 0, derivative of one slice's share
    live = {"group": live, "patch": live.sum(2, keepdim=True),
            "block": live.sum((1, 2), keepdim=True)}[scope]
    sliced = logits.detach()[:, None, None] + live  # (B, P|1, G|1, classes)
    j = sliced.shape[1] * sliced.shape[2]
    losses = F.cross_entropy(sliced.reshape(b * j, -1), targets_b.repeat_interleave(j),
                             reduction="none")
    return losses.reshape(b, j)


def head_loss(model: LocalMixer, outputs: list, targets_b) -> torch.Tensor:
    """The heads' objective: every local head and the readout on detached block outputs."""
    groups = model.size.groups
    total = F.cross_entropy(model.readout(outputs[-1].detach()), targets_b)
    for features, head in zip(outputs, model.local_heads):
        total = total + F.cross_entropy(local_logits(features.detach(), head, groups), targets_b)
    return total


def mixer_forward(model: LocalMixer, inputs, eps_blocks=None, detach_between=False,
                  states=None) -> tuple[list, list]:
    """Block inputs and outputs; eps_blocks[b]: point -> (B, P, C); states: one dict per block."""
    block_inputs, outputs, h = [], [], inputs
    for b, block in enumerate(model.mixer_blocks):
        block_inputs.append(h)
        h = block(h, None if eps_blocks is None else eps_blocks[b],
                  states=None if states is None else states[b])
        outputs.append(h)
        if detach_between:
            h = h.detach()
    return block_inputs, outputs


def loss_columns(model: LocalMixer, outputs, targets_b, spec: LocalSpec) -> torch.Tensor:
    """Per-example losses (B, J): the local losses of every block, or the readout's loss."""
    if not spec.is_local:
        return F.cross_entropy(model.readout(outputs[-1]), targets_b, reduction="none")[:, None]
    groups = model.size.groups
    return torch.cat([restricted_losses(f, head, groups, targets_b, spec.scope)
                      for f, head in zip(outputs, model.local_heads)], dim=1)


def weight_columns(losses_bxj: torch.Tensor, model: LocalMixer, spec: LocalSpec):
    """(B, J) per-example losses -> (J_w,) weight losses: batch mean, and the sum over tokens
    (weights are shared by the tokens, so per-token losses cannot separate their tangents)."""
    if not spec.is_local or spec.scope == "block":
        return losses_bxj.mean(0)
    n_blocks, p = model.size.blocks, model.size.patches ** 2
    per_block = losses_bxj.reshape(len(losses_bxj), n_blocks, p, -1).sum(2)  # (B, blocks, G|1)
    return per_block.reshape(len(losses_bxj), -1).mean(0)


# Directional derivatives: forward-mode AD, or simulated from backprop

def main_params(model: LocalMixer) -> dict:
    """The mixer blocks' parameters (what the methods differ on), by name."""
    n = model.size.blocks
    return {name: p for name, p in model.named_parameters()
            if name.startswith("blocks.") and int(name.split(".")[1]) < n}


def _split_points(model: LocalMixer, eps_bxn: torch.Tensor) -> list[dict]:
    """Flat (B, N) activity perturbations -> per block {point: (B, P, C)}."""
    tokens, channels = model.size.patches ** 2, model.size.channels
    out, start = [], 0
    for block in model.mixer_blocks:
        points = {}
        for point in block.points:
            points[point] = eps_bxn[:, start:start + tokens * channels].reshape(
                -1, tokens, channels)
            start += tokens * channels
        out.append(points)
    return out


def _flat_points(model: LocalMixer, states: list[dict], prefix: str = "") -> torch.Tensor:
    """Per-block state dicts -> flat (B, N), in the perturbation layout."""
    return torch.cat([states[b][prefix + point].flatten(1)
                      for b, block in enumerate(model.mixer_blocks) for point in block.points],
                     dim=1)


def activity_jvps(model, inputs, targets_b, tangents_bxkxn, spec: LocalSpec) -> torch.Tensor:
    """Directional derivatives (B, J, k) of every per-example loss column along its tangents."""
    def columns(eps_bxn):
        _, outputs = mixer_forward(model, inputs, _split_points(model, eps_bxn), spec.is_local)
        return loss_columns(model, outputs, targets_b, spec)

    zeros = torch.zeros(tangents_bxkxn.shape[0], tangents_bxkxn.shape[-1],
                        dtype=tangents_bxkxn.dtype, device=tangents_bxkxn.device)
    if spec.mode == "forward":
        with torch.no_grad():
            along = vmap(lambda v: jvp(columns, (zeros,), (v,))[1], in_dims=1, out_dims=-1)
            return along(tangents_bxkxn)
    eps = zeros.requires_grad_(True)
    with torch.enable_grad():
        losses_bxj = columns(eps)
        j = losses_bxj.shape[1]
        unit_jxbxj = torch.eye(j, dtype=eps.dtype, device=eps.device)[:, None].expand(
            j, len(eps), j)
        (grads_jxbxn,) = torch.autograd.grad(losses_bxj, eps, unit_jxbxj, is_grads_batched=True)
    return torch.einsum("jbn,bkn->bjk", grads_jxbxn, tangents_bxkxn)


class _WeightColumns(torch.nn.Module):
    """The weight loss columns as a module of the model's parameters (for functional_call)."""

    def __init__(self, model: LocalMixer, spec: LocalSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, inputs, targets_b):
        _, outputs = mixer_forward(self.model, inputs, detach_between=self.spec.is_local)
        return weight_columns(loss_columns(self.model, outputs, targets_b, self.spec),
                              self.model, self.spec)


def weight_jvps(model, inputs, targets_b, tangents_kxn, spec: LocalSpec) -> torch.Tensor:
    """Directional derivatives (J_w, k) of the weight loss columns along weight tangents."""
    params = main_params(model)
    columns = _WeightColumns(model, spec)
    if spec.mode == "forward":
        flat = flatten({n: p.detach() for n, p in params.items()})
        primals = unflatten(flat, params)

        def along(v_n):
            tangent = unflatten(v_n, params)
            return jvp(lambda ps: functional_call(columns, {f"model.{n}": t for n, t in
                                                            ps.items()}, (inputs, targets_b)),
                       (primals,), (tangent,))[1]

        with torch.no_grad():
            return vmap(along, out_dims=-1)(tangents_kxn)
    with torch.enable_grad():
        losses_j = columns(inputs, targets_b)
        unit_jxj = torch.eye(len(losses_j), dtype=losses_j.dtype, device=losses_j.device)
        grads = torch.autograd.grad(losses_j, list(params.values()), unit_jxj,
                                    is_grads_batched=True)
    grads_jxn = flatten(dict(zip(params, grads)), lead=1)
    return grads_jxn @ tangents_kxn.T


# Parameter gradients of each method

def _draw(spec: LocalSpec, lead: tuple, n: int, generator, like: torch.Tensor):
    return tangent_samplers.sample(spec.sampler, lead, spec.k, n, generator,
                                   dtype=like.dtype, device=like.device)


def _activity_grads(model, inputs, targets_b, spec, generator, block_inputs, states):
    """Main-parameter gradients of FG-A / LG-FG-A: estimates on the perturbation points, then
    layer-local VJPs; tangents restricted to active ReLU units."""
    active_bxn = (_flat_points(model, states, "pre_") > 0).to(inputs.dtype)
    tangents = _draw(spec, (len(inputs),), active_bxn.shape[1], generator, inputs)
    jvps_bxjxk = activity_jvps(model, inputs, targets_b, tangents, spec)
    tangents = tangents * active_bxn[:, None]  # <grad, v> is unchanged: grad is 0 there
    estimate = aggregate_units(units(model, spec), tangents, jvps_bxjxk, spec.aggregation)
    estimate = estimate / len(inputs)  # the objective is the batch mean
    grads = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for block, x, eps in zip(model.mixer_blocks, block_inputs, _split_points(model, estimate)):
        local_states: dict = {}
        with torch.enable_grad():
            block(x.detach(), local=True, states=local_states)
            total = sum((local_states[pt] * eps[pt]).sum() for pt in block.points)
            params = list(block.parameters())
            grads.update({names[id(p)]: g for p, g in
                          zip(params, torch.autograd.grad(total, params))})
    return grads


def _weight_grads(model, inputs, targets_b, spec, generator):
    params = main_params(model)
    n = sum(p.numel() for p in params.values())
    tangents_kxn = _draw(spec, (), n, generator, inputs)
    jvps_jxk = weight_jvps(model, inputs, targets_b, tangents_kxn, spec)
    return unflatten(aggregate_units(units(model, spec), tangents_kxn, jvps_jxk,
                                     spec.aggregation), params)


def _exact_grads(model, inputs, targets_b, spec):
    params = main_params(model)
    with torch.enable_grad():
        _, outputs = mixer_forward(model, inputs, detach_between=spec.is_local)
        if spec.is_local:
            objective = loss_columns(model, outputs, targets_b, spec).mean(0).sum()
        else:
            objective = F.cross_entropy(model.readout(outputs[-1]), targets_b)
        grads = torch.autograd.grad(objective, list(params.values()))
    return dict(zip(params, grads))


def local_gradients(model: LocalMixer, inputs, targets_b, spec: LocalSpec,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The readout's batch loss and every parameter's gradient for `spec`, by name."""
    states = [{} for _ in model.mixer_blocks]
    with torch.no_grad():
        block_inputs, outputs = mixer_forward(model, inputs, states=states)
        loss = F.cross_entropy(model.readout(outputs[-1]), targets_b)
    if spec.perturbation is None:
        grads = _exact_grads(model, inputs, targets_b, spec)
    elif spec.perturbation == "weight":
        grads = _weight_grads(model, inputs, targets_b, spec, generator)
    else:
        grads = _activity_grads(model, inputs, targets_b, spec, generator, block_inputs, states)
    heads = {n: p for n, p in model.named_parameters() if n not in grads}
    with torch.enable_grad():
        head_grads = torch.autograd.grad(head_loss(model, outputs, targets_b),
                                         list(heads.values()))
    return loss, {**grads, **dict(zip(heads, head_grads))}


def set_local_gradients(model: LocalMixer, inputs, targets_b, spec: LocalSpec,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Set p.grad on every parameter (fgexp.nn.train's set_gradients signature); the loss."""
    loss, grads = local_gradients(model, inputs, targets_b, spec, generator)
    for name, p in model.named_parameters():
        p.grad = grads[name].detach().reshape(p.shape)
    return loss
