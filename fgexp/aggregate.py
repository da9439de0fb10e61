"""Combine k tangents and their directional derivatives into one gradient estimate.

Shapes: tangents (..., k, n), directional derivatives (..., k) -> estimate (..., n).
The directional derivatives are taken along the tangents as given (not normalized); the
normalized variants use v_i / |v_i| as tangents, whose directional derivative is d_i / |v_i|.
"""
from __future__ import annotations

import math

import torch

METHODS = ("sum", "mean", "sum_normalized", "mean_normalized", "projection")
# Columns per partial Gram product (see gram()); 4096 keeps float32 rounding near 1e-7.
_GRAM_CHUNK = 4096
# Largest condition bound of the unit-diagonal Gram taken through the Gram path. Measured,
# its relative error is about cond * 1e-8 in float32 and cond * 1e-16 in float64 (QR's is
# 1e-7 to 1e-5), so these bounds keep it near 1e-5 and 1e-10. Other dtypes always take QR.
_MAX_GRAM_COND = {torch.float32: 1e3, torch.float64: 1e6}


def _check_shapes(tangents_kxn: torch.Tensor, jvps_k: torch.Tensor) -> None:
    if tangents_kxn.dim() < 2:
        raise ValueError(f"tangents must have shape (..., k, n), got {tuple(tangents_kxn.shape)}")
    if tuple(jvps_k.shape) != tuple(tangents_kxn.shape[:-1]):
        raise ValueError(
            f"directional derivatives of shape {tuple(jvps_k.shape)} do not match tangents of "
            f"shape {tuple(tangents_kxn.shape)}: expected {tuple(tangents_kxn.shape[:-1])}"
        )


