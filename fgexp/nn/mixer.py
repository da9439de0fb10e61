"""LocalMixer (Ren, Kornblith, Liao and Hinton, ICLR 2023), the MLP-Mixer-like network built for
local greedy losses, as a BlockModel.

The image is cut into P = patches^2 tokens of patch_h * patch_w * channels values. Every linear
layer is followed by a LayerNorm without parameters; the perturbation points of activity
perturbation sit after that LayerNorm, before the ReLU (as in Ren et al.'s code):
- block 0: LN(input) -> Linear(D_in, C) -> LN(C) -> ReLU -> per-group LN -> GroupLinear
  (G groups of C/G -> C/G) -> per-group LN -> ReLU
- block b > 0: LN(C) -> token mixing Linear(P, P) along the tokens -> LN(C) -> ReLU -> LN(C) ->
  channel mixing Linear(C, C) -> LN(C) -> ReLU -> per-group LN -> GroupLinear -> per-group LN
  -> + block input (residual) -> ReLU
- readout (the last block of `.blocks`): mean over tokens -> LN(C) -> Linear(C, classes),
  zero-initialized
Each block b also has a local head Linear(C, classes) (`.local_heads`) that reads the per-group
LayerNormed block output averaged over tokens; fgexp.nn.local_losses defines its losses.

Sizes (Ren et al., Table 2): name -> blocks / patches per side / channels / groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fgexp.nn.models import BlockModel

POINTS = ("token", "channel", "group")  # perturbation points of a block, in this order


@dataclass(frozen=True)
class MixerSize:
    blocks: int    # mixer blocks (each with one local loss head)
    patches: int   # patches per image side: P = patches^2 tokens
    channels: int  # C, channels per token
    groups: int    # G, channel groups of the grouped linear layer and the local losses


SIZES = {
    "S/1/1": MixerSize(blocks=1, patches=1, channels=256, groups=1),     # MNIST
    "M/1/16": MixerSize(blocks=1, patches=1, channels=512, groups=16),   # MNIST
    "M/8/16": MixerSize(blocks=4, patches=8, channels=512, groups=16),   # CIFAR-10
}
# Ren et al., Table 2: parameters of each size (on MNIST for S/1/1 and M/1/16, CIFAR-10 for M/8/16).
PAPER_PARAMS = {"S/1/1": 272_000, "M/1/16": 429_000, "M/8/16": 919_000}


def check_size(name: str, image_size: int) -> MixerSize:
    """The named size; ValueError (one line) for an unknown name or a grid that does not fit."""
    if name not in SIZES:
        raise ValueError(f"unknown LocalMixer size {name!r}; allowed: {', '.join(SIZES)}")
    size = SIZES[name]
    check_grid(size, image_size)
    return size


def check_grid(size: MixerSize, image_size: int) -> None:
    if size.channels % size.groups:
        raise ValueError(f"LocalMixer: {size.groups} groups do not divide {size.channels} "
                         "channels")
    if image_size % size.patches:
        raise ValueError(f"LocalMixer: {size.patches} patches per side do not divide the "
                         f"{image_size}-pixel image")


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension, without scale or shift (Ren et al.'s normalize)."""
    return F.layer_norm(x, x.shape[-1:])


def init_linear(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    """Ren et al.'s "kaiming" scheme: normal with std min(2 / sqrt(fan_in), 0.1), zero bias."""
    with torch.no_grad():
        weight.normal_(std=min(2.0 / math.sqrt(fan_in), 0.1))
        bias.zero_()


def patchify(images_bxcxhxw: torch.Tensor, patches: int) -> torch.Tensor:
    """(B, c, H, W) -> (B, P, (H/patches) * (W/patches) * c) tokens, row-major over patches."""
    b, c, h, w = images_bxcxhxw.shape
    ph, pw = h // patches, w // patches
    x = images_bxcxhxw.reshape(b, c, patches, ph, patches, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, patches * patches, ph * pw * c)


class GroupLinear(nn.Module):
    """G independent Linear(i, o) maps, one per group: (..., G, i) -> (..., G, o)."""

    def __init__(self, groups: int, in_per_group: int, out_per_group: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_per_group, out_per_group))
        self.bias = nn.Parameter(torch.empty(groups, out_per_group))
        init_linear(self.weight, self.bias, in_per_group)

    def forward(self, x_gxi: torch.Tensor) -> torch.Tensor:  # (..., G, i) -> (..., G, o)
        return torch.einsum("...gi,gio->...go", x_gxi, self.weight) + self.bias


