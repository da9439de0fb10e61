"""Batched gradient descent: modes agree, known minima are reached, stops are per run."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from fgexp import functions
from fgexp.aggregate import aggregate
from fgexp.descent import (STOP_REASONS, _ConstantsAsDuals, aggregation_vectors, block_steps,
                           descend, descend_many)
from fgexp.directional import GradientSpec
from fgexp.paper import FUNCTIONS


def _assert_same(a, b, exact=True):
    if exact:
        assert torch.equal(a.best_value, b.best_value)
        assert torch.equal(a.final_value.nan_to_num(), b.final_value.nan_to_num())
    else:
        torch.testing.assert_close(a.best_value, b.best_value, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.final_value, b.final_value, rtol=1e-9, atol=1e-12)
    assert torch.equal(a.steps, b.steps)
    assert a.stop_reason == b.stop_reason


@pytest.mark.parametrize("gradient,k", [("fg-mean", 1), ("fg-mean", 4), ("frog", 4),
                                        ("fg-sum-normalized", 3)])
def test_forward_and_simulated_trajectories_agree(gradient, k):
    f = functions.get("rosenbrock")
    x0 = f.start(8).double()
    runs = {mode: descend(f, x0, GradientSpec(gradient, k=k, mode=mode), [1e-4, 3e-4],
                          [0, 1], max_steps=300, trace_every=1)
            for mode in ("forward", "simulated")}
    _assert_same(runs["forward"], runs["simulated"], exact=False)
    torch.testing.assert_close(runs["forward"].trace, runs["simulated"].trace,
                               rtol=1e-9, atol=1e-12)
    # The trajectory moved: the test compares something.
    assert (runs["forward"].best_value < f(x0) - 1).all()


def test_bp_reaches_the_sphere_minimum():
    f = functions.get("sphere")
    res = descend(f, f.start(4).double(), GradientSpec("bp"), [0.1], [0, 1], max_steps=1000)
    assert (res.best_value < 1e-20).all()
    # bp ignores the seed: every seed gives the same run
    assert torch.equal(res.best_value[:, 0], res.best_value[:, 1])


def test_bp_reaches_the_rosenbrock_minimum():
    f = functions.get("rosenbrock")
    res = descend(f, f.start(2).double(), GradientSpec("bp"), [2e-3], [0], max_steps=12000,
                  patience=50)
    assert res.best_value.item() < 1e-6
    assert f.minimum(2) == 0.0


def test_diverging_rate_stops_only_its_own_run():
    f = functions.get("sphere")
    spec = GradientSpec("fg-mean", k=2)
    res = descend(f, f.start(16), spec, [0.05, 1e20], [0, 1], max_steps=200)
    assert res.stop_reason[1] == ["diverged", "diverged"]
    assert all(r in ("max_steps", "no_improvement") for r in res.stop_reason[0])
    assert (res.steps[1] <= 2).all() and (res.steps[0] > 100).all()
    assert torch.isfinite(res.best_value).all()            # best finite value is kept
    assert (res.best_value[1] == 16.0).all()               # that was the start
    assert res.best_value[0].max() < 1.0                   # the good rate kept descending


def test_no_improvement_stops_after_patience_steps():
    f = functions.get("rosenbrock")                        # constant 0 for n = 1
    res = descend(f, f.start(1), GradientSpec("frog", k=2), [0.1], [0, 1, 2], max_steps=1000,
                  patience=50)
    assert res.stop_reason == [["no_improvement"] * 3]
    assert (res.steps == 50).all()
    assert set(STOP_REASONS) == {"max_steps", "no_improvement", "diverged"}


def test_batched_runs_equal_runs_alone():
    f = functions.get("styblinski-tang")
    x0 = f.start(32)
    spec = GradientSpec("frog", k=4)
    lrs, seeds = [0.003, 0.01, 0.03], [0, 5, 7]
    batched = descend(f, x0, spec, lrs, seeds, max_steps=150)
    for i, lr in enumerate(lrs):
        for j, seed in enumerate(seeds):
            alone = descend(f, x0, spec, [lr], [seed], max_steps=150)
            assert torch.equal(batched.best_value[i, j], alone.best_value[0, 0])
            assert batched.steps[i, j] == alone.steps[0, 0]
            assert batched.stop_reason[i][j] == alone.stop_reason[0][0]


def test_many_specs_at_once_equal_each_spec_alone():
    f = functions.get("rosenbrock")
    x0 = f.start(16)
    specs = [GradientSpec("bp"), GradientSpec("fg-mean", k=1), GradientSpec("frog", k=4),
             GradientSpec("fg-mean", k=16), GradientSpec("frog", k=16),
             GradientSpec("fg-mean", k=8, sampler="cone", angle_deg=45.0)]
    lrs_lxg = [[1e-3, 1e-4, 3e-4, 2e-4, 1e-3, 1e-4]]
    together = descend_many(f, x0, specs, lrs_lxg, [0, 1], max_steps=200)
    for g, spec in enumerate(specs):
        alone = descend(f, x0, spec, [lrs_lxg[0][g]], [0, 1], max_steps=200)
        _assert_same(together[g], alone)


def test_seed_changes_the_run_and_lrs_share_tangents():
    f = functions.get("sphere")
    res = descend(f, f.start(64), GradientSpec("fg-mean", k=1), [0.01], [0, 1], max_steps=50,
                  patience=1000)
    assert res.best_value[0, 0] != res.best_value[0, 1]


@pytest.mark.parametrize("method", ["sum", "mean", "sum_normalized", "mean_normalized",
                                    "projection"])
@pytest.mark.parametrize("k,n", [(3, 10), (6, 4)])
def test_aggregation_vectors_match_aggregate(method, k, n):
    gen = torch.Generator().manual_seed(0)
    tangents = torch.randn(5, k, n, generator=gen, dtype=torch.float64)
    jvps = torch.randn(5, k, generator=gen, dtype=torch.float64)
    vectors = aggregation_vectors(tangents, method)
    via_vectors = (jvps.unsqueeze(-1) * vectors).sum(-2)
    torch.testing.assert_close(via_vectors, aggregate(tangents, jvps, method))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_constants_as_duals_keep_the_numbers(name):
    f = functions.get(name)
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 4, 9, generator=gen), torch.randn(3, 4, 9, generator=gen)
    results = []
    for fast in (False, True):
        with fwAD.dual_level():
            if fast:
                with _ConstantsAsDuals():
                    out = f(fwAD.make_dual(x, v))
            else:
                out = f(fwAD.make_dual(x, v))
            results.append(fwAD.unpack_dual(out))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    # and the tangent is the directional derivative
    x_grad = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x_grad).sum(), x_grad)
    torch.testing.assert_close(results[1][1], (g * v).sum(-1), rtol=1e-4, atol=1e-3)


def test_block_steps_depend_only_on_k_and_n():
    assert block_steps(16, 1024) == 64
    assert block_steps(1, 1) == 64
    assert block_steps(1024, 2 ** 20) == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(lrs=[-0.1]), "positive"),
    (dict(lrs=[float("nan")]), "finite"),
    (dict(seeds=[]), "seed"),
    (dict(patience=0), "patience"),
    (dict(max_steps=-1), "max_steps"),
])
def test_bad_input_is_refused(kwargs, match):
    f = functions.get("sphere")
    args = dict(lrs=[0.1], seeds=[0], max_steps=5, patience=50)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        descend(f, f.start(4), GradientSpec("fg-mean", k=2), **args)


def test_mixed_modes_are_refused():
    f = functions.get("sphere")
    specs = [GradientSpec("fg-mean", k=2), GradientSpec("frog", k=2, mode="simulated")]
    with pytest.raises(ValueError, match="mode"):
        descend_many(f, f.start(4), specs, [[0.1, 0.1]], [0], max_steps=5)
