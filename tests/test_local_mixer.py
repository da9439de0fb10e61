"""LocalMixer and Ren et al.'s local greedy losses (fgexp.nn.mixer, fgexp.nn.local_losses)
against autograd on a tiny mixer: each local loss's gradient, the stop-gradients between
blocks, forward mode against simulated mode for every forward-gradient method, and the
parameter counts of Ren et al.'s Table 2."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import run_script
from fgexp.nn import local_losses as ll
from fgexp.nn import local_units
from fgexp.nn.mixer import (PAPER_PARAMS, SIZES, LocalMixer, MixerSize, count_params,
                            local_mixer, normed_groups)

TINY = MixerSize(blocks=2, patches=2, channels=8, groups=2)  # 2 blocks, 4 tokens, 2 groups
FG_METHODS = ("fg-w", "fg-a", "lg-fg-w", "lg-fg-a")


@pytest.fixture
def tiny():
    """A tiny mixer with a random readout (zero-initialized, it would hide the global methods'
    gradients), a batch of 5 images and labels."""
    torch.manual_seed(0)
    model = LocalMixer(TINY, in_channels=1, image_size=8, num_classes=10).double()
    with torch.no_grad():
        model.readout.fc.weight.normal_()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    return model, x, torch.randint(0, 10, (5,))


def close(a: dict, b: dict, names=None, tol=1e-9):
    for name in names or a:
        assert torch.allclose(a[name], b[name], atol=tol, rtol=tol), name


def test_parameter_counts_match_table_2():
    """Ren et al., Table 2 gives 272K, 429K and 919K (rounded to thousands)."""
    shapes = {"S/1/1": (1, 28), "M/1/16": (1, 28), "M/8/16": (3, 32)}
    for name in SIZES:
        channels, image = shapes[name]
        model = local_mixer(name, in_channels=channels, image_size=image, num_classes=10)
        assert abs(count_params(model) - PAPER_PARAMS[name]) < 500, name
    assert count_params(local_mixer("S/1/1", in_channels=1, image_size=28,
                                    num_classes=10)) == 271_892


@pytest.mark.parametrize("build, message", [
    (lambda: local_mixer("L/1/1", in_channels=1, image_size=28, num_classes=10),
     "unknown LocalMixer size 'L/1/1'"),
    (lambda: LocalMixer(MixerSize(1, 1, 10, 3), 1, 28, 10), "3 groups do not divide 10"),
    (lambda: local_mixer("M/8/16", in_channels=1, image_size=28, num_classes=10),
     "8 patches per side do not divide the 28-pixel image"),
])
def test_bad_sizes_fail_with_one_line(build, message):
    with pytest.raises(ValueError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("scope", ll.SCOPES)
def test_each_local_loss_gradient_is_its_slice_of_the_block_loss(tiny, scope):
    """Column j's gradient on the block output is the block loss's gradient on slice j, zero
    elsewhere (autograd of the plain block loss as the reference)."""
    model, x, y = tiny
    head, groups = model.local_heads[0], TINY.groups
    features = torch.randn(5, 4, 8, dtype=torch.float64, requires_grad=True)
    losses_bxj = ll.restricted_losses(features, head, groups, y, scope)
    plain_b = F.cross_entropy(ll.local_logits(features, head, groups), y, reduction="none")
    assert torch.allclose(losses_bxj, plain_b[:, None].expand_as(losses_bxj))
    (full,) = torch.autograd.grad(plain_b.sum(), features)
    slices = local_units._slices(ll.LocalSpec("lg-fg-a", scope=scope), 4, groups)
    for j, (token, group) in enumerate(slices):
        (grad,) = torch.autograd.grad(losses_bxj[:, j].sum(), features, retain_graph=True)
        mask = torch.zeros(4, 8, dtype=torch.bool)
        rows = slice(None) if token < 0 else token
        cols = slice(None) if group < 0 else slice(4 * group, 4 * group + 4)
        mask[rows, cols] = True
        assert torch.allclose(grad, torch.where(mask, full, 0.0)), (scope, j)


def test_lg_bp_is_blockwise_backprop_with_stop_gradients(tiny):
    """LG-BP: block b's parameters get the gradient of block b's own head loss only, from a
    detached input; BP's gradients are plain autograd through the whole network."""
    model, x, y = tiny
    _, lg = ll.local_gradients(model, x, y, ll.LocalSpec("lg-bp"))
    h = x
    for b, (block, head) in enumerate(zip(model.mixer_blocks, model.local_heads)):
        out = block(h.detach())
        loss = F.cross_entropy(ll.local_logits(out, head, TINY.groups), y)
        params = dict(block.named_parameters())
        reference = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        close({n: lg[f"blocks.{b}.{n}"] for n in params}, reference)
        h = out
    _, bp = ll.local_gradients(model, x, y, ll.LocalSpec("bp"))
    main = ll.main_params(model)
    loss = F.cross_entropy(model(x), y)
    close(bp, dict(zip(main, torch.autograd.grad(loss, list(main.values())))), main)


