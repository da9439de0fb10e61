import pytest
import torch

from fgexp import aggregate as agg
from fgexp import tangents

torch.set_default_dtype(torch.float32)


def _setup(lead=(6,), k=4, n=10, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    grad_n = torch.randn(*lead, n, generator=gen, dtype=dtype)
    v = tangents.sample("normal", lead, k, n, gen, dtype=dtype)
    jvps = (v @ grad_n.unsqueeze(-1)).squeeze(-1)
    return grad_n, v, jvps


def test_shapes():
    _, v, d = _setup(lead=(2, 3), k=5, n=7)
    for method in agg.METHODS:
        assert agg.aggregate(v, d, method).shape == (2, 3, 7)


def test_sum_mean_and_normalized_forms_point_the_same_way():
    grad, v, d = _setup(k=1)
    outs = [agg.aggregate(v, d, m) for m in ("sum", "mean", "sum_normalized", "mean_normalized")]
    for out in outs[1:]:
        assert torch.allclose(torch.nn.functional.cosine_similarity(outs[0], out, dim=-1),
                              torch.ones(6), atol=1e-5)
    grad, v, d = _setup(k=5)
    assert torch.allclose(agg.aggregate(v, d, "sum") / 5, agg.aggregate(v, d, "mean"))
    assert torch.allclose(agg.aggregate(v, d, "sum_normalized") / 5,
                          agg.aggregate(v, d, "mean_normalized"))


def test_normalized_equals_using_unit_tangents():
    grad, v, d = _setup(k=3)
    u = v / v.norm(dim=-1, keepdim=True)
    du = (u @ grad.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(agg.aggregate(v, d, "mean_normalized"), agg.aggregate(u, du, "mean"),
                          atol=1e-5)


def test_every_estimate_has_non_negative_dot_with_gradient():
    grad, v, d = _setup(lead=(200,), k=3, n=20, seed=4)
    for method in agg.METHODS:
        dots = (agg.aggregate(v, d, method) * grad).sum(-1)
        assert (dots >= -1e-5).all(), method


def test_projection_exact_at_k_equals_n():
    grad, v, d = _setup(lead=(5,), k=12, n=12, seed=1, dtype=torch.float64)
    assert torch.allclose(agg.projection(v, d), grad, atol=1e-8)
    grad, v, d = _setup(lead=(5,), k=12, n=12, seed=1)
    assert torch.allclose(agg.projection(v, d), grad, atol=1e-3)


def test_projection_is_the_orthogonal_projection():
    grad, v, d = _setup(lead=(4,), k=3, n=9, seed=2, dtype=torch.float64)
    p = agg.projection(v, d)
    residual = grad - p
    assert (v @ residual.unsqueeze(-1)).abs().max() < 1e-10   # residual orthogonal to the span
    # Independent reference: least squares in the span.
    coef = torch.linalg.lstsq(v.transpose(-1, -2), grad.unsqueeze(-1)).solution
    assert torch.allclose(p, (v.transpose(-1, -2) @ coef).squeeze(-1), atol=1e-10)


def test_projection_never_worse_than_optimally_rescaled_sum_or_mean():
    grad, v, d = _setup(lead=(300,), k=4, n=16, seed=3)
    p_err = (agg.projection(v, d) - grad).norm(dim=-1)
    for method in ("sum", "mean", "sum_normalized", "mean_normalized"):
        est = agg.aggregate(v, d, method)
        scale = (est * grad).sum(-1, keepdim=True) / est.square().sum(-1, keepdim=True)
        err = (scale * est - grad).norm(dim=-1)
        assert (p_err <= err + 1e-4).all(), method


def test_projection_k_greater_than_n_and_duplicates():
    grad, v, d = _setup(lead=(3,), k=20, n=6, seed=5)
    p = agg.projection(v, d)
    assert torch.isfinite(p).all()
    assert torch.allclose(p, grad, atol=1e-4)
    # Duplicated tangents: the span is that of the distinct ones.
    grad, v, d = _setup(lead=(3,), k=3, n=8, seed=6)
    dup = torch.cat([v, v[..., :1, :]], dim=-2)
    ddup = torch.cat([d, d[..., :1]], dim=-1)
    p_dup = agg.projection(dup, ddup)
    assert torch.isfinite(p_dup).all()
    assert torch.allclose(p_dup, agg.projection(v, d), atol=1e-4)


def test_bad_input():
    grad, v, d = _setup()
    with pytest.raises(ValueError, match="allowed: sum, mean"):
        agg.aggregate(v, d, "median")
    with pytest.raises(ValueError, match="do not match"):
        agg.aggregate(v, d[..., :2], "mean")
    with pytest.raises(ValueError, match="do not match"):
        agg.aggregate(v, d[:3], "projection")


def test_projection_stays_exact_for_millions_of_dimensions():
    # A rank tolerance growing like n * eps would reject every float32 tangent set this large.
    grad, v, d = _setup(lead=(), k=3, n=3_000_000, seed=7)
    p = agg.projection(v, d)
    # Reference in float64 from the same (float32-rounded) directional derivatives.
    want = torch.linalg.pinv(v.double()) @ d.double()
    assert float((p.double() - want).norm() / want.norm()) < 1e-3
    dup = torch.cat([v, v[:1]], dim=-2)
    p_dup = agg.projection(dup, torch.cat([d, d[:1]]))
    assert float((p_dup.double() - want).norm() / want.norm()) < 1e-3
