"""Guessed tangents from local auxiliary losses (Fournier et al. 2023), alone or with random ones.

Every block but the last gets a small auxiliary head on its output, trained on its own local
cross-entropy; the block's guess is the gradient of that local loss with respect to the block's
output, computed from the head alone (no global backward pass). The last block's output is the
logits, whose loss is already local: its guess is the true loss gradient there. The global
guess concatenates the blocks' guesses. Tangent sets (docs/local_guesses.md):
- random: k normal tangents
- guess:  the global guess plus k - 1 random tangents (k = 1: the guess alone)
- blocks: one tangent per block's guess (zero elsewhere) plus k - L random tangents
- guess+blocks: the global guess and the L per-block guesses (not orthogonal: the global guess
  is their sum) plus k - L - 1 random tangents
References without tangents: bp (the true activity gradient) and local (each block trained on
its auxiliary loss alone, i.e. the raw guesses used as activity gradients).

Every tangent is scaled to unit length. The estimate is the projection of the activity gradient
onto the tangents' span, or the mean: sum_i d_i u_i, k times the paper's mean over unit
tangents, so that both agree exactly for orthonormal tangents and differ only through the
tangents' mutual cosines. With one tangent both are Fournier's <grad, g> g / |g|^2.

Views: a model without coupled examples gets one tangent set per example (random tangents
shared across the batch, guesses per example); a model with train-mode BatchNorm gets one
tangent set over the whole batch's activations (the only one a jvp can serve exactly).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.directional import MODES
from fgexp.nn.activity import (_activity_grads_simulated, _local_vjps, activity_jvps_forward,
                               block_shapes, couples_examples, frozen_batch_stats)

TANGENT_SETS = ("random", "guess", "blocks", "guess+blocks")
METHODS = ("bp", "local", *TANGENT_SETS)  # bp and local use no tangents
AGGREGATIONS = {"mean": "sum", "projection": "projection"}  # ours -> fgexp.aggregate method
VIEWS = ("example", "batch")  # one tangent set per example, or one over the whole batch


@dataclass(frozen=True)
class GuessSpec:
    """Which activity gradient a training step uses."""
    method: str = "guess"              # a METHODS entry
    k: int = 1                         # tangents per step (bp, local: 1)
    aggregation: str = "projection"    # "mean" or "projection" (a key of AGGREGATIONS)
    mode: str = "simulated"            # "forward" (one jvp per tangent) or "simulated"
    perturbation: str = "activity"     # guesses live on block outputs: activity only

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown tangent set {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.perturbation != "activity":
            raise ValueError(f"guessed tangents need activity perturbation (they are gradients "
                             f"with respect to block outputs), got {self.perturbation!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; allowed: "
                             f"{', '.join(AGGREGATIONS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.method in ("bp", "local") and self.k != 1:
            raise ValueError(f"{self.method} uses no tangents; k must be 1, got {self.k}")

    def guesses_needed(self, num_blocks: int) -> int:
        """How many of the set's tangents are guesses (the rest are random)."""
        return {"guess": 1, "blocks": num_blocks, "guess+blocks": num_blocks + 1}.get(
            self.method, 0)

    def check_blocks(self, num_blocks: int) -> None:
        """k must hold every guess of the set (blocks: one per block; guess+blocks: one more)."""
        needed = self.guesses_needed(num_blocks)
        if self.k < needed:
            raise ValueError(f"tangent set {self.method!r} needs k >= {needed} (its guesses, "
                             f"for {num_blocks} blocks), got k={self.k}")


# Auxiliary heads and the guesses

def aux_head(shape: torch.Size, num_classes: int) -> nn.Module:
    """A head for a block output of per-example shape (features,) or (C, H, W)."""
    if len(shape) == 1:
        return nn.Linear(shape[0], num_classes)
    if len(shape) == 3:  # a tiny conv-free head: 2x2 average pool, then linear
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(shape[0] * 4,
                                                                              num_classes))
    raise ValueError(f"no auxiliary head for block outputs of shape {tuple(shape)}")


