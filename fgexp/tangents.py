"""Seeded tangent samplers: every sampler returns a (..., k, n) tensor.

Leading dimensions batch independent draws (seeds, samples, learning rates). A sequence of
generators, one per entry of the first leading dimension, gives each entry its own random
stream, so a seed's tangents do not depend on which other seeds share the batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SAMPLERS = ("normal", "rademacher", "basis", "cone")

Generators = torch.Generator | Sequence[torch.Generator] | None


def _check(k: int, n: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")


def _draw(draw, lead: tuple[int, ...], generator: Generators):
    """Call draw(shape, generator) once, or once per generator along the first lead dim."""
    if generator is None or isinstance(generator, torch.Generator):
        return draw(lead, generator)
    if not lead or len(generator) != lead[0]:
        raise ValueError(
            f"got {len(generator)} generators for leading dimensions {lead}; "
            "pass one generator per entry of the first leading dimension"
        )
    return torch.stack([draw(lead[1:], g) for g in generator])


def normal(lead: tuple[int, ...], k: int, n: int, generator: Generators = None,
           dtype=torch.float32, device=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal tangents, (*lead, k, n).

    `out` (one generator or None): a (*lead, k, n) buffer to draw into, reused across steps.
    Same numbers as a fresh draw; it saves mapping fresh pages, a third of the draw's time
    for 16 x 1.86M float32 numbers on CPU (benchmarks/draw.py).
    """
    _check(k, n)
    if out is not None:
        if not (generator is None or isinstance(generator, torch.Generator)):
            raise ValueError("out= takes one generator (or None), not one per leading entry")
        if tuple(out.shape) != (*lead, k, n) or out.dtype != dtype:
            raise ValueError(f"out must be a {dtype} tensor of shape {(*lead, k, n)}, got "
                             f"{out.dtype} {tuple(out.shape)}")
        return torch.randn(*lead, k, n, generator=generator, out=out)
    return _draw(lambda s, g: torch.randn(*s, k, n, generator=g, dtype=dtype, device=device),
                 tuple(lead), generator)


def rademacher(lead: tuple[int, ...], k: int, n: int, generator: Generators = None,
               dtype=torch.float32, device=None) -> torch.Tensor:
    """Tangents with independent +-1 entries, (*lead, k, n)."""
    _check(k, n)

    def draw(s, g):
        bits = torch.randint(0, 2, (*s, k, n), generator=g, device=device)
        return (2 * bits - 1).to(dtype)

    return _draw(draw, tuple(lead), generator)


def basis(lead: tuple[int, ...], k: int, n: int, generator: Generators = None,
          dtype=torch.float32, device=None) -> torch.Tensor:
    """The first k standard basis vectors (rows of the identity), (*lead, k, n); needs k <= n."""
    _check(k, n)
    if k > n:
        raise ValueError(f"the basis sampler needs k <= n, got k={k}, n={n}")
    eye_kxn = torch.eye(k, n, dtype=dtype, device=device)
    return eye_kxn.expand(*lead, k, n).clone()


def cone(lead: tuple[int, ...], k: int, n: int, angle_deg: float, generator: Generators = None,
         dtype=torch.float32, device=None) -> torch.Tensor:
    """Unit tangents; each one after the first makes exactly `angle_deg` with the first.

    The first tangent is a normalized normal vector. Each further tangent starts as a fresh
    normal vector, is orthogonalized against the first, and is rotated in the plane of the two
    to the requested angle (paper, Section 4.3).
    """
    _check(k, n)
    if angle_deg is None or not (0 < float(angle_deg) <= 90):
        raise ValueError(f"cone angle must lie in (0, 90] degrees, got {angle_deg!r}")
    if k > 1 and n < 2:
        raise ValueError("the cone sampler needs n >= 2 for k > 1")
    # Draw in float64 so the requested angle holds to well below 1e-4 degrees.
    raw = normal(lead, k, n, generator, dtype=torch.float64, device=device)
    first_n = raw[..., :1, :] / raw[..., :1, :].norm(dim=-1, keepdim=True)
    rest = raw[..., 1:, :]
    rest = rest - (rest * first_n).sum(-1, keepdim=True) * first_n
    rest = rest / rest.norm(dim=-1, keepdim=True)
    alpha = math.radians(float(angle_deg))
    rotated = math.cos(alpha) * first_n + math.sin(alpha) * rest
    return torch.cat([first_n, rotated], dim=-2).to(dtype)


def sample(sampler: str, lead: tuple[int, ...], k: int, n: int, generator: Generators = None,
           *, angle_deg: float | None = None, normalize: bool = False,
           dtype=torch.float32, device=None) -> torch.Tensor:
    """Draw (*lead, k, n) tangents from the named sampler; optionally scale each to unit length."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if sampler == "cone":
        tangents = cone(lead, k, n, angle_deg, generator, dtype=dtype, device=device)
    else:
        if angle_deg is not None:
            raise ValueError(f"angle_deg applies only to the cone sampler, not {sampler!r}")
        draw = {"normal": normal, "rademacher": rademacher, "basis": basis}[sampler]
        tangents = draw(lead, k, n, generator, dtype=dtype, device=device)
    if normalize:
        tangents = tangents / tangents.norm(dim=-1, keepdim=True)
    return tangents


class NormalBuffer:
    """Normal tangents drawn into buffers that successive draws reuse, one per shape: (k, n),
    or (R, k, n) for a sequence of R generators (one draw per generator, as `normal` per run).

    The numbers equal `normal`'s for the same generators; not mapping fresh pages saves up to
    half of the draw for 16 x 1.86M float32 numbers on CPU (docs/benchmarks.md, draw.csv). A
    draw is valid until the next draw of its shape: the caller must not keep it, or a view of
    it, past the step that drew it. Its owner (a training run, a benchmark case) frees the
    buffers by dropping it, or with `release`.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def draw(self, k: int, n: int, generator: Generators = None, dtype=torch.float32,
             device=None) -> torch.Tensor:
        _check(k, n)
        several = not (generator is None or isinstance(generator, torch.Generator))
        runs = len(generator) if several else 0
        device = torch.device(device or "cpu")
        key = (several, k, n, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None or len(buffer) < runs:  # fewer runs later (runs that stopped): a view
            lead = (runs,) if several else ()
            buffer = self._buffers[key] = torch.empty(*lead, k, n, dtype=dtype, device=device)
        if not several:
            return normal((), k, n, generator, dtype=dtype, out=buffer)
        for run, g in enumerate(generator):
            normal((), k, n, g, dtype=dtype, out=buffer[run])
        return buffer[:runs]

    def release(self) -> None:
        """Free the buffers: the next draw allocates its own again."""
        self._buffers.clear()


def generators(seeds: Sequence[int], device=None) -> list[torch.Generator]:
    """One independent, seeded torch.Generator per seed."""
    out = []
    for seed in seeds:
        g = torch.Generator(device=device or "cpu")
        g.manual_seed(int(seed))
        out.append(g)
    return out