def test_no_gradient_crosses_a_block_boundary(tiny):
    """Changing block 1's local head leaves block 0's LG-BP gradient unchanged, and block 1's
    loss alone gives block 0 no gradient."""
    model, x, y = tiny
    spec = ll.LocalSpec("lg-bp")
    _, before = ll.local_gradients(model, x, y, spec)
    with torch.no_grad():
        model.local_heads[1].weight.mul_(3.0)
    _, after = ll.local_gradients(model, x, y, spec)
    block0 = [n for n in before if n.startswith("blocks.0.")]
    close(before, after, block0)
    assert not torch.allclose(before["blocks.1.channel.weight"], after["blocks.1.channel.weight"])
    _, outputs = ll.mixer_forward(model, x, detach_between=True)
    loss = ll.restricted_losses(outputs[1], model.local_heads[1], TINY.groups, y, "group").sum()
    grads = torch.autograd.grad(loss, list(model.blocks[0].parameters()), allow_unused=True)
    assert all(g is None for g in grads)


@pytest.mark.parametrize("method", FG_METHODS)
@pytest.mark.parametrize("aggregation", ("mean", "projection"))
@pytest.mark.parametrize("scope", ll.SCOPES)
def test_forward_mode_equals_simulated(tiny, method, aggregation, scope):
    model, x, y = tiny
    grads = {}
    for mode in ("forward", "simulated"):
        spec = ll.LocalSpec(method, k=3, aggregation=aggregation, mode=mode, scope=scope)
        _, grads[mode] = ll.local_gradients(model, x, y, spec, torch.Generator().manual_seed(1))
    close(grads["forward"], grads["simulated"], tol=1e-8)
    assert any(g.abs().sum() > 0 for g in grads["forward"].values())


@pytest.mark.parametrize("method, exact, scope", [
    ("lg-fg-a", "lg-bp", "group"), ("lg-fg-a", "lg-bp", "patch"), ("lg-fg-a", "lg-bp", "block"),
    ("fg-a", "bp", "group"), ("fg-w", "bp", "group"), ("lg-fg-w", "lg-bp", "block")])
def test_projection_onto_all_directions_is_the_exact_local_gradient(tiny, method, exact, scope):
    """With k at least the size of every local loss's slice, the projection inside each local
    loss recovers its exact gradient: the local aggregation is checked against autograd."""
    model, x, y = tiny
    n = sum(p.numel() for p in ll.main_params(model).values())
    spec = ll.LocalSpec(method, k=n + 5, aggregation="projection", mode="simulated", scope=scope)
    _, estimate = ll.local_gradients(model, x, y, spec, torch.Generator().manual_seed(2))
    _, reference = ll.local_gradients(model, x, y, ll.LocalSpec(exact))
    close(estimate, reference, tol=1e-7)


