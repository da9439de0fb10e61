"""Batched gradient descent with a constant learning rate and early stopping.

All runs of a call advance together in one tensor: learning rates (L), seeds (S) and, with
`descend_many`, several gradient specs (G) for the same function and start point, as
(L, S, G, n). Per step there is one forward-mode AD pass over every tangent of every spec and
run at once: the test functions are batched over leading dimensions, so a single jvp over
(L, S, K, n) primals and tangents gives all K directional derivatives without a vmap.

Tangents of seed s come from that seed's own generator per spec, drawn in blocks of steps
(the block size depends only on k and n), and are shared by all learning rates (common random
numbers): a run's result does not depend on what else shares the batch. Every aggregation is
linear in the directional derivatives, est = sum_j d_j a_j, so the vectors a_j (tangents
scaled for mean/sum/normalized, rows of the pseudo-inverse for the projection) are computed
once per block of steps, batched, and each step costs one weighted sum.

A run whose value turns NaN or inf is frozen and recorded as "diverged"; a run whose best value
has not improved for `patience` evaluations stops with "no_improvement"; the rest stop at
"max_steps". Stops are exact per step; the loop only checks every few steps whether every run
has stopped, to end early.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import projection_rows
from fgexp.directional import GradientSpec, value_and_grad

STOP_REASONS = ("max_steps", "no_improvement", "diverged")
_MAX_BLOCK_STEPS = 64        # tangents are drawn this many steps ahead (fewer for huge k * n)
_BLOCK_ELEMENTS = 2 ** 22    # bound on k * n * block steps per seed and spec (16 MiB in fp32)
_CHECK_EVERY = 16            # steps between "has every run stopped?" checks


@dataclass
class DescentResult:
    best_value: torch.Tensor        # (L, S) best f value reached per learning rate and seed
    final_value: torch.Tensor       # (L, S) f at the last point reached
    steps: torch.Tensor             # (L, S) int64, gradient steps taken before stopping
    stop_reason: list[list[str]]    # [L][S], a name in STOP_REASONS
    trace: torch.Tensor | None      # (T, L, S) best value so far every `trace_every` steps


def block_steps(k: int, n: int) -> int:
    """Steps of tangents drawn at once: a power of two that depends only on k and n."""
    steps = 1
    while steps < _MAX_BLOCK_STEPS and 2 * steps * k * n <= _BLOCK_ELEMENTS:
        steps *= 2
    return steps


def aggregation_vectors(tangents_kxn: torch.Tensor, aggregation: str) -> torch.Tensor:
    """(..., k, n) vectors a_j such that aggregate(V, d, aggregation) = sum_j d_j a_j."""
    if aggregation == "projection":
        return projection_rows(tangents_kxn)
    k = tangents_kxn.shape[-2]
    vectors = tangents_kxn
    if aggregation.endswith("_normalized"):
        vectors = vectors / tangents_kxn.square().sum(-1, keepdim=True)
    return vectors / k if aggregation.startswith("mean") else vectors


_T = torch.Tensor
# Binary ops whose forward-mode rule, given one operand without a tangent, goes through
# torch's efficient-zero-tensor path: a Python reference implementation costing ~0.5 ms a call.
_MULS = {_T.__mul__, _T.__rmul__, _T.__truediv__, _T.__rtruediv__, _T.mul, _T.div,
         torch.mul, torch.div}
_ADDS = {_T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__, _T.add, _T.sub, torch.add,
         torch.sub}


def _has_tangent(value) -> bool:
    return isinstance(value, torch.Tensor) and fwAD.unpack_dual(value).tangent is not None


class _ConstantsAsDuals(TorchFunctionMode):
    """Give constants in binary arithmetic an explicit zero tangent (same numbers, faster).

    Forward-mode AD in torch treats a Python scalar or a plain tensor combined with a dual
    tensor as having a lazy zero tangent, and products with it take a slow Python path. Making
    the constant a dual tensor with a real zero tangent keeps every op in C++; the primal and
    tangent results are bitwise the same (tested).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if len(args) == 2 and (func in _MULS or func in _ADDS):
            a, b = args
            dual_a, dual_b = _has_tangent(a), _has_tangent(b)
            if dual_a != dual_b:
                dual, other = (a, b) if dual_a else (b, a)
                if isinstance(other, torch.Tensor) or func in _MULS:
                    const = torch.as_tensor(other, dtype=dual.dtype, device=dual.device)
                    const = fwAD.make_dual(const, torch.zeros_like(const))
                    args = (dual, const) if dual_a else (const, dual)
        return func(*args, **kwargs)


