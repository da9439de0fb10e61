import math

import pytest
import torch

from fgexp import functions as F
from fgexp import paper


def test_batched_over_leading_dimensions():
    x = torch.randn(2, 3, 5)
    for name in F.FUNCTIONS:
        fn = F.get(name)
        out = fn(x)
        assert out.shape == (2, 3)
        assert torch.allclose(out[1, 2], fn(x[1, 2]))


def test_known_minima_and_values():
    n = 7
    assert F.sphere(torch.zeros(n)) == 0
    assert F.rosenbrock(torch.ones(n)) == 0
    x_st = torch.full((n,), -2.903534027771177, dtype=torch.float64)
    assert math.isclose(F.styblinski_tang(x_st).item(), F.get("styblinski-tang").minimum(n),
                        rel_tol=1e-12)
    assert math.isclose(F.get("styblinski-tang").minimum(1), -39.16616570377142, rel_tol=1e-9)
    # Rosenbrock at its paper start (-1, 0, ..., 0): (1 - x_1)^2 + 100 (x_2 - x_1^2)^2 + (n-2).
    assert F.rosenbrock(F.get("rosenbrock").start(4)).item() == pytest.approx(4 + 100 + 2)


def test_styblinski_tang_minimum_is_a_minimum():
    f = F.get("styblinski-tang")
    x = torch.full((3,), -2.903534027771177, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(x), x)
    assert grad.abs().max() < 1e-9


def test_paper_start_points_and_step_limits():
    assert torch.equal(F.get("sphere").start(3), -torch.ones(3))
    assert torch.equal(F.get("rosenbrock").start(3), torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.equal(F.get("styblinski-tang").start(3), torch.zeros(3))
    assert [F.get(n).max_steps for n in paper.FUNCTIONS] == [1000, 25000, 1000]
    assert list(F.FUNCTIONS) == list(paper.FUNCTIONS)


def test_unknown_function():
    with pytest.raises(ValueError, match="allowed: sphere, rosenbrock, styblinski-tang"):
        F.get("beale")