class GuessedNet(nn.Module):
    """A BlockModel `net` with one auxiliary head per block but the last; forward = net."""

    def __init__(self, net: nn.Module, example_inputs: torch.Tensor, num_classes: int):
        super().__init__()
        self.net = net
        shapes = block_shapes(net, example_inputs)[:-1]
        self.heads = nn.ModuleList(aux_head(s[1:], num_classes) for s in shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def local_guesses(heads: nn.ModuleList, outputs: list[torch.Tensor], targets: torch.Tensor,
                  loss_fn=F.cross_entropy) -> tuple[list[torch.Tensor], dict]:
    """Each block's guess d(local loss)/d(output) (B, ...) and the heads' gradients by name.

    The local loss is the batch mean of loss_fn(head(h), y); the last output is the logits and
    its local loss is the loss itself. Only the heads are differentiated, never a block.
    """
    guesses, head_grads = [], {}
    for index, out in enumerate(outputs):
        h = out.detach().requires_grad_(True)
        head = heads[index] if index < len(heads) else nn.Identity()
        params = dict(head.named_parameters())
        with torch.enable_grad():
            local = loss_fn(head(h), targets, reduction="none").mean()
            g_h, *g_params = torch.autograd.grad(local, [h, *params.values()])
        guesses.append(g_h)
        head_grads.update({f"heads.{index}.{name}": g for name, g in zip(params, g_params)})
    return guesses, head_grads


# Tangent sets

def flat_units(tensors: list[torch.Tensor], view: str) -> torch.Tensor:
    """Block tensors (B, ...) as (U, D): one row per example (view 'example') or one row."""
    flat = torch.cat([t.reshape(len(t), -1) for t in tensors], dim=-1)  # (B, N)
    return flat if view == "example" else flat.reshape(1, -1)


def unit(rows: torch.Tensor) -> torch.Tensor:
    """Each row (last dim) scaled to unit length; a zero row stays zero."""
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)


def tangent_set(spec: GuessSpec, guesses: list[torch.Tensor], view: str,
                generator: torch.Generator | None) -> torch.Tensor:
    """Unit tangents (U, k, D) of the spec's set; guesses are the blocks' (B, ...) guesses."""
    guess_bxn = torch.cat([g.reshape(len(g), -1) for g in guesses], dim=-1)  # example-major
    guess_ud = guess_bxn if view == "example" else guess_bxn.reshape(1, -1)
    units, dim = guess_ud.shape
    fixed = []  # (U, D) guess tangents
    if spec.method in ("guess", "guess+blocks"):
        fixed.append(guess_ud)
    if spec.method in ("blocks", "guess+blocks"):  # block l's guess, zero on every other block
        start = 0
        for g in guesses:
            block_bxn = torch.zeros_like(guess_bxn)
            size = g[0].numel()
            block_bxn[:, start:start + size] = guess_bxn[:, start:start + size]
            fixed.append(block_bxn.reshape(units, dim))
            start += size
    fixed_ukd = unit(torch.stack(fixed, dim=1)) if fixed else guess_ud.new_zeros(units, 0, dim)
    extra = spec.k - fixed_ukd.shape[1]  # >= 0: checked by spec.check_blocks
    if not extra:
        return fixed_ukd
    random_kd = tangent_samplers.sample("normal", (), extra, dim, generator, dtype=guess_ud.dtype,
                                        device=guess_ud.device)
    # example view: the random tangents are shared across the batch, as fgexp's shared scheme
    return torch.cat([fixed_ukd, unit(random_kd).expand(units, extra, dim)], dim=1)


def to_blocks(rows: torch.Tensor, like: list[torch.Tensor], view: str) -> list[torch.Tensor]:
    """(U, D) or (U, k, D) in `view` back to per-block tensors (B, ...) or (k, B, ...)."""
    batch = len(like[0])
    if rows.dim() == 2:
        per_example = rows.reshape(batch, -1)  # (B, N)
    elif view == "example":
        per_example = rows.transpose(0, 1)  # (k, B, N)
    else:
        per_example = rows[0].reshape(len(rows[0]), batch, -1)  # (k, B, N)
    parts = per_example.split([t[0].numel() for t in like], dim=-1)
    return [p.reshape(*p.shape[:-2], *t.shape) for p, t in zip(parts, like)]


def mutual_cosine(tangents_ukd: torch.Tensor) -> float:
    """Mean |cos| over the pairs of (unit) tangents, averaged over units; NaN for k = 1."""
    k = tangents_ukd.shape[1]
    if k < 2:
        return float("nan")
    gram = tangents_ukd @ tangents_ukd.transpose(-1, -2)  # (U, k, k)
    off = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    return float(gram[:, off].abs().mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).squeeze())


# One training step