class _TangentStream:
    """One spec's tangents for S seeds, drawn block by block from per-seed generators."""

    def __init__(self, spec: GradientSpec, n: int, seeds: Sequence[int], dtype, device):
        self.spec, self.n, self.dtype, self.device = spec, n, dtype, device
        self.generators = tangent_samplers.generators(seeds, device=device)
        self.block = block_steps(spec.k, n)
        self.buffer_sxbxkxn = None
        self.cursor = self.block

    def take(self, steps: int) -> torch.Tensor:
        """The next `steps` steps of tangents, (S, steps, k, n); `steps` divides the block."""
        if self.cursor >= self.block:
            self.buffer_sxbxkxn = tangent_samplers.sample(
                self.spec.sampler, (len(self.generators), self.block), self.spec.k, self.n,
                self.generators, angle_deg=self.spec.angle_deg, dtype=self.dtype,
                device=self.device)
            self.cursor = 0
        out = self.buffer_sxbxkxn[:, self.cursor:self.cursor + steps]
        self.cursor += steps
        return out


class _Batch:
    """Values and gradient estimates of G specs at the (L, S, G, n) iterate.

    The forward-gradient specs occupy slots 0..F-1 and the exact (bp) ones F..G-1.
    """

    def __init__(self, function, specs: list[GradientSpec], n: int, seeds, dtype, device):
        self.function = function
        self.fg_specs = [s for s in specs if not s.is_exact]
        self.n_bp = len(specs) - len(self.fg_specs)
        modes = {s.mode for s in self.fg_specs}
        if len(modes) > 1:
            raise ValueError(f"specs batched together must share one mode, got {sorted(modes)}")
        self.mode = modes.pop() if modes else "forward"
        self.streams = [_TangentStream(s, n, seeds, dtype, device) for s in self.fg_specs]
        self.block = min((s.block for s in self.streams), default=_MAX_BLOCK_STEPS)
        # tangent j (of K in all) belongs to forward-gradient spec spec_K[j]
        spec_K = [f for f, s in enumerate(self.fg_specs) for _ in range(s.k)]
        self.spec_K = torch.tensor(spec_K, dtype=torch.long, device=device)
        firsts = [spec_K.index(f) for f in range(len(self.fg_specs))]
        self.first_tangent_F = torch.tensor(firsts, dtype=torch.long, device=device)

    def refill(self) -> None:
        """Draw the next block of tangents and their aggregation vectors, (S, B, K, n)."""
        tangents, vectors = [], []
        for spec, stream in zip(self.fg_specs, self.streams):
            block_sxbxkxn = stream.take(self.block)
            tangents.append(block_sxbxkxn)
            vectors.append(aggregation_vectors(block_sxbxkxn, spec.aggregation))
        self.tangents_sxbxKxn = torch.cat(tangents, dim=-2)
        self.vectors_sxbxKxn = torch.cat(vectors, dim=-2)

    def jvps(self, x_lxsxfxn: torch.Tensor, tangents_sxKxn: torch.Tensor):
        """Values (L, S, K) at each tangent's iterate and directional derivatives (L, S, K)."""
        x_lxsxKxn = x_lxsxfxn.index_select(2, self.spec_K)
        if self.mode == "simulated":
            value_lxsxK, grad_lxsxKxn = value_and_grad(self.function, x_lxsxKxn)
            return value_lxsxK, (grad_lxsxKxn * tangents_sxKxn).sum(-1)
        v_lxsxKxn = tangents_sxKxn.expand_as(x_lxsxKxn)
        with fwAD.dual_level(), _ConstantsAsDuals():
            out = self.function(fwAD.make_dual(x_lxsxKxn, v_lxsxKxn))
            value_lxsxK, jvps_lxsxK = fwAD.unpack_dual(out)
        if jvps_lxsxK is None:  # f does not depend on x (Rosenbrock with n = 1)
            jvps_lxsxK = torch.zeros_like(value_lxsxK)
        return value_lxsxK, jvps_lxsxK

    def evaluate(self, x_lxsxgxn: torch.Tensor, step_in_block: int):
        """f (L, S, G) and gradient estimates (L, S, G, n) at the current iterates."""
        values, estimates = [], []
        n_fg = len(self.fg_specs)
        if n_fg:
            tangents_sxKxn = self.tangents_sxbxKxn[:, step_in_block]
            vectors_sxKxn = self.vectors_sxbxKxn[:, step_in_block]
            value_lxsxK, jvps_lxsxK = self.jvps(x_lxsxgxn[:, :, :n_fg], tangents_sxKxn)
            weighted_lxsxKxn = jvps_lxsxK.unsqueeze(-1) * vectors_sxKxn
            est_lxsxfxn = torch.zeros_like(x_lxsxgxn[:, :, :n_fg])
            est_lxsxfxn.index_add_(2, self.spec_K, weighted_lxsxKxn)
            values.append(value_lxsxK.index_select(2, self.first_tangent_F))
            estimates.append(est_lxsxfxn)
        if self.n_bp:
            value_bp, grad_bp = value_and_grad(self.function, x_lxsxgxn[:, :, n_fg:])
            values.append(value_bp)
            estimates.append(grad_bp)
        if len(values) == 1:
            return values[0], estimates[0]
        return torch.cat(values, dim=2), torch.cat(estimates, dim=2)


