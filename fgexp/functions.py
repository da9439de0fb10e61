"""Closed-form test functions of Section 4.2, batched over leading dimensions: (..., n) -> (...)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fgexp import paper


def sphere(x_n: torch.Tensor) -> torch.Tensor:
    """f(x) = sum x_i^2; minimum 0 at x = 0."""
    return x_n.square().sum(-1)


def rosenbrock(x_n: torch.Tensor) -> torch.Tensor:
    """f(x) = sum_{i<n} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2; minimum 0 at x = 1.

    For n = 1 the sum is empty and f is the constant 0.
    """
    head, tail = x_n[..., :-1], x_n[..., 1:]
    return (100.0 * (tail - head.square()).square() + (1.0 - head).square()).sum(-1)


def styblinski_tang(x_n: torch.Tensor) -> torch.Tensor:
    """f(x) = 0.5 sum (x_i^4 - 16 x_i^2 + 5 x_i); minimum about -39.16617 n."""
    return 0.5 * (x_n.pow(4) - 16.0 * x_n.square() + 5.0 * x_n).sum(-1)


# The 1-d Styblinski-Tang minimizer, the root of 4x^3 - 32x + 5 near -2.9035.
_ST_ARGMIN = -2.9035340277711770
_ST_MIN_PER_DIM = 0.5 * (_ST_ARGMIN ** 4 - 16 * _ST_ARGMIN ** 2 + 5 * _ST_ARGMIN)


@dataclass(frozen=True)
class TestFunction:
    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    max_steps: int                     # the paper's step limit for this function
    start: Callable[[int], torch.Tensor]
    minimum: Callable[[int], float]    # global minimum value for dimension n

    def __call__(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.f(x_n)


def _rosenbrock_start(n: int) -> torch.Tensor:
    x = torch.zeros(n)
    x[0] = -1.0
    return x


def _define(f, max_steps: int, start, minimum) -> TestFunction:
    return TestFunction(f.__name__.replace("_", "-"), f, max_steps, start, minimum)


_DEFINED = {t.name: t for t in (
    _define(sphere, 1000, lambda n: -torch.ones(n), lambda n: 0.0),
    _define(rosenbrock, 25000, _rosenbrock_start, lambda n: 0.0),
    _define(styblinski_tang, 1000, torch.zeros, lambda n: _ST_MIN_PER_DIM * n),
)}
if set(_DEFINED) != set(paper.FUNCTIONS):  # the names live in fgexp.paper alone
    raise ImportError(f"fgexp.functions defines {sorted(_DEFINED)}, fgexp.paper names "
                      f"{sorted(paper.FUNCTIONS)}")
FUNCTIONS = {name: _DEFINED[name] for name in paper.FUNCTIONS}  # in the paper's order


def get(name: str) -> TestFunction:
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; allowed: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name]

