"""fgexp.theory: exact expectations, checked by hand values, limits and simulation."""
import math

import numpy as np
import pytest
from scipy import stats

from fgexp import approximation as approx
from fgexp import theory


def test_single_tangent_known_values():
    # n = 1: cos = 1 and |g_v| / |g| = a^2 with E = 1; n = 2: E|cos| on the circle = 2 / pi;
    # n = 3: |u_1| is uniform on [0, 1] (Archimedes), so E = 1/2 and E[ratio] = 3/2.
    assert theory.single_cos_mean(1) == pytest.approx(1.0)
    assert theory.single_norm_ratio_mean(1) == pytest.approx(1.0)
    assert theory.single_cos_mean(2) == pytest.approx(2 / math.pi)
    assert theory.single_cos_mean(3) == pytest.approx(0.5)
    assert theory.single_norm_ratio_mean(3) == pytest.approx(1.5)


@pytest.mark.parametrize("n", [2 ** 10, 2 ** 14, 2 ** 16])
def test_single_tangent_approaches_large_n_limits(n):
    cos_limit, ratio_limit = theory.large_n_single(n)
    # Gamma(n/2) / Gamma((n+1)/2) = sqrt(2/n) (1 + 1/(4n) + ...): relative gap ~ 1 / (4n).
    assert theory.single_cos_mean(n) == pytest.approx(cos_limit, rel=1 / n)
    assert theory.single_norm_ratio_mean(n) == pytest.approx(ratio_limit, rel=1 / n)
    assert theory.single_cos_mean(n) != pytest.approx(cos_limit, rel=1e-3 / n)


@pytest.mark.parametrize("n", [1, 2, 7, 1024])
def test_second_moments(n):
    assert theory.single_cos_std(n) ** 2 + theory.single_cos_mean(n) ** 2 == pytest.approx(1 / n)
    assert (theory.single_norm_ratio_std(n) ** 2 + theory.single_norm_ratio_mean(n) ** 2
            == pytest.approx(n + 2))


def test_projection_and_conical_special_cases():
    for n in (1, 5, 64):
        assert theory.projection_cos_mean(n, n) == 1.0
        assert theory.projection_cos_mean(n, 2 * n) == 1.0
        assert theory.projection_cos_mean(n, 1) == pytest.approx(theory.single_cos_mean(n))
        assert theory.conical_cos_mean(n, 1) == pytest.approx(theory.single_cos_mean(n))
    # More tangents help, and the projection beats the conical combinations for 1 < k < n.
    assert theory.projection_cos_mean(64, 16) > theory.conical_cos_mean(64, 16)
    assert theory.conical_cos_mean(64, 16) > theory.conical_cos_mean(64, 4)
    with pytest.raises(ValueError):
        theory.projection_cos_mean(4, 0)


def _brute(n, k, method, samples, seed=1):
    group = approx.group_of(method)
    seq = approx.setting_seed(seed, "normal", n, k, group)
    return approx.sample_group(n, k, group, [method], samples, seq, engine="brute")[method]


def test_single_tangent_simulation_matches_theory_at_n_1024():
    cos_s, ratio_s = _brute(1024, 1, "single", 4000)
    se = cos_s.std(ddof=1) / math.sqrt(cos_s.size)
    assert abs(cos_s.mean() - theory.single_cos_mean(1024)) < 3 * se
    se = ratio_s.std(ddof=1) / math.sqrt(ratio_s.size)
    assert abs(ratio_s.mean() - theory.single_norm_ratio_mean(1024)) < 3 * se
    # The large-n limit is not the mean at small n: n = 2 separates them clearly.
    assert abs(theory.single_cos_mean(2) - theory.large_n_single(2)[0]) > 0.07


@pytest.mark.parametrize("engine", ["brute", "reduced"])
def test_projection_with_k_equal_n_is_exact(engine):
    seq = approx.setting_seed(0, "normal", 64, 64, "projection")
    cos_s, ratio_s = approx.sample_group(64, 64, "projection", ["projection"], 200, seq,
                                         engine=engine)["projection"]
    assert np.abs(cos_s - 1).max() < 1e-4
    assert np.abs(ratio_s - 1).max() < 1e-4


@pytest.mark.parametrize("n,k", [(64, 16), (200, 3)])
def test_projection_cosine_squared_is_beta(n, k):
    cos_s, ratio_s = _brute(n, k, "projection", 3000)
    np.testing.assert_allclose(cos_s, ratio_s, rtol=1e-9)  # |P g| / |g| is both
    assert stats.kstest(cos_s ** 2, stats.beta(k / 2, (n - k) / 2).cdf).pvalue > 1e-3
    se = cos_s.std(ddof=1) / math.sqrt(cos_s.size)
    assert abs(cos_s.mean() - theory.projection_cos_mean(n, k)) < 3 * se


def test_conical_cosine_matches_theory():
    cos_s, _ = _brute(32, 8, "mean", 3000)
    assert stats.kstest(cos_s ** 2, stats.beta(8 / 2, (32 - 1) / 2).cdf).pvalue > 1e-3
    se = cos_s.std(ddof=1) / math.sqrt(cos_s.size)
    assert abs(cos_s.mean() - theory.conical_cos_mean(32, 8)) < 3 * se