def test_groupwise_weight_slices(tiny):
    """LG-FG-W per group uses Ren et al.'s weight slices (a group's channel rows, its grouped
    weights, the token mixing). The LayerNorm after channel mixing lets the other groups' rows
    reach a group too, so the estimate is exact only without that coupling (one group)."""
    model, x, y = tiny
    spec = ll.LocalSpec("lg-fg-w", k=2000, aggregation="projection", mode="simulated")
    _, estimate = ll.local_gradients(model, x, y, spec, torch.Generator().manual_seed(2))
    _, reference = ll.local_gradients(model, x, y, ll.LocalSpec("lg-bp"))
    assert not torch.allclose(estimate["blocks.0.channel.weight"],
                              reference["blocks.0.channel.weight"], atol=1e-7)
    torch.manual_seed(0)
    single = LocalMixer(dataclasses.replace(TINY, groups=1), 1, 8, 10).double()
    _, estimate = ll.local_gradients(single, x, y, spec, torch.Generator().manual_seed(2))
    _, reference = ll.local_gradients(single, x, y, ll.LocalSpec("lg-bp"))
    close(estimate, reference, tol=1e-7)


def test_activity_tangents_are_per_example_and_mean_is_unbiased(tiny):
    """LG-FG-A with mean aggregation: the average of many single-tangent estimates approaches
    LG-BP (an unbiased estimator of the local gradients)."""
    model, x, y = tiny
    _, reference = ll.local_gradients(model, x, y, ll.LocalSpec("lg-bp"))
    spec = ll.LocalSpec("lg-fg-a", k=4000, mode="simulated")
    _, estimate = ll.local_gradients(model, x, y, spec, torch.Generator().manual_seed(3))
    for name in ("blocks.0.channel.weight", "blocks.1.token.weight"):
        error = (estimate[name] - reference[name]).norm() / reference[name].norm()
        assert error < 0.15, name


def test_heads_get_exact_gradients_from_detached_features(tiny):
    model, x, y = tiny
    _, grads = ll.local_gradients(model, x, y, ll.LocalSpec("lg-fg-a", k=2),
                                  torch.Generator().manual_seed(0))
    _, outputs = ll.mixer_forward(model, x)
    heads = {n: p for n, p in model.named_parameters() if n not in ll.main_params(model)}
    loss = ll.head_loss(model, outputs, y)
    close(grads, dict(zip(heads, torch.autograd.grad(loss, list(heads.values())))), heads)


def test_normed_groups_normalizes_each_group():
    features = torch.randn(3, 4, 8)
    normed = normed_groups(features, 2)
    assert normed.shape == (3, 4, 2, 4)
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 4, 2), atol=1e-6)


def test_spec_rejects_unknown_names():
    for field, value in (("method", "dfa"), ("aggregation", "median"), ("scope", "layer"),
                         ("mode", "reverse")):
        with pytest.raises(ValueError, match=f"unknown {field}"):
            dataclasses.replace(ll.LocalSpec(), **{field: value})


# The script: bad input stops it with one line before compute

SLOW = pytest.mark.slow  # each case starts python and torch (about 5 s here)


@pytest.mark.parametrize("setting, message", [
    ("setups=L/1/1@mnist5k", "expected a setup SIZE@DATASET"),
    ("setups=M/8/16@mnist5k", "8 patches per side do not divide the 28-pixel image"),
    pytest.param("gradients=lg-fg-a:median:4", "unknown aggregation 'median'", marks=SLOW),
    pytest.param("gradients=bp:mean:4", "bp is exact", marks=SLOW),
    pytest.param("epochs=0", "epochs must be >= 1", marks=SLOW),
    pytest.param("colour=red", "unknown option colour", marks=SLOW),
])
def test_script_bad_input_is_one_line(tmp_path, setting, message):
    out = tmp_path / "out"
    result = run_script("experiments/local_mixer.py", "--preset", "smoke", "--out", out,
                        "--set", setting, "--no-progress")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()
