import subprocess
import sys

import pytest
import torch
from torch import nn

from fgexp.nn import models
from fgexp.nn.models import build

MNIST = dict(in_channels=1, image_size=28, num_classes=10)


def chained(model, x):
    for block in model.blocks:
        x = block(x)
    return x


def test_fc_is_the_papers_network():
    model = build("fc", **MNIST, width=32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 32), (32, 10)]
    assert len(model.blocks) == 3
    assert isinstance(model.blocks[0][-1], nn.ReLU) and isinstance(model.blocks[1][-1], nn.ReLU)
    assert build("fc", **MNIST, width=8, depth=4).blocks.__len__() == 5
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_resnet18_blocks_and_one_channel_stem():
    model = build("resnet18", **MNIST)
    assert len(model.blocks) == 6
    assert model.blocks[0][0].in_channels == 1
    # torchvision ResNet18 (10 classes: 11,181,642 parameters) with a 1-channel 7x7 stem
    assert sum(p.numel() for p in model.parameters()) == 11_181_642 - 2 * 64 * 49
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), chained(model, x))
    rgb = build("resnet18", in_channels=3, image_size=32, num_classes=10)
    assert rgb.blocks[0][0].in_channels == 3


def test_vit_shape_and_blocks():
    model = build("vit", in_channels=3, image_size=32, num_classes=10)
    assert len(model.blocks) == 6
    encoders = [m for m in model.modules() if isinstance(m, models.EncoderLayer)]
    assert len(encoders) == 6
    assert encoders[0].attention.heads == 4 and encoders[0].mlp[0].out_features == 512
    x = torch.randn(2, 3, 32, 32)
    h = model.blocks[0](x)
    assert h.shape == (2, 8 * 8 + 1, 256)
    assert model(x).shape == (2, 10)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = models.SelfAttention(16, 4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 5, 16)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_vit_is_initialized_as_torchvisions():
    """The authors' ViT replicates torchvision's initialization: zero classifier, patch
    projection with std sqrt(1 / fan_in), Xavier-uniform qkv, zero attention biases."""
    from torchvision.models import VisionTransformer
    torch.manual_seed(0)
    ours = build("vit", **MNIST, width=64)
    ref = VisionTransformer(image_size=28, patch_size=4, num_layers=6, num_heads=4,
                            hidden_dim=64, mlp_dim=128, num_classes=10)
    head = ours.blocks[-1][-1].fc
    assert not head.weight.any() and not head.bias.any()
    assert not ref.heads.head.weight.any()
    patch = ours.blocks[0][0].proj
    # 64 x 16 normals of std sqrt(1 / 16) (torch truncates at +-2, 8 std out: no effect);
    # default Conv2d initialization would give std 1 / sqrt(3 * 16) = 0.144
    assert patch.weight.std().item() == pytest.approx(0.25, rel=0.08)
    assert not patch.bias.any()
    attention = ours.blocks[1].attention
    bound = (6 / (64 + 3 * 64)) ** 0.5  # Xavier uniform over the (3h, h) in-projection
    assert attention.qkv.weight.abs().max().item() <= bound
    assert attention.qkv.weight.abs().max().item() > 0.95 * bound
    ref_in = ref.encoder.layers[0].self_attention.in_proj_weight
    assert ref_in.abs().max().item() <= bound
    assert not attention.qkv.bias.any() and not attention.out.bias.any()


def test_vit_patch_sets_the_tokens():
    model = build("vit", **MNIST, width=32, patch=7)
    assert model.blocks[0](torch.randn(2, 1, 28, 28)).shape == (2, 4 * 4 + 1, 32)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mlp"), "allowed: fc, resnet18, vit"),
    (dict(name="fc", width=0), "width"),
    (dict(name="resnet18", width=64), "width"),
    (dict(name="fc", depth=-1), "depth"),
    (dict(name="vit", image_size=30), "patch"),
    (dict(name="vit", width=18), "heads"),
    (dict(name="vit", patch=5), "patch"),
    (dict(name="vit", patch=0), "patch"),
    (dict(name="resnet18", patch=7), "vit only"),
    (dict(name="fc", num_classes=0), "num_classes"),
])
def test_bad_input(kwargs, match):
    args = {**MNIST, **kwargs}
    with pytest.raises(ValueError, match=match):
        build(args.pop("name"), **args)


def test_importing_fgexp_does_not_import_torchvision():
    code = ("import sys, fgexp, fgexp.nn.gradients; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
