"""Networks as sequences of perturbation blocks (paper, Sections 4.4 and 4.5).

A BlockModel applies `.blocks` in order and returns logits. Activity perturbation puts its
tangents on every block's output, and each block's parameters get their gradient from that
block's activity gradient alone, so the block boundaries are part of the method:
- fc: `depth` blocks Linear+ReLU, then the output Linear
- resnet18: torchvision's ResNet18; stem (conv, bn, relu, maxpool), layer1..layer4, head
  (avgpool, flatten, fc); the first convolution takes `in_channels` (1 for MNIST)
- vit: 6 encoder layers, 4 heads, hidden 256, MLP 512, patch 4; one block per encoder layer, the
  patch embedding merged into the first and the final norm and classifier into the last;
  initialized as torchvision's VisionTransformer (the authors' ViT replicates it): patch
  projection truncated normal with std sqrt(1 / fan_in), attention projections as
  nn.MultiheadAttention's (Xavier-uniform qkv, zero biases), MLP as torchvision's MLPBlock,
  classifier zero

Attention is written with explicit matmuls: nn.MultiheadAttention's fused kernels and eval fast
path have no forward-mode AD under vmap, and the math is the same. torchvision is imported here
only, so that `import fgexp` stays light.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fgexp.paper import MODELS, VIT_PATCH  # noqa: F401  (importable from here too)
FC_WIDTH = 1024      # default hidden width of the FC network
VIT_HIDDEN = 256     # default ViT hidden size; the MLP is twice as wide
VIT_LAYERS = 6
VIT_HEADS = 4


class BlockModel(nn.Module):
    """A network as an ordered list of perturbation blocks; forward(x) returns logits."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def fc(in_features: int, num_classes: int, width: int = FC_WIDTH, depth: int = 2) -> BlockModel:
    """Flatten -> depth x (Linear + ReLU) -> Linear; each hidden Linear+ReLU is one block."""
    blocks, size = [], in_features
    for i in range(depth):
        layer = [nn.Flatten()] if i == 0 else []
        blocks.append(nn.Sequential(*layer, nn.Linear(size, width), nn.ReLU()))
        size = width
    head = [nn.Flatten()] if depth == 0 else []
    blocks.append(nn.Sequential(*head, nn.Linear(size, num_classes)))
    return BlockModel(blocks)


def resnet18(in_channels: int, num_classes: int) -> BlockModel:
    """torchvision ResNet18 cut into stem, the four stages and the head."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
    return BlockModel([stem, net.layer1, net.layer2, net.layer3, net.layer4, head])


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit matmuls (forward-mode AD and vmap friendly)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        # as nn.MultiheadAttention: one Xavier-uniform (3h, h) in-projection, zero biases
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_bxtxh: torch.Tensor) -> torch.Tensor:
        b, t, h = x_bxtxh.shape
        qkv = self.qkv(x_bxtxh).reshape(b, t, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, t, head_dim)
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads)
        mixed = scores.softmax(-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(b, t, h))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer as torchvision's EncoderBlock (no dropout)."""

    def __init__(self, hidden: int, heads: int, mlp: int):
        from torchvision.models.vision_transformer import MLPBlock

        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attention = SelfAttention(hidden, heads)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = MLPBlock(hidden, mlp, dropout=0.0)

    def forward(self, x_bxtxh: torch.Tensor) -> torch.Tensor:
        x_bxtxh = x_bxtxh + self.attention(self.ln_1(x_bxtxh))
        return x_bxtxh + self.mlp(self.ln_2(x_bxtxh))


class PatchEmbedding(nn.Module):
    """Image -> tokens: patch convolution, class token, learned position embedding."""

    def __init__(self, in_channels: int, image_size: int, hidden: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)
        fan_in = in_channels * patch * patch  # torchvision's patchify-stem initialization
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.proj.bias)
        tokens = (image_size // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position = nn.Parameter(torch.empty(1, tokens, hidden).normal_(std=0.02))

    def forward(self, x_bxcxhxw: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x_bxcxhxw).flatten(2).transpose(1, 2)  # (b, tokens - 1, hidden)
        cls = self.class_token.expand(len(patches), -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position


class ClassifierHead(nn.Module):
    """Final LayerNorm, the class token, a Linear classifier."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.ln = nn.LayerNorm(hidden, eps=1e-6)
        self.fc = nn.Linear(hidden, num_classes)
        nn.init.zeros_(self.fc.weight)  # torchvision's ViT head starts at zero
        nn.init.zeros_(self.fc.bias)

    def forward(self, x_bxtxh: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(x_bxtxh)[:, 0])


def vit(in_channels: int, image_size: int, num_classes: int, hidden: int = VIT_HIDDEN,
        layers: int = VIT_LAYERS, heads: int = VIT_HEADS, patch: int = VIT_PATCH) -> BlockModel:
    """ViT with one block per encoder layer; input and output processing merged at the ends."""
    if image_size % patch:
        raise ValueError(f"vit needs image_size divisible by the patch size {patch}, "
                         f"got {image_size}")
    if hidden % heads:
        raise ValueError(f"vit needs width divisible by {heads} heads, got {hidden}")
    encoders = [EncoderLayer(hidden, heads, 2 * hidden) for _ in range(layers)]
    blocks = [nn.Sequential(PatchEmbedding(in_channels, image_size, hidden, patch), encoders[0])]
    blocks += encoders[1:-1]
    blocks.append(nn.Sequential(encoders[-1], ClassifierHead(hidden, num_classes)))
    return BlockModel(blocks)


def build(name: str, *, in_channels: int, image_size: int, num_classes: int,
          width: int | None = None, depth: int = 2, patch: int | None = None) -> BlockModel:
    """The named model; width is the FC hidden width or the ViT hidden size (resnet18: None),
    patch the ViT's patch size (None: the paper's 4; other models take None)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    for label, value in (("in_channels", in_channels), ("image_size", image_size),
                         ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be an integer >= 1 or None, got {width!r}")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
    if patch is not None and (name != "vit" or not isinstance(patch, int) or patch < 1):
        raise ValueError(f"patch must be None or, for vit only, an integer >= 1; got "
                         f"patch={patch!r} for {name}")
    if name == "fc":
        return fc(in_channels * image_size ** 2, num_classes, width or FC_WIDTH, depth)
    if name == "resnet18":
        if width is not None:
            raise ValueError("resnet18 has a fixed width; pass width=None "
                             "(width applies to: fc, vit)")
        return resnet18(in_channels, num_classes)
    return vit(in_channels, image_size, num_classes, hidden=width or VIT_HIDDEN,
               patch=patch or VIT_PATCH)
