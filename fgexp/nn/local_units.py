"""Which perturbation coordinates each of Ren et al.'s local losses depends on, and the
estimate of the gradient over them: the units of a LocalMixer's flat activity or weight
perturbation vector (docs/local_losses.md; the methods are in fgexp.nn.local_losses).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fgexp.aggregate import aggregate
from fgexp.nn.mixer import LocalMixer, MixerBlock

if TYPE_CHECKING:  # annotations only: local_losses imports this module
    from fgexp.nn.local_losses import LocalSpec

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: slice plans}


@dataclass(frozen=True)
class Unit:
    """A stretch [start, stop) of the flat perturbation vector (a block, or all of it for the
    global methods) and the losses that own it: columns [first, last) of the weight or
    per-example loss columns; loss j depends on coordinates start + index_jxs[j] only."""
    start: int
    stop: int
    first: int
    last: int
    index_jxs: torch.Tensor


def _slices(spec: LocalSpec, patches: int, groups: int) -> list[tuple[int, int]]:
    """(token, group) of each local loss of a block; -1: all of them (loss-column order)."""
    if spec.perturbation == "weight":  # tokens share the weights
        return [(-1, g) for g in range(groups)] if spec.scope == "group" else [(-1, -1)]
    if spec.scope == "group":
        return [(p, g) for p in range(patches) for g in range(groups)]
    return [(p, -1) for p in range(patches)] if spec.scope == "patch" else [(-1, -1)]


def _span(group: int, width: int, total: int) -> torch.Tensor:
    """Channels of one group (all `total` of them for group -1)."""
    return torch.arange(total) if group < 0 else torch.arange(group * width, (group + 1) * width)


def _activity_slice(block: MixerBlock, tokens: int, channels: int, token: int, group: int):
    """Coordinates of one (token, group) slice in the block's flat points (point, P, C)."""
    width = channels // block.groups
    rows = torch.arange(tokens) if token < 0 else torch.tensor([token])
    parts = []
    for i, point in enumerate(block.points):
        cols = _span(-1 if point == "token" else group, width, channels)
        parts.append(i * tokens * channels + (rows[:, None] * channels + cols).flatten())
    return torch.cat(parts)


def _weight_slice(block: MixerBlock, group: int) -> torch.Tensor:
    """Coordinates of the weights that reach one group of the block output (all: -1)."""
    width = block.group.weight.shape[-1]
    parts, offset = [], 0
    for name, p in block.named_parameters():
        if name.startswith("token") or group < 0:
            local = torch.arange(p.numel())
        elif name == "channel.weight":  # (C, D): the group's output units
            local = _span(group, width, 0)[:, None] * p.shape[1] + torch.arange(p.shape[1])
        elif name == "channel.bias":
            local = _span(group, width, 0)
        else:  # group.weight (G, c, c), group.bias (G, c)
            size = p[0].numel()
            local = torch.arange(group * size, (group + 1) * size)
        parts.append(offset + local.flatten())
        offset += p.numel()
    return torch.cat(parts)


def units(model: LocalMixer, spec: LocalSpec) -> list[Unit]:
    """The units of a forward-gradient method (kept per model: they depend on shapes only)."""
    key = (spec.perturbation, spec.is_local, spec.scope)
    cache = _PLANS.setdefault(model, {})
    if key not in cache:
        size = model.size
        tokens, out = size.patches ** 2, []
        blocks = model.mixer_blocks
        if spec.perturbation == "activity":
            sizes = [len(b.points) * tokens * size.channels for b in blocks]
        else:
            sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
        if not spec.is_local:
            cache[key] = [Unit(0, sum(sizes), 0, 1, torch.arange(sum(sizes))[None])]
            return cache[key]
        start = first = 0
        for block, n in zip(blocks, sizes):
            slices = _slices(spec, tokens, size.groups)
            index = torch.stack([_activity_slice(block, tokens, size.channels, t, g)
                                 if spec.perturbation == "activity" else _weight_slice(block, g)
                                 for t, g in slices])
            out.append(Unit(start, start + n, first, first + len(slices), index))
            start, first = start + n, first + len(slices)
        cache[key] = out
    return cache[key]


def aggregate_units(unit_list: list[Unit], tangents_kxn: torch.Tensor, jvps_jxk: torch.Tensor,
                    method: str) -> torch.Tensor:
    """Sum over local losses j of aggregate(V|S_j, d_j), scattered back: (..., k, N) -> (..., N).

    Leading dimensions (examples) batch independent tangents; jvps (..., J, k).
    """
    estimate = torch.zeros(tangents_kxn.shape[:-2] + tangents_kxn.shape[-1:],
                           dtype=tangents_kxn.dtype, device=tangents_kxn.device)
    for u in unit_list:
        index = u.index_jxs.to(tangents_kxn.device)
        restricted = tangents_kxn[..., u.start:u.stop][..., index]  # (..., k, J, s)
        per_loss = aggregate(restricted.movedim(-3, -2), jvps_jxk[..., u.first:u.last, :],
                             method)  # (..., J, s)
        estimate[..., u.start:u.stop].index_add_(-1, index.flatten(), per_loss.flatten(-2))
    return estimate
