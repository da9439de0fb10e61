"""Combine k tangents and their directional derivatives into one gradient estimate.

Shapes: tangents (..., k, n), directional derivatives (..., k) -> estimate (..., n).
The directional derivatives are taken along the tangents as given (not normalized); the
normalized variants use v_i / |v_i| as tangents, whose directional derivative is d_i / |v_i|.
"""
from __future__ import annotations

import math

import torch

METHODS = ("sum", "mean", "sum_normalized", "mean_normalized", "projection")


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


def projection(tangents_kxn: torch.Tensor, jvps_k: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of the gradient onto span(tangents), from d = V g alone.

    P g = V^T (V V^T)^+ V g = V^+ d. With V^T = QR (k <= n, full rank) this is Q R^{-T} d, one
    triangular solve and no Gram inverse. Rank-deficient batches (k > n, repeated tangents) fall
    back to the SVD pseudo-inverse, which projects onto the span without NaNs.
    """
    _check_shapes(tangents_kxn, jvps_k)
    k, n = tangents_kxn.shape[-2:]
    # Relative rank tolerance. Rounding errors grow like sqrt(n), not n: the textbook
    # max(k, n) * eps exceeds 1 in float32 for networks with millions of parameters.
    rtol = 10 * math.sqrt(max(k, n)) * torch.finfo(tangents_kxn.dtype).eps
    if k <= n:
        q_nxk, r_kxk = torch.linalg.qr(tangents_kxn.transpose(-1, -2))
        diag_k = r_kxk.diagonal(dim1=-2, dim2=-1).abs()
        if bool((diag_k > rtol * diag_k.amax(-1, keepdim=True)).all()):
            coef_kx1 = torch.linalg.solve_triangular(
                r_kxk.transpose(-1, -2), jvps_k.unsqueeze(-1), upper=False)
            return (q_nxk @ coef_kx1).squeeze(-1)
    # Rare path (dependent tangents, k > n): an SVD in float64, as float32 SVDs of very wide
    # matrices lose about three digits.
    pinv_nxk = torch.linalg.pinv(tangents_kxn.double(), rtol=rtol)
    return (pinv_nxk @ jvps_k.double().unsqueeze(-1)).squeeze(-1).to(tangents_kxn.dtype)


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