def weighted_sum(tangents_kxn: torch.Tensor, weights_k: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i, batched: (..., k, n) x (..., k) -> (..., n)."""
    return (weights_k.unsqueeze(-2) @ tangents_kxn).squeeze(-2)


def gram(tangents_kxn: torch.Tensor) -> torch.Tensor:
    """V V^T in float64, (..., k, n) -> (..., k, k).

    Long float32 rows are multiplied in chunks of _GRAM_CHUNK columns and the partial Grams
    summed in float64: the rounding of one product then grows with the chunk, not with n
    (relative error about 1e-7 instead of 1e-4 at n = 1.86M, at the same speed).
    """
    k, n = tangents_kxn.shape[-2:]
    if tangents_kxn.dtype == torch.float64 or n < 2 * _GRAM_CHUNK:
        return (tangents_kxn @ tangents_kxn.transpose(-1, -2)).double()
    whole = n - n % _GRAM_CHUNK
    grams = []
    for v_kxn in tangents_kxn.reshape(-1, k, n):
        # (chunks, k, chunk) view of the first `whole` columns: one batched product, no copy
        blocks = v_kxn[:, :whole].unflatten(-1, (-1, _GRAM_CHUNK)).transpose(0, 1)
        tail_kxr = v_kxn[:, whole:]
        grams.append((blocks @ blocks.transpose(-1, -2)).double().sum(0)
                     + (tail_kxr @ tail_kxr.T).double())
    return torch.stack(grams).reshape(*tangents_kxn.shape[:-2], k, k)


def _gram_inverse(tangents_bxkxn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G^-1, ok): the float64 inverse Grams (B, k, k) and where they are accurate (B,).

    Works on the unit-diagonal Gram U = D G D (D = diag^-1/2; the solve is insensitive to that
    scaling) through its Cholesky factor. The check bounds the condition number from above at
    no extra cost: lambda_max <= max row sum |U| and 1 / lambda_min <= trace(U^-1). Zero,
    dependent and ill-conditioned tangent sets fail it.
    """
    gram_bxkxk = gram(tangents_bxkxn)
    scale_bxk = gram_bxkxk.diagonal(dim1=-2, dim2=-1).rsqrt()
    unit_bxkxk = scale_bxk.unsqueeze(-1) * gram_bxkxk * scale_bxk.unsqueeze(-2)
    finite_b = torch.isfinite(unit_bxkxk).flatten(1).all(-1)
    eye_kxk = torch.eye(unit_bxkxk.shape[-1], dtype=torch.float64, device=unit_bxkxk.device)
    unit_bxkxk = torch.where(finite_b[:, None, None], unit_bxkxk, eye_kxk)
    chol_bxkxk, info_b = torch.linalg.cholesky_ex(unit_bxkxk)
    inv_bxkxk = torch.cholesky_inverse(chol_bxkxk)
    cond_bound_b = (unit_bxkxk.abs().sum(-1).amax(-1)
                    * inv_bxkxk.diagonal(dim1=-2, dim2=-1).sum(-1))
    max_cond = _MAX_GRAM_COND.get(tangents_bxkxn.dtype, 0.0)
    ok_b = finite_b & (info_b == 0) & (cond_bound_b <= max_cond)
    return scale_bxk.unsqueeze(-1) * inv_bxkxk * scale_bxk.unsqueeze(-2), ok_b


def _fallback_rows(tangents_bxkxn: torch.Tensor) -> torch.Tensor:
    """Rows of the transposed pseudo-inverse (B, k, n) for sets the Gram path rejects.

    Full-rank sets (k <= n) use V^T = QR, V^+ = Q R^-T; the rest (dependent tangents, k > n)
    an SVD in float64, as float32 SVDs of very wide matrices lose about three digits.
    """
    k, n = tangents_bxkxn.shape[-2:]
    # Relative rank tolerance. Rounding errors grow like sqrt(n), not n: the textbook
    # max(k, n) * eps exceeds 1 in float32 for networks with millions of parameters.
    rtol = 10 * math.sqrt(max(k, n)) * torch.finfo(tangents_bxkxn.dtype).eps
    rows_bxkxn = torch.empty_like(tangents_bxkxn)
    full_b = torch.zeros(len(tangents_bxkxn), dtype=torch.bool, device=tangents_bxkxn.device)
    if k <= n:
        q_bxnxk, r_bxkxk = torch.linalg.qr(tangents_bxkxn.transpose(-1, -2))
        diag_bxk = r_bxkxk.diagonal(dim1=-2, dim2=-1).abs()
        full_b = (diag_bxk > rtol * diag_bxk.amax(-1, keepdim=True)).all(-1)
        eye_kxk = torch.eye(k, dtype=r_bxkxk.dtype, device=r_bxkxk.device).expand_as(r_bxkxk)
        r_inv_bxkxk = torch.linalg.solve_triangular(r_bxkxk, eye_kxk, upper=True)
        rows_bxkxn = r_inv_bxkxk @ q_bxnxk.transpose(-1, -2)
    if not bool(full_b.all()):
        rank_deficient = (~full_b).nonzero().squeeze(-1)
        pinv_bxnxk = torch.linalg.pinv(tangents_bxkxn[rank_deficient].double(), rtol=rtol)
        rows_bxkxn[rank_deficient] = pinv_bxnxk.transpose(-1, -2).to(tangents_bxkxn.dtype)
    return rows_bxkxn


def _per_set(tangents_bxkxn: torch.Tensor, gram_path, fallback) -> torch.Tensor:
    """gram_path(V, G^-1, index) on the sets whose Gram is well conditioned, fallback(V, index)
    on the rest, each result in its set's slot: a set's result does not depend on its batch."""
    k, n = tangents_bxkxn.shape[-2:]
    if k > n:
        return fallback(tangents_bxkxn, slice(None))
    inv_bxkxk, ok_b = _gram_inverse(tangents_bxkxn)
    if bool(ok_b.all()):
        return gram_path(tangents_bxkxn, inv_bxkxk, slice(None))
    if not bool(ok_b.any()):
        return fallback(tangents_bxkxn, slice(None))
    good, bad = ok_b.nonzero().squeeze(-1), (~ok_b).nonzero().squeeze(-1)
    fast = gram_path(tangents_bxkxn[good], inv_bxkxk[good], good)
    out = fast.new_empty((len(ok_b), *fast.shape[1:]))
    out[good] = fast
    out[bad] = fallback(tangents_bxkxn[bad], bad)
    return out


def projection_rows(tangents_kxn: torch.Tensor) -> torch.Tensor:
    """(..., k, n) rows a_j with sum_j d_j a_j = P g for d = V g: a = (V V^T)^-1 V = (V^+)^T.

    For many derivative vectors d sharing one tangent set (the descent engine's blocks of
    steps): each estimate then costs one weighted sum of these rows.
    """
    if tangents_kxn.dim() < 2:
        raise ValueError(f"tangents must have shape (..., k, n), got {tuple(tangents_kxn.shape)}")
    k, n = tangents_kxn.shape[-2:]
    rows_bxkxn = _per_set(
        tangents_kxn.reshape(-1, k, n),
        lambda v, inv, _: inv.to(v.dtype) @ v,
        lambda v, _: _fallback_rows(v))
    return rows_bxkxn.reshape(tangents_kxn.shape)


def projection(tangents_kxn: torch.Tensor, jvps_k: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of the gradient onto span(tangents), from d = V g alone.

    P g = V^T (V V^T)^-1 d: a k x k Gram (one chunked matrix product), its float64
    inverse, one weighted sum. The Gram squares the tangents' condition number, so sets whose
    unit-diagonal Gram's condition bound exceeds _MAX_GRAM_COND (cone tangents at small
    angles, dependent tangents) and sets with k > n go through QR, or an SVD where they are
    rank-deficient.
    """
    _check_shapes(tangents_kxn, jvps_k)
    k, n = tangents_kxn.shape[-2:]
    d_bxk = jvps_k.reshape(-1, k)

    def gram_path(v_bxkxn, inv_bxkxk, index):
        coef_bx1xk = (inv_bxkxk @ d_bxk[index].double().unsqueeze(-1)).transpose(-1, -2)
        coef_bx1xk = coef_bx1xk.to(v_bxkxn.dtype)
        if k == 1:  # one product per entry: the matrix product's numbers, ~5x faster on CPU
            return coef_bx1xk[:, 0] * v_bxkxn[:, 0]
        return (coef_bx1xk @ v_bxkxn).squeeze(-2)

    def fallback(v_bxkxn, index):
        return (d_bxk[index].unsqueeze(-2) @ _fallback_rows(v_bxkxn)).squeeze(-2)

    estimate_bxn = _per_set(tangents_kxn.reshape(-1, k, n), gram_path, fallback)
    return estimate_bxn.reshape(*tangents_kxn.shape[:-2], n)


def aggregate(tangents_kxn: torch.Tensor, jvps_k: torch.Tensor, method: str) -> torch.Tensor:
    """Forward-gradient estimate (..., n) from tangents (..., k, n) and derivatives (..., k)."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation {method!r}; allowed: {', '.join(METHODS)}")
    _check_shapes(tangents_kxn, jvps_k)
    if method == "projection":
        return projection(tangents_kxn, jvps_k)
    k = tangents_kxn.shape[-2]
    weights_k = jvps_k
    if method.endswith("_normalized"):
        weights_k = jvps_k / tangents_kxn.square().sum(-1)
    estimate = weighted_sum(tangents_kxn, weights_k)
    return estimate / k if method.startswith("mean") else estimate
