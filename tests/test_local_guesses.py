"""Guessed tangents (fgexp.nn.guesses): the guess against autograd, forward against simulated for
every tangent set, the single-guess projection against Fournier's formula, bad input."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fgexp.nn.guesses import (METHODS, TANGENT_SETS, GuessedNet, GuessSpec, Measures,
                              guess_step, local_guesses, tangent_set)
from fgexp.nn.models import BlockModel, fc


def _fc(width=16, depth=2, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    model = GuessedNet(fc(25, 3, width, depth).double(), x, 3).double()
    return model, x, y


def _coupled(seed=0):
    """A tiny conv network with train-mode BatchNorm: examples couple, the 'batch' view."""
    torch.manual_seed(seed)
    x = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    net = BlockModel([nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                      nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
                      nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 3))])
    return GuessedNet(net.double(), x, 3).double(), x, y


def _outputs(model, x):
    """Every block's output, with its graph."""
    outputs, h = [], x
    for block in model.net.blocks:
        h = block(h)
        outputs.append(h)
    return outputs


def _grads(model, x, y, spec, seed=3, measures=None):
    gen = torch.Generator().manual_seed(seed)
    loss = guess_step(model, x, y, spec, gen, measures)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_guess_is_the_exact_gradient_of_the_local_loss():
    model, x, y = _fc()
    h = model.net.blocks[0](x)
    guesses, head_grads = local_guesses(model.heads, [h], y)
    h_leaf = h.detach().requires_grad_(True)
    local = F.cross_entropy(model.heads[0](h_leaf), y)
    expected_h, expected_w = torch.autograd.grad(local, [h_leaf, model.heads[0].weight])
    torch.testing.assert_close(guesses[0], expected_h, rtol=0, atol=1e-14)
    torch.testing.assert_close(head_grads["heads.0.weight"], expected_w, rtol=0, atol=1e-14)


def test_last_guess_is_the_true_loss_gradient_at_the_logits():
    model, x, y = _fc()
    outputs = _outputs(model, x)
    logits = outputs[-1].detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    guesses, _ = local_guesses(model.heads, outputs, y)  # past the heads: identity
    torch.testing.assert_close(guesses[2], expected)


@pytest.mark.parametrize("make", [_fc, _coupled], ids=["example-view", "batch-view"])
@pytest.mark.parametrize("method,k", [("random", 3), ("guess", 1), ("guess", 4), ("blocks", 3),
                                      ("blocks", 5), ("guess+blocks", 5), ("local", 1)])
@pytest.mark.parametrize("aggregation", ["mean", "projection"])
def test_forward_equals_simulated(make, method, k, aggregation):
    grads = {}
    for mode in ("forward", "simulated"):
        model, x, y = make()
        loss, grads[mode] = _grads(model, x, y, GuessSpec(method, k, aggregation, mode))
    assert grads["forward"].keys() == grads["simulated"].keys()
    for name in grads["forward"]:
        torch.testing.assert_close(grads["forward"][name], grads["simulated"][name],
                                   rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("aggregation", ["projection", "mean"])
def test_single_guess_estimate_is_fournier_estimate(aggregation):
    """<grad, g> g / |g|^2 per example, from the step's own estimate (k = 1: both coincide)."""
    from fgexp.nn.guesses import activity_estimate
    model, x, y = _fc()
    outputs = _outputs(model, x)
    true = torch.autograd.grad(F.cross_entropy(outputs[-1], y), outputs)
    guesses, _ = local_guesses(model.heads, outputs, y)
    spec = GuessSpec("guess", 1, aggregation)
    estimate, _, _ = activity_estimate(spec, guesses, true, model.net, x, y, None, F.cross_entropy)
    for b in range(len(x)):  # example view: one estimate per example
        g = torch.cat([t[b].flatten() for t in guesses])
        grad = torch.cat([t[b].flatten() for t in true])
        fournier = (grad @ g) / (g @ g) * g
        torch.testing.assert_close(torch.cat([e[b].flatten() for e in estimate]), fournier)


def test_projection_is_at_least_as_close_as_mean():
    """Projection onto the span is the best estimate in it: cos to the true gradient >= mean's."""
    cos = {}
    for aggregation in ("mean", "projection"):
        model, x, y = _fc(width=32)
        measures = Measures.empty()
        _grads(model, x, y, GuessSpec("guess", 6, aggregation), measures=measures)
        cos[aggregation] = measures.cos_true[0]
    assert cos["projection"] >= cos["mean"] - 1e-12


def test_bp_method_gives_backprop_gradients():
    model, x, y = _fc()
    _, grads = _grads(model, x, y, GuessSpec("bp"))
    expected = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.net.parameters()))
    for (name, _), g in zip(model.net.named_parameters(), expected):
        torch.testing.assert_close(grads[f"net.{name}"], g)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "magic"}, "unknown tangent set 'magic'"),
    ({"method": "guess", "perturbation": "weight"}, "guessed tangents need activity"),
    ({"aggregation": "median"}, "unknown aggregation 'median'"),
    ({"method": "local", "k": 4}, "local uses no tangents"),
    ({"k": 0}, "k must be an integer >= 1"),
])
def test_bad_spec_is_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuessSpec(**kwargs)


@pytest.mark.parametrize("method,k,needed", [("blocks", 2, 3), ("guess+blocks", 3, 4)])
def test_k_must_hold_every_guess_of_the_set(method, k, needed):
    with pytest.raises(ValueError, match=re.escape(f"'{method}' needs k >= {needed}")):
        GuessSpec(method, k).check_blocks(3)


def test_names():
    assert set(TANGENT_SETS) < set(METHODS)


def test_guess_plus_blocks_projection_is_the_projection_onto_the_whole_span():
    """Dropping the (dependent) global guess keeps the span: compare with a float64 pinv."""
    model, x, y = _fc()
    outputs = _outputs(model, x)
    true = torch.autograd.grad(F.cross_entropy(outputs[-1], y), outputs)
    guesses, _ = local_guesses(model.heads, outputs, y)
    spec = GuessSpec("guess+blocks", 6, "projection")
    tangents = tangent_set(spec, guesses, "example", torch.Generator().manual_seed(0))
    grad_ud = torch.cat([t.reshape(len(x), -1) for t in true], dim=-1)
    reference = (torch.linalg.pinv(tangents) @ (tangents @ grad_ud.unsqueeze(-1))).squeeze(-1)
    from fgexp.aggregate import aggregate
    jvps = (tangents @ grad_ud.unsqueeze(-1)).squeeze(-1)
    estimate = aggregate(tangents[:, 1:], jvps[:, 1:], "projection")
    torch.testing.assert_close(estimate, reference)


@pytest.mark.parametrize("view", ["example", "batch"])
def test_block_tangents_hold_one_block_guess_each(view):
    from fgexp.nn.guesses import to_blocks
    model, x, y = _fc()
    guesses, _ = local_guesses(model.heads, _outputs(model, x), y)
    tangents = tangent_set(GuessSpec("blocks", 3), guesses, view, None)
    blocks = to_blocks(tangents, guesses, view)  # each (k, B, ...)
    for i, guess in enumerate(guesses):
        for j in range(3):
            part = blocks[j][i]
            if j != i:
                assert not part.any()
        scale = guess.norm() if view == "batch" else guess.flatten(1).norm(dim=1)
        expected = guess / scale.reshape(-1, *[1] * (guess.dim() - 1)) if view == "example" \
            else guess / scale
        torch.testing.assert_close(blocks[i][i], expected)
