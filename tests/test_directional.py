import math

import pytest
import torch

from fgexp import directional as D
from fgexp import functions as F
from fgexp import tangents


def _tangents(lead, k, n, seed=0, dtype=torch.float32):
    return tangents.sample("normal", lead, k, n, torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", ["rosenbrock", "styblinski-tang", "sphere"])
def test_forward_equals_simulated_for_same_tangents(name):
    fn = F.get(name)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    v = _tangents((3,), 5, 16)
    value_f, jvps_f = D.jvps_forward(fn, x, v)
    value_s, grad = D.value_and_grad(fn, x)
    jvps_s = D.jvps_simulated(grad, v)
    assert torch.allclose(value_f, value_s)
    assert torch.allclose(jvps_f, jvps_s, rtol=1e-5, atol=1e-4 * jvps_s.abs().max().item())
    for gradient in ("fg-mean", "frog", "fg-sum-normalized"):
        spec_f = D.GradientSpec(gradient, k=5, mode="forward")
        spec_s = D.GradientSpec(gradient, k=5, mode="simulated")
        est_f = D.estimate(fn, x, spec_f, tangents_kxn=v)[1]
        est_s = D.estimate(fn, x, spec_s, tangents_kxn=v)[1]
        assert torch.allclose(est_f, est_s, rtol=1e-4, atol=1e-4 * est_s.abs().max().item())


def test_forward_mode_uses_no_backward_pass(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backward pass was requested in forward mode")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    x = torch.randn(2, 8)
    with torch.no_grad():
        value, est = D.estimate(F.rosenbrock, x, D.GradientSpec("frog", k=4),
                                torch.Generator().manual_seed(0))
    assert est.shape == (2, 8) and est.grad_fn is None and torch.isfinite(est).all()
    with pytest.raises(AssertionError, match="backward pass"):
        D.estimate(F.rosenbrock, x, D.GradientSpec("frog", k=4, mode="simulated"))


def test_chunking_does_not_change_results():
    x = torch.randn(4, 32)
    v = _tangents((4,), 16, 32, seed=2)
    _, full = D.jvps_forward(F.styblinski_tang, x, v)
    _, chunked = D.jvps_forward(F.styblinski_tang, x, v, chunk_size=3)
    assert torch.allclose(full, chunked)


def test_bp_is_the_exact_gradient():
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    _, grad = D.estimate(F.sphere, x, D.GradientSpec("bp"))
    assert torch.allclose(grad, 2 * x)


def test_single_tangent_estimate_is_unbiased():
    n, samples = 8, 40000
    x = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xs = x.expand(samples, n)
    v = _tangents((samples,), 1, n, seed=4, dtype=torch.float64)
    _, est = D.estimate(F.rosenbrock, xs, D.GradientSpec("fg-mean", k=1), tangents_kxn=v)
    grad = D.value_and_grad(F.rosenbrock, x)[1]
    stderr = est.std(0) / math.sqrt(samples)
    assert ((est.mean(0) - grad).abs() <= 4 * stderr + 1e-9).all()


def test_k1_cosine_matches_theory_in_high_dimension():
    n, samples = 1024, 4000
    xs = torch.zeros(samples, n)
    v = _tangents((samples,), 1, n, seed=5)
    _, est = D.estimate(F.sphere, xs + 1.0, D.GradientSpec("fg-mean", k=1), tangents_kxn=v)
    grad = 2 * torch.ones(n)
    cos = torch.nn.functional.cosine_similarity(est, grad.expand_as(est), dim=-1)
    theory = math.sqrt(2 / (math.pi * n))
    assert abs(cos.mean().item() - theory) < 3 * cos.std().item() / math.sqrt(samples)


def _mlp_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(6, 4, generator=gen), "b1": torch.randn(6, generator=gen),
            "w2": torch.randn(3, 6, generator=gen), "b2": torch.randn(3, generator=gen)}


def _mlp_loss(inputs, targets):
    def loss_fn(p):
        hidden = torch.tanh(inputs @ p["w1"].T + p["b1"])
        logits = hidden @ p["w2"].T + p["b2"]
        return torch.nn.functional.cross_entropy(logits, targets)
    return loss_fn


def test_parameter_dict_forward_equals_simulated():
    params = _mlp_params()
    gen = torch.Generator().manual_seed(1)
    loss_fn = _mlp_loss(torch.randn(5, 4, generator=gen), torch.randint(0, 3, (5,), generator=gen))
    n = D.flat_size(params)
    v = _tangents((), 7, n, seed=2)
    loss_f, jvps_f = D.jvps_params_forward(loss_fn, params, v, chunk_size=3)
    loss_s, grads = D.params_grad(loss_fn, params)
    jvps_s = v @ D.flatten(grads)
    assert torch.allclose(loss_f, loss_s)
    assert torch.allclose(jvps_f, jvps_s, rtol=1e-5, atol=1e-6)


def test_module_loss_and_flatten_roundtrip():
    module = torch.nn.Linear(3, 2)
    params = dict(module.named_parameters())
    flat = D.flatten({k: p.detach() for k, p in params.items()})
    back = D.unflatten(flat, params)
    assert all(torch.equal(back[k], p.detach()) for k, p in params.items())
    loss_fn = D.module_loss(module, lambda out: out.square().sum(), torch.ones(4, 3))
    assert torch.allclose(loss_fn(params), module(torch.ones(4, 3)).square().sum())


@pytest.mark.parametrize("kwargs, match", [
    (dict(gradient="adam"), "allowed: bp, fg-mean, frog"),
    (dict(gradient="fg-mean", k=0), "k must be"),
    (dict(gradient="fg-mean", mode="reverse"), "allowed: forward, simulated"),
    (dict(gradient="fg-mean", sampler="uniform"), "allowed: normal"),
    (dict(gradient="frog", sampler="cone"), r"\(0, 90\]"),
    (dict(gradient="frog", perturbation="node"), "allowed: weight, activity"),
])
def test_spec_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.GradientSpec(**kwargs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not fit"):
        D.jvps_forward(F.sphere, torch.zeros(2, 5), torch.zeros(3, 4, 5))


def test_params_jvps_keep_mixed_parameter_dtypes():
    """Parameters of different dtypes are not packed into one (promoted) flat tensor."""
    params = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2)}
    seen = {}

    def loss_fn(p):
        seen.update({name: t.dtype for name, t in p.items()})
        return (p["a"] ** 2).sum() + (p["b"].double() ** 2).sum()

    v = torch.randn(2, 5, dtype=torch.float64)
    _, jvps = D.jvps_params_forward(loss_fn, params, v)
    assert seen == {"a": torch.float64, "b": torch.float32}
    g = torch.cat([2 * params["a"], 2 * params["b"].double()])
    torch.testing.assert_close(jvps, v @ g, rtol=1e-5, atol=1e-6)
