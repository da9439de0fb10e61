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


def _reference(v, d):
    """Float64 SVD pseudo-inverse projection from the same (rounded) derivatives."""
    return (torch.linalg.pinv(v.double()) @ d.double().unsqueeze(-1)).squeeze(-1)


def _rel_err(p, want):
    return float(((p.double() - want).norm(dim=-1) / want.norm(dim=-1)).max())


def _tangent_set(kind, lead, k, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":
        v = tangents.sample("normal", lead, k, n, gen, dtype=dtype)
    elif kind == "repeated":  # the last tangent repeats the first
        v = tangents.sample("normal", lead, k - 1, n, gen, dtype=dtype)
        v = torch.cat([v, v[..., :1, :]], dim=-2)
    else:
        v = tangents.sample("cone", lead, k, n, gen, angle_deg=kind, dtype=dtype)
    grad_n = torch.randn(*lead, n, generator=gen, dtype=dtype)
    return v, (v @ grad_n.unsqueeze(-1)).squeeze(-1)


def _qr_only(monkeypatch):
    """Send every set through the QR / SVD fallback (no dtype passes the Gram check)."""
    monkeypatch.setattr(agg, "_MAX_GRAM_COND", {})


CONDITIONING = ["normal", 90, 45, 20, 10, 5, 1, "repeated"]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
@pytest.mark.parametrize("kind", CONDITIONING)
def test_projection_agrees_with_float64_and_qr_across_conditioning(kind, dtype, tol, monkeypatch):
    v, d = _tangent_set(kind, (6,), 16, 500, dtype)
    want = _reference(v, d)
    fast, rows = agg.projection(v, d), agg.projection_rows(v)
    assert _rel_err(fast, want) < tol
    assert _rel_err((d.unsqueeze(-2) @ rows).squeeze(-2), want) < tol
    _qr_only(monkeypatch)
    assert _rel_err(agg.projection(v, d), want) < tol
    assert _rel_err(fast, agg.projection(v, d).double()) < 2 * tol


def test_gram_check_routes_by_conditioning():
    # Gaussian tangents in high dimension are nearly orthogonal: the Gram path takes them.
    v, _ = _tangent_set("normal", (4,), 16, 2000, torch.float32)
    assert agg._gram_inverse(v)[1].all()
    # Float32 cone tangents at 1 degree (condition ~1e6) and repeated tangents go to QR / SVD.
    for kind in (1, "repeated"):
        v, _ = _tangent_set(kind, (4,), 16, 2000, torch.float32)
        assert not agg._gram_inverse(v)[1].any()


def test_a_sets_projection_does_not_depend_on_its_batch():
    good, d_good = _tangent_set("normal", (3,), 8, 300, torch.float32)
    bad, d_bad = _tangent_set(1, (3,), 8, 300, torch.float32, seed=1)
    mixed = agg.projection(torch.cat([good, bad]), torch.cat([d_good, d_bad]))
    assert torch.equal(mixed[:3], agg.projection(good, d_good))
    assert torch.equal(mixed[3:], agg.projection(bad, d_bad))
    rows = agg.projection_rows(torch.cat([good, bad]))
    assert torch.equal(rows[:3], agg.projection_rows(good))
    assert torch.equal(rows[3:], agg.projection_rows(bad))


def test_chunked_gram_matches_float64():
    v, _ = _tangent_set("normal", (2,), 5, 3 * agg._GRAM_CHUNK + 17, torch.float32)
    want = v.double() @ v.double().transpose(-1, -2)
    got = agg.gram(v)
    assert got.dtype == torch.float64
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_projection_stays_exact_for_millions_of_dimensions():
    # A rank tolerance growing like n * eps would reject every float32 tangent set this large.
    grad, v, d = _setup(lead=(), k=3, n=3_000_000, seed=7)
    p = agg.projection(v, d)
    # Reference in float64 from the same (float32-rounded) directional derivatives.
    want = _reference(v, d)
    assert _rel_err(p, want) < 1e-5
    dup = torch.cat([v, v[:1]], dim=-2)
    p_dup = agg.projection(dup, torch.cat([d, d[:1]]))
    assert _rel_err(p_dup, want) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind,tol", [("normal", 1e-5), (45, 1e-4), (1, 1e-3)])
def test_projection_of_a_network_sized_tangent_set(kind, tol, monkeypatch):
    # FC-1024 on MNIST has 1.86M parameters; the benchmarks project 16 tangents of that size.
    # At 1 degree (condition ~1e6) float32 QR itself is only good to ~4e-4.
    v, d = _tangent_set(kind, (), 16, 3_000_000, torch.float32)
    want = _reference(v, d)
    fast = agg.projection(v, d)
    assert _rel_err(fast, want) < tol
    _qr_only(monkeypatch)
    assert _rel_err(agg.projection(v, d), want) < 1e-3
