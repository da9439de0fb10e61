"""Exact expectations of the cosine similarity and norm ratio for Gaussian tangents.

For v ~ N(0, I_n) write v = |v| u with |v| ~ chi_n independent of u, uniform on the sphere.
With the true gradient g, the single-tangent forward gradient g_v = <g, v> v has
  cos(g_v, g) = |<u, e>|                 (e = g / |g|; sign: g_v always points downhill)
  |g_v| / |g| = |v|^2 |<u, e>|,
and <u, e>^2 ~ Beta(1/2, (n-1)/2). Hence
  E[cos]         = Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2))        -> sqrt(2 / (pi n))
  E[|g_v| / |g|] = n E[cos]                                      -> sqrt(2 n / pi)
  E[cos^2] = 1/n,  E[(|g_v| / |g|)^2] = E[|v|^4] / n = n + 2.

k independent Gaussian tangents span a uniformly random k-dim subspace U, so for the
projection |P_U g|^2 / |g|^2 ~ Beta(k/2, (n-k)/2) (k < n; it is 1 for k >= n), and the cosine
equals the norm ratio, |P_U g| / |g|.

The sum (and mean) sum_i <g, v_i> v_i has cos^2 = A / (A + C) with A ~ chi^2_k (the squared
components of the v_i along e) and C ~ chi^2_{n-1} independent: a Beta(k/2, (n-1)/2) variable.

All means of a square root of X ~ Beta(a, b) use E[sqrt X] = B(a + 1/2, b) / B(a, b), written
with log-Gamma so that n = 2^14 and beyond do not overflow.
"""
from __future__ import annotations

import math


def _check(n: int, k: int = 1) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def sqrt_beta_mean(a: float, b: float) -> float:
    """E[sqrt X] for X ~ Beta(a, b); b = 0 means X = 1."""
    if b == 0:
        return 1.0
    return math.exp(math.lgamma(a + 0.5) + math.lgamma(a + b)
                    - math.lgamma(a) - math.lgamma(a + b + 0.5))


def sqrt_beta_std(a: float, b: float) -> float:
    """Standard deviation of sqrt X for X ~ Beta(a, b): E[X] = a / (a + b)."""
    mean_x = 1.0 if b == 0 else a / (a + b)
    return math.sqrt(max(mean_x - sqrt_beta_mean(a, b) ** 2, 0.0))


def single_cos_mean(n: int) -> float:
    """E[cos(g_v, g)] for one tangent v ~ N(0, I_n)."""
    _check(n)
    return sqrt_beta_mean(0.5, (n - 1) / 2)


def single_cos_std(n: int) -> float:
    """Standard deviation of cos(g_v, g); E[cos^2] = 1 / n."""
    _check(n)
    return sqrt_beta_std(0.5, (n - 1) / 2)


def single_norm_ratio_mean(n: int) -> float:
    """E[|g_v| / |g|] = E[|v|^2] E[|<u, e>|] = n E[cos]."""
    return n * single_cos_mean(n)


def single_norm_ratio_std(n: int) -> float:
    """Standard deviation of |g_v| / |g|; its second moment is n + 2."""
    return math.sqrt(max(n + 2 - single_norm_ratio_mean(n) ** 2, 0.0))


def projection_cos_mean(n: int, k: int) -> float:
    """E[|P_U g| / |g|] for U spanned by k Gaussian tangents (k >= n gives 1)."""
    _check(n, k)
    return 1.0 if k >= n else sqrt_beta_mean(k / 2, (n - k) / 2)


def projection_cos_std(n: int, k: int) -> float:
    _check(n, k)
    return 0.0 if k >= n else sqrt_beta_std(k / 2, (n - k) / 2)


def conical_cos_mean(n: int, k: int) -> float:
    """E[cos] of the sum or mean of k single-tangent forward gradients (same direction)."""
    _check(n, k)
    return sqrt_beta_mean(k / 2, (n - 1) / 2)


def conical_cos_std(n: int, k: int) -> float:
    _check(n, k)
    return sqrt_beta_std(k / 2, (n - 1) / 2)


def large_n_single(n: int) -> tuple[float, float]:
    """The paper's large-n limits (cosine, norm ratio): sqrt(2 / (pi n)), sqrt(2 n / pi)."""
    return math.sqrt(2 / (math.pi * n)), math.sqrt(2 * n / math.pi)