def directional_derivatives(net, inputs, targets, tangents_ukd, like, view, mode, loss_fn,
                            true_ud=None):
    """Derivatives (U, k) of the batch-mean loss along each unit's tangents.

    simulated: tangents times the true activity gradient; forward: one jvp per tangent, the
    tangent of every unit applied at once (examples do not couple in the 'example' view).
    Returns (derivatives, saved): saved are the block inputs the local VJPs recompute from.
    """
    if mode == "simulated":
        return torch.einsum("ukd,ud->uk", tangents_ukd, true_ud), None
    views = to_blocks(tangents_ukd, like, view)  # each (k, B, ...)
    _, jvps_kxb, saved = activity_jvps_forward(net, inputs, targets, views, loss_fn)
    batch = len(inputs)
    jvps_uk = jvps_kxb.T / batch if view == "example" else jvps_kxb.mean(-1, keepdim=True).T
    return jvps_uk, saved


def block_outputs(net, inputs, targets, mode, loss_fn):
    """Losses (B,), block outputs and (simulated) the true activity gradients of the mean loss."""
    if mode == "simulated":
        return _activity_grads_simulated(net, inputs, targets, loss_fn, "independent")
    with torch.no_grad(), frozen_batch_stats(net):
        h, outputs = inputs, []
        for block in net.blocks:
            h = block(h)
            outputs.append(h)
        losses_b = loss_fn(h, targets, reduction="none")
    return losses_b, outputs, None


@dataclass
class Measures:
    """Per-step measures, averaged per epoch: cosine of the activity-gradient estimate to the
    true one (simulated mode only) and the tangents' mean mutual |cos|."""
    cos_true: list[float]
    mutual_cos: list[float]

    @classmethod
    def empty(cls) -> "Measures":
        return cls([], [])

    def means(self) -> dict:
        def mean(xs):
            return sum(xs) / len(xs) if xs else float("nan")
        return {"cos_true": mean(self.cos_true), "mutual_cos": mean(self.mutual_cos)}


def activity_estimate(spec, guesses, true_grads, net, inputs, targets, generator, loss_fn):
    """The activity gradients (B, ...) per block, the saved block inputs and the measures."""
    view = "batch" if couples_examples(net) else "example"
    if spec.method == "bp":
        return list(true_grads), None, float("nan")
    if spec.method == "local":
        return guesses, None, float("nan")
    spec.check_blocks(len(guesses))
    tangents_ukd = tangent_set(spec, guesses, view, generator)
    true_ud = None if true_grads is None else flat_units(true_grads, view)
    jvps_uk, saved = directional_derivatives(net, inputs, targets, tangents_ukd, guesses, view,
                                             spec.mode, loss_fn, true_ud)
    spanning = slice(None)
    if spec.method == "guess+blocks" and spec.aggregation == "projection":
        # The global guess lies in the span of the per-block guesses: the projection onto the
        # same span without it, which keeps the Gram matrix regular.
        spanning = slice(1, None)
    estimate_ud = aggregate(tangents_ukd[:, spanning], jvps_uk[:, spanning],
                            AGGREGATIONS[spec.aggregation])
    return to_blocks(estimate_ud, guesses, view), saved, mutual_cosine(tangents_ukd)


def guess_step(model: GuessedNet, inputs: torch.Tensor, targets: torch.Tensor, spec: GuessSpec,
               generator: torch.Generator | None = None, measures: Measures | None = None,
               loss_fn: Callable = F.cross_entropy) -> torch.Tensor:
    """Set .grad on the network (from the spec's activity gradient) and on the heads (from
    their local losses); return the batch loss. Signature of fgexp.nn.train.train_epoch's hook."""
    net = model.net
    mode = "simulated" if spec.method == "bp" else spec.mode  # bp is backprop in either mode
    losses_b, outputs, true_grads = block_outputs(net, inputs, targets, mode, loss_fn)
    guesses, head_grads = local_guesses(model.heads, outputs, targets, loss_fn)
    activity_grads, saved, mutual = activity_estimate(spec, guesses, true_grads, net, inputs,
                                                      targets, generator, loss_fn)
    if measures is not None and true_grads is not None:
        measures.cos_true.append(cosine(torch.cat([a.flatten() for a in activity_grads]),
                                        torch.cat([t.flatten() for t in true_grads])))
        measures.mutual_cos.append(mutual)
    if saved is None:  # simulated (graphs kept in outputs), or forward local learning
        recompute = mode == "forward"
        # forward: the block inputs (the input, then each output but the last) to recompute from
        saved = [inputs, *outputs[:-1]] if recompute else outputs
    else:
        recompute = True
    grads = _local_vjps(net, list(saved), [a.detach() for a in activity_grads], recompute)
    grads = {f"net.{name}": g for name, g in grads.items()} | head_grads
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.grad = grads[name].detach().reshape(p.shape).to(p.dtype)
    return losses_b.mean().detach()