def _check_inputs(x0_n, specs, lrs_lxg, seeds, max_steps, patience, trace_every):
    if x0_n.dim() != 1:
        raise ValueError(f"x0 must be a 1-d start point (n,), got shape {tuple(x0_n.shape)}")
    if not specs:
        raise ValueError("need at least one gradient spec")
    if lrs_lxg.dim() != 2 or lrs_lxg.shape[1] != len(specs) or lrs_lxg.shape[0] < 1:
        raise ValueError(f"learning rates must be (L, G={len(specs)}), got {tuple(lrs_lxg.shape)}")
    if not bool(torch.isfinite(lrs_lxg).all()) or bool((lrs_lxg <= 0).any()):
        raise ValueError("learning rates must be finite and positive")
    if len(seeds) < 1:
        raise ValueError("need at least one seed")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if trace_every is not None and trace_every < 1:
        raise ValueError(f"trace_every must be >= 1 or None, got {trace_every}")


def descend_many(function: Callable[[torch.Tensor], torch.Tensor], x0_n: torch.Tensor,
                 specs: Sequence[GradientSpec], lrs, seeds: Sequence[int], max_steps: int,
                 patience: int = 50, trace_every: int | None = None,
                 progress: bool = False) -> list[DescentResult]:
    """Run G specs from one start point in one batch; lrs is (L, G): column g for spec g.

    Each spec's result equals descend() with that spec alone (same tangents, same steps).
    """
    specs = list(specs)
    lrs_lxg = torch.as_tensor(lrs, dtype=torch.float64)
    if lrs_lxg.dim() == 1:
        lrs_lxg = lrs_lxg.unsqueeze(-1).expand(-1, len(specs))
    _check_inputs(x0_n, specs, lrs_lxg, seeds, max_steps, patience, trace_every)
    dtype, device = x0_n.dtype, x0_n.device
    L, S, G, n = lrs_lxg.shape[0], len(seeds), len(specs), x0_n.shape[0]
    # Internally forward-gradient specs come first, exact ones last; `order` maps back.
    order = sorted(range(G), key=lambda g: specs[g].is_exact)
    batch = _Batch(function, [specs[g] for g in order], n, [int(s) for s in seeds], dtype,
                   device)
    lrs_lxg = lrs_lxg[:, order]
    lr_lx1xgx1 = lrs_lxg.to(dtype=dtype, device=device)[:, None, :, None]

    x = x0_n.detach().expand(L, S, G, n).clone()                 # (L, S, G, n)
    shape = (L, S, G)
    best = torch.full(shape, float("inf"), dtype=dtype, device=device)
    final = torch.full(shape, float("nan"), dtype=dtype, device=device)
    since_best = torch.zeros(shape, dtype=torch.long, device=device)
    steps = torch.full(shape, max_steps, dtype=torch.long, device=device)
    reason = torch.zeros(shape, dtype=torch.long, device=device)  # index into STOP_REASONS
    active = torch.ones(shape, dtype=torch.bool, device=device)
    traces = []

    bar = tqdm(total=max_steps, disable=not progress, desc="descent", leave=False)
    with torch.no_grad():
        for t in range(max_steps):
            if t % batch.block == 0 and batch.fg_specs:
                batch.refill()
            value, est = batch.evaluate(x, t % batch.block)
            improved = active & (value < best)
            best = torch.where(improved, value, best)
            since_best = torch.where(improved, 0, since_best + 1)
            not_finite = ~torch.isfinite(value)
            stop = active & (not_finite | (since_best >= patience))
            reason = torch.where(stop, torch.where(not_finite, 2, 1), reason)
            steps = torch.where(stop, t, steps)
            final = torch.where(active, value, final)
            active = active & ~stop
            x = torch.where(active.unsqueeze(-1), x - lr_lx1xgx1 * est, x)
            if trace_every is not None and t % trace_every == 0:
                traces.append(best.clone())
            if (t + 1) % _CHECK_EVERY == 0:
                bar.update(_CHECK_EVERY)
                if not bool(active.any()):
                    break
        else:
            # Runs that used every step: the last update's point counts too.
            value = function(x)
            not_finite = ~torch.isfinite(value)
            best = torch.where(active & (value < best), value, best)
            reason = torch.where(active & not_finite, 2, reason)
            final = torch.where(active, value, final)
    bar.close()
    trace = torch.stack(traces) if traces else None               # (T, L, S, G)
    slot = {g: i for i, g in enumerate(order)}
    return [_result(best, final, steps, reason, trace, slot[g]) for g in range(G)]


def _result(best, final, steps, reason, trace, g: int) -> DescentResult:
    codes = reason[:, :, g].tolist()
    return DescentResult(
        best_value=best[:, :, g].clone(), final_value=final[:, :, g].clone(),
        steps=steps[:, :, g].clone(),
        stop_reason=[[STOP_REASONS[c] for c in row] for row in codes],
        trace=None if trace is None else trace[..., g].clone())


def descend(function: Callable[[torch.Tensor], torch.Tensor], x0_n: torch.Tensor,
            spec: GradientSpec, lrs, seeds: Sequence[int], max_steps: int, patience: int = 50,
            trace_every: int | None = None, progress: bool = False) -> DescentResult:
    """Gradient descent of L learning rates x S seeds for one spec, all in one batch.

    function: batched (..., n) -> (...); x0_n: (n,) start; lrs: L floats; seeds: S ints.
    """
    lrs_l = torch.as_tensor(lrs, dtype=torch.float64).reshape(-1)
    return descend_many(function, x0_n, [spec], lrs_l.unsqueeze(-1), seeds, max_steps,
                        patience, trace_every, progress)[0]