def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    init_linear(layer.weight, layer.bias, fan_in)
    return layer


class MixerBlock(nn.Module):
    """One LocalMixer block; block 0 (`first`) patchifies images and has no token mixing."""

    def __init__(self, in_features: int, tokens: int, channels: int, groups: int,
                 first: bool, patches: int):
        super().__init__()
        self.first, self.patches, self.groups = first, patches, groups
        self.token = None if first else _linear(tokens, tokens)
        self.channel = _linear(in_features, channels)
        self.group = GroupLinear(groups, channels // groups, channels // groups)

    @property
    def points(self) -> tuple[str, ...]:
        return POINTS[1:] if self.first else POINTS

    def forward(self, x: torch.Tensor, eps: dict | None = None, local: bool = False,
                states: dict | None = None) -> torch.Tensor:
        """Block output (B, P, C).

        eps: perturbation point -> (B, P, C) added after that layer's LayerNorm (before the
        ReLU). local: every layer's input is detached, so a VJP reaches each layer's own
        parameters only. states: filled with each point's value (B, P, C), and `pre_<point>`
        with the ReLU's input.
        """
        eps = eps or {}
        cut = torch.Tensor.detach if local else (lambda t: t)
        states = {} if states is None else states
        if self.first and x.dim() == 4:
            x = patchify(x, self.patches)
        h = layer_norm(x)
        if self.token is not None:
            z = layer_norm(self.token(cut(h).transpose(1, 2)).transpose(1, 2))
            h = layer_norm(self._relu(z, eps, "token", states))
        z = layer_norm(self.channel(cut(h)))
        h = self._relu(z, eps, "channel", states)
        b, p, c = h.shape
        h_gxi = layer_norm(h.reshape(b, p, self.groups, c // self.groups))
        z = layer_norm(self.group(cut(h_gxi))).reshape(b, p, c)
        return self._relu(z, eps, "group", states, residual=None if self.first else x)

    @staticmethod
    def _relu(z, eps, point, states, residual=None):
        states[point] = z
        pre = z if point not in eps else z + eps[point]
        if residual is not None:
            pre = pre + residual
        states[f"pre_{point}"] = pre
        return F.relu(pre)


def normed_groups(features_bxpxc: torch.Tensor, groups: int) -> torch.Tensor:
    """What a local head reads before the mean over tokens: the block output LayerNormed per
    (token, group), (B, P, C) -> (B, P, G, C/G)."""
    b, p, c = features_bxpxc.shape
    return layer_norm(features_bxpxc.reshape(b, p, groups, c // groups))


class Readout(nn.Module):
    """Mean over tokens, LayerNorm, zero-initialized Linear: (B, P, C) -> logits (B, classes)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()

    def forward(self, features_bxpxc: torch.Tensor) -> torch.Tensor:
        return self.fc(layer_norm(features_bxpxc.mean(1)))


class LocalMixer(BlockModel):
    """`.blocks`: the mixer blocks, then the readout; `.local_heads`: one Linear per block."""

    def __init__(self, size: MixerSize, in_channels: int, image_size: int, num_classes: int):
        check_grid(size, image_size)
        tokens = size.patches ** 2
        in_features = (image_size // size.patches) ** 2 * in_channels
        blocks = [MixerBlock(in_features if b == 0 else size.channels, tokens, size.channels,
                             size.groups, first=b == 0, patches=size.patches)
                  for b in range(size.blocks)]
        super().__init__([*blocks, Readout(size.channels, num_classes)])
        self.size = size
        heads = [_linear(size.channels, num_classes) for _ in range(size.blocks)]
        self.local_heads = nn.ModuleList(heads)

    @property
    def mixer_blocks(self) -> list[MixerBlock]:
        return list(self.blocks[:-1])

    @property
    def readout(self) -> Readout:
        return self.blocks[-1]


def local_mixer(name: str, *, in_channels: int, image_size: int, num_classes: int) -> LocalMixer:
    """The LocalMixer of a named size (SIZES); ValueError for an unknown size or a bad grid."""
    return LocalMixer(check_size(name, image_size), in_channels, image_size, num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
