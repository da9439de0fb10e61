import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgexp.directional import GradientSpec
from fgexp.nn import activity
from fgexp.nn.gradients import set_gradients
from fgexp.nn.models import BlockModel, build


@functools.lru_cache
def _pristine(name):
    torch.manual_seed(0)
    width, shape = {"fc": (12, (4, 1, 6, 6)), "vit": (16, (3, 1, 8, 8)),
                    "resnet18": (None, (2, 1, 16, 16))}[name]
    model = build(name, in_channels=1, image_size=shape[-1], num_classes=5, width=width)
    return model, torch.randn(shape), torch.randint(0, 5, shape[:1])


def tiny(name):
    """Small versions of the real models (a fresh copy each time), and a batch for them."""
    model, x, y = _pristine(name)
    return copy.deepcopy(model), x, y


def bn_mlp():
    """A 3-block MLP with train-mode BatchNorm: its examples are coupled."""
    torch.manual_seed(1)
    return BlockModel([
        nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 3)),
    ]), torch.randn(6, 6), torch.randint(0, 3, (6,))


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


def step(model, x, y, seed=0, **spec):
    set_gradients(model, x, y, GradientSpec(**spec), torch.Generator().manual_seed(seed))
    return grads(model)


def true_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return grads(model)


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_bp_equals_torch_backprop_and_replaces_old_grads():
    model, x, y = tiny("fc")
    expected = true_grads(model, x, y)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # must be replaced, not accumulated
    loss = set_gradients(model, x, y, GradientSpec("bp"))
    for got, want in zip(grads(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
    assert not loss.requires_grad


CASES = [(name, pert, gradient) for name in ("fc", "vit", "resnet18")
         for pert in ("weight", "activity") for gradient in ("fg-mean", "frog")]


@pytest.mark.parametrize("name, perturbation, gradient", CASES)
def test_forward_equals_simulated_for_the_same_tangents(name, perturbation, gradient):
    model, x, y = tiny(name)
    spec = dict(gradient=gradient, k=3, perturbation=perturbation, chunk_size=2)
    forward = flat(step(model, x, y, mode="forward", **spec))
    simulated = flat(step(model, x, y, mode="simulated", **spec))
    assert forward.norm() > 0
    assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


def test_deeper_fc_forward_equals_simulated():
    """Blocks whose input carries both a shared tangent and propagated per-example ones."""
    torch.manual_seed(2)
    model = build("fc", in_channels=1, image_size=4, num_classes=3, width=10, depth=4)
    x, y = torch.randn(5, 1, 4, 4), torch.randint(0, 3, (5,))
    spec = dict(gradient="fg-sum", k=3, perturbation="activity")
    forward = flat(step(model, x, y, mode="forward", **spec))
    simulated = flat(step(model, x, y, mode="simulated", **spec))
    assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


@pytest.mark.parametrize("name", ["fc", "vit", "resnet18"])
def test_activity_directional_derivatives_agree(name):
    model, x, y = tiny(name)
    scheme = activity.activity_scheme(model)
    assert scheme == ("independent" if name == "resnet18" else "shared")
    spec = GradientSpec("fg-sum", k=4, perturbation="activity")
    _, views = activity.sample_tangents(model, x, spec, torch.Generator().manual_seed(3), scheme)
    derivatives = activity.activity_directional_derivatives
    _, forward, _ = derivatives(model, x, y, views, "forward", scheme)
    _, simulated, _ = derivatives(model, x, y, views, "simulated", scheme)
    assert forward.shape == ((len(x), 4) if scheme == "shared" else (4,))
    assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


def test_every_blocks_tangent_reaches_the_loss():
    """Only block 0 is perturbed: the derivative must still see it through later blocks."""
    model, x, y = tiny("fc")
    views = [torch.randn(2, *s[1:]) for s in activity.block_shapes(model, x)]
    views = [views[0]] + [torch.zeros_like(v) for v in views[1:]]
    _, forward, _ = activity.activity_directional_derivatives(model, x, y, views, "forward",
                                                              "shared")
    h0 = model.blocks[0](x).detach().requires_grad_(True)
    losses = F.cross_entropy(model.blocks[2](model.blocks[1](h0)), y, reduction="none")
    (g0,) = torch.autograd.grad(losses.sum(), h0)
    torch.testing.assert_close(forward, g0 @ views[0].T, rtol=1e-5, atol=1e-6)
    assert forward.abs().max() > 1e-3


@pytest.mark.parametrize("model_fn", [lambda: tiny("fc"), bn_mlp], ids=["mlp", "bn-mlp"])
def test_activity_forward_gradient_is_unbiased_per_block(model_fn):
    """fg-mean over k tangents is the average of k single-tangent estimates."""
    model, x, y = model_fn()
    expected = true_grads(model, x, y)
    estimate = step(model, x, y, gradient="fg-mean", k=3000, perturbation="activity",
                    mode="forward", chunk_size=1000)
    for index, block in enumerate(model.blocks):
        names = {id(p) for p in block.parameters()}
        got = flat([g for g, p in zip(estimate, model.parameters()) if id(p) in names])
        want = flat([g for g, p in zip(expected, model.parameters()) if id(p) in names])
        assert cosine(got, want) > 0.9, f"block {index}"


def test_projection_with_n_tangents_recovers_the_gradient():
    torch.manual_seed(0)
    model = build("fc", in_channels=1, image_size=2, num_classes=2, width=3, depth=1)
    x, y = torch.randn(5, 1, 2, 2), torch.randint(0, 2, (5,))
    n = sum(p.numel() for p in model.parameters())
    expected = flat(true_grads(model, x, y))
    for mode in ("forward", "simulated"):
        got = flat(step(model, x, y, gradient="frog", k=n, mode=mode))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_activity_projection_with_full_span_is_exact():
    """k = N shared tangents span each example's activations: the local VJPs give bp exactly."""
    model, x, y = tiny("fc")
    n = sum(s[1:].numel() for s in activity.block_shapes(model, x))
    expected = flat(true_grads(model, x, y))
    got = flat(step(model, x, y, gradient="frog", k=n, perturbation="activity", mode="forward"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_chunks_do_not_change_the_result():
    model, x, y = tiny("vit")
    for perturbation in ("weight", "activity"):
        spec = dict(gradient="frog", k=5, perturbation=perturbation, mode="forward")
        whole = flat(step(model, x, y, chunk_size=None, **spec))
        chunked = flat(step(model, x, y, chunk_size=2, **spec))
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["fc", "vit"])
def test_recorded_graphs_give_the_recomputed_gradients(name):
    """One tangent per chunk records the blocks' graphs in the tangent pass (no recompute)."""
    model, x, y = tiny(name)
    spec = GradientSpec("frog", k=3, perturbation="activity", chunk_size=1)
    assert activity.keeps_graph(spec, "shared")
    assert not activity.keeps_graph(GradientSpec("frog", k=3), "shared")
    recorded = flat(step(model, x, y, gradient="frog", k=3, perturbation="activity", chunk_size=1))
    recomputed = flat(step(model, x, y, gradient="frog", k=3, perturbation="activity"))
    torch.testing.assert_close(recorded, recomputed, rtol=1e-5, atol=1e-7)
    single = flat(step(model, x, y, gradient="fg-mean", k=1, perturbation="activity"))
    simulated = flat(step(model, x, y, gradient="fg-mean", k=1, perturbation="activity",
                          mode="simulated"))
    assert float((single - simulated).norm() / simulated.norm()) < 1e-4


def test_forward_weight_mode_uses_no_backward_pass(monkeypatch):
    model, x, y = tiny("fc")
    expected = flat(step(model, x, y, gradient="fg-mean", k=2))

    def refuse(*args, **kwargs):
        raise AssertionError("backward pass in forward mode")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    torch.testing.assert_close(flat(step(model, x, y, gradient="fg-mean", k=2)), expected)


def graph_leaves(tensor):
    """Parameters reachable from tensor's autograd graph."""
    seen, stack, leaves = set(), [tensor.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


@pytest.mark.parametrize("name", ["fc", "resnet18"])
def test_forward_activity_vjps_stay_inside_their_block(monkeypatch, name):
    """With recomputed blocks (k > 1 per chunk), each VJP's graph holds its block alone.

    The VJPs run from the last block to the first (the largest blocks last, fewer gradients held).
    """
    model, x, y = tiny(name)
    calls, original = [], torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        calls.append((graph_leaves(outputs), {id(p) for p in inputs}))
        return original(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    set_gradients(model, x, y, GradientSpec("fg-mean", k=2, perturbation="activity"))
    assert len(calls) == len(model.blocks)
    for block, (reachable, asked) in zip(reversed(model.blocks), calls):
        assert reachable == asked == {id(p) for p in block.parameters()}


@pytest.mark.parametrize("spec", [
    dict(gradient="fg-mean", k=2, perturbation="activity", mode="forward"),
    dict(gradient="frog", k=2, perturbation="activity", mode="simulated"),
    dict(gradient="fg-mean", k=2, perturbation="weight", mode="forward"),
    dict(gradient="fg-mean", k=2, perturbation="weight", mode="simulated"),
], ids=["activity-forward", "activity-simulated", "weight-forward", "weight-simulated"])
def test_batchnorm_statistics_advance_once_like_bp(spec):
    model, x, y = tiny("resnet18")
    reference = copy.deepcopy(model)
    set_gradients(reference, x, y, GradientSpec("bp"))
    set_gradients(model, x, y, GradientSpec(**spec))
    buffers = dict(reference.named_buffers())
    assert any("running_mean" in name for name in buffers)
    for name, got in model.named_buffers():
        torch.testing.assert_close(got, buffers[name], rtol=1e-5, atol=1e-6, msg=name)


def test_schemes_follow_the_coupling():
    model, x, y = bn_mlp()
    assert activity.activity_scheme(model) == "independent"
    assert activity.activity_scheme(model.eval()) == "shared"
    model.train()
    spec = GradientSpec("fg-mean", k=2, perturbation="activity")
    with pytest.raises(ValueError, match="biased"):
        set_gradients(model, x, y, spec, activity_tangents="shared")
    forward = flat(step(model, x, y, gradient="frog", k=3, perturbation="activity"))
    simulated = flat(step(model, x, y, gradient="frog", k=3, perturbation="activity",
                          mode="simulated"))
    assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


def test_bad_input():
    model, x, y = tiny("fc")
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 5))
    with pytest.raises(ValueError, match=r"\.blocks"):
        set_gradients(plain, x, y, GradientSpec("fg-mean", perturbation="activity"))
    model.temperature = nn.Parameter(torch.ones(()))  # trainable but in no block
    with pytest.raises(ValueError, match="outside .blocks: temperature"):
        set_gradients(model, x, y, GradientSpec("fg-mean", perturbation="activity"))
    del model.temperature
    with pytest.raises(ValueError, match="scheme"):
        set_gradients(model, x, y, GradientSpec("fg-mean", perturbation="activity"),
                      activity_tangents="per-block")
    with pytest.raises(ValueError, match="GradientSpec"):
        set_gradients(model, x, y, "bp")
    with pytest.raises(ValueError, match="perturbation"):
        GradientSpec("fg-mean", perturbation="node")
    with pytest.raises(ValueError, match="k must"):
        GradientSpec("fg-mean", k=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_forward_equals_simulated_at_mnist_size(name):
    torch.manual_seed(0)
    model = build(name, in_channels=1, image_size=28, num_classes=10)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for perturbation in ("weight", "activity"):
        spec = dict(gradient="fg-mean", k=4, perturbation=perturbation, chunk_size=2)
        forward = flat(step(model, x, y, mode="forward", **spec))
        simulated = flat(step(model, x, y, mode="simulated", **spec))
        assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


@pytest.mark.parametrize("mode", ["forward", "simulated"])
@pytest.mark.parametrize("gradient", ["fg-mean", "fg-sum"])
def test_single_weight_tangent_gives_d_times_v(mode, gradient):
    """k = 1: the estimate is <grad, v> v for the tangent drawn from the step's generator."""
    from fgexp import tangents
    model, x, y = tiny("fc")
    g_n = flat(true_grads(model, x, y))
    v_n = tangents.sample("normal", (), 1, g_n.numel(), torch.Generator().manual_seed(3))[0]
    got = flat(step(model, x, y, seed=3, gradient=gradient, k=1, mode=mode))
    torch.testing.assert_close(got, (g_n @ v_n) * v_n, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["forward", "simulated"])
@pytest.mark.parametrize("gradient", ["fg-mean", "frog"])
def test_weight_tangents_drawn_into_a_reused_buffer(mode, gradient):
    """k > 1 draws into a buffer reused across steps: each step's estimate is the one from a
    fresh draw of its generator, and a later step leaves the earlier step's .grad intact."""
    from fgexp import tangents
    from fgexp.aggregate import aggregate
    model, x, y = tiny("fc")
    g_n = flat(true_grads(model, x, y))
    fresh_kxn = tangents.sample("normal", (), 4, g_n.numel(), torch.Generator().manual_seed(7))
    want = aggregate(fresh_kxn, fresh_kxn @ g_n, "mean" if gradient == "fg-mean" else "projection")
    draws = tangents.NormalBuffer()
    spec = GradientSpec(gradient, k=4, mode=mode)
    set_gradients(model, x, y, spec, torch.Generator().manual_seed(7), draws=draws)
    kept = [p.grad for p in model.parameters()]
    snapshot = flat([t.clone() for t in kept])
    torch.testing.assert_close(snapshot, want, rtol=1e-4, atol=1e-6)
    set_gradients(model, x, y, spec, torch.Generator().manual_seed(8), draws=draws)
    assert torch.equal(flat(kept), snapshot)
    set_gradients(model, x, y, spec, torch.Generator().manual_seed(7))  # no buffer: fresh draw
    assert torch.equal(flat(grads(model)), snapshot)
