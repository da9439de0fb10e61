"""Directional derivatives along k tangents, and the forward-gradient estimate for a spec.

Two ways to get d_i = <grad f, v_i>:
- forward: forward-mode AD (torch.func.jvp), vmapped over the k tangents and chunked to bound
  memory. No backward pass happens anywhere in this path; it even runs under torch.no_grad().
- simulated: backprop to the exact gradient, then d = V @ grad. Faster on some hardware, and
  the same numbers for the same tangents (tested).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad_and_value, jvp, vmap

from fgexp import tangents as tangent_samplers
from fgexp.aggregate import aggregate
from fgexp.paper import GRADIENTS  # label -> aggregation; importable from here too

MODES = ("forward", "simulated")
PERTURBATIONS = ("weight", "activity")  # networks only: tangents over parameters or block outputs


@dataclass(frozen=True)
class GradientSpec:
    """Which gradient to compute and how."""
    gradient: str = "bp"            # a key of GRADIENTS; "fg-mean" with k = 1 is the baseline
    k: int = 1                      # number of tangents per step
    sampler: str = "normal"         # a name in fgexp.tangents.SAMPLERS
    mode: str = "forward"           # "forward" (forward-mode AD) or "simulated" (V @ grad)
    angle_deg: float | None = None  # only for the cone sampler
    chunk_size: int | None = None   # tangents per vmapped jvp call; None: all k at once
    perturbation: str = "weight"    # networks only: "weight" or "activity"

    def __post_init__(self):
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; allowed: {', '.join(GRADIENTS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.sampler not in tangent_samplers.SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; allowed: "
                             f"{', '.join(tangent_samplers.SAMPLERS)}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.sampler == "cone" and not (self.angle_deg and 0 < self.angle_deg <= 90):
            raise ValueError(f"cone angle must lie in (0, 90] degrees, got {self.angle_deg!r}")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {self.perturbation!r}; allowed: "
                             f"{', '.join(PERTURBATIONS)}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size!r}")

    @property
    def aggregation(self) -> str | None:
        return GRADIENTS[self.gradient]

    @property
    def is_exact(self) -> bool:
        return self.gradient == "bp"


def jvps_forward(f: Callable[[torch.Tensor], torch.Tensor], x_n: torch.Tensor,
                 tangents_kxn: torch.Tensor, chunk_size: int | None = None):
    """Value f(x) (...) and directional derivatives (..., k) by forward-mode AD.

    f maps (..., n) -> (...); x is (..., n) and tangents (..., k, n). The primal is computed
    once; only the tangent part is batched over the k tangents.
    """
    if tangents_kxn.shape[:-2] + tangents_kxn.shape[-1:] != x_n.shape:
        raise ValueError(f"tangents {tuple(tangents_kxn.shape)} do not fit x {tuple(x_n.shape)}: "
                         "expected (..., k, n) for x of shape (..., n)")
    x_n = x_n.contiguous()  # expanded inputs (stride 0) cannot carry a dual tangent
    kdim = tangents_kxn.dim() - 2

    def along(v_n):
        return jvp(f, (x_n,), (v_n,))

    batched = vmap(along, in_dims=kdim, out_dims=(None, -1))
    k = tangents_kxn.shape[kdim]
    step = chunk_size or k
    parts = [batched(chunk) for chunk in tangents_kxn.split(step, dim=kdim)]
    return parts[0][0], torch.cat([jvps for _, jvps in parts], dim=-1)


def value_and_grad(f: Callable[[torch.Tensor], torch.Tensor], x_n: torch.Tensor):
    """Value f(x) (...) and exact gradient (..., n) by backprop; f must be batched elementwise."""
    x = x_n.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = f(x)
        (grad_n,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad_n


def jvps_simulated(grad_n: torch.Tensor, tangents_kxn: torch.Tensor) -> torch.Tensor:
    """d = V @ grad: (..., n) and (..., k, n) -> (..., k)."""
    return (tangents_kxn @ grad_n.unsqueeze(-1)).squeeze(-1)


def estimate(f: Callable[[torch.Tensor], torch.Tensor], x_n: torch.Tensor, spec: GradientSpec,
             generator: tangent_samplers.Generators = None, tangents_kxn: torch.Tensor | None = None):
    """Value f(x) and the gradient estimate (..., n) that `spec` asks for.

    Tangents are drawn from spec.sampler with `generator` unless given explicitly.
    """
    if spec.is_exact:
        return value_and_grad(f, x_n)
    if tangents_kxn is None:
        tangents_kxn = tangent_samplers.sample(
            spec.sampler, tuple(x_n.shape[:-1]), spec.k, x_n.shape[-1], generator,
            angle_deg=spec.angle_deg, dtype=x_n.dtype, device=x_n.device)
    if spec.mode == "forward":
        value, jvps_k = jvps_forward(f, x_n, tangents_kxn, spec.chunk_size)
    else:
        value, grad_n = value_and_grad(f, x_n)
        jvps_k = jvps_simulated(grad_n, tangents_kxn)
    return value, aggregate(tangents_kxn, jvps_k, spec.aggregation)


# Parameter dicts (networks): one global tangent over all parameters, flattened.

def flat_size(params: Mapping[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def unflatten(flat_kxn: torch.Tensor, params: Mapping[str, torch.Tensor]) -> dict:
    """Split a (..., n) global vector into a dict of (..., *param.shape) views."""
    lead = flat_kxn.shape[:-1]
    out, start = {}, 0
    for name, p in params.items():
        out[name] = flat_kxn[..., start:start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    if start != flat_kxn.shape[-1]:
        raise ValueError(f"global vector has {flat_kxn.shape[-1]} entries, parameters {start}")
    return out


def flatten(tensors: Mapping[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
    """Concatenate a dict of (*lead, *shape) tensors into (*lead, n)."""
    parts = [t.reshape(*t.shape[:lead], -1) for t in tensors.values()]
    return torch.cat(parts, dim=-1)


def jvps_params_forward(loss_fn: Callable[[dict], torch.Tensor], params: Mapping[str, torch.Tensor],
                        tangents_kxn: torch.Tensor, chunk_size: int | None = None):
    """Loss and its directional derivatives (k,) along global tangents (k, n) over a param dict.

    The primals are views of one flat copy of the parameters. A tangent that is a view of a
    larger tensor enters forward-mode AD as it is only when its primal has the same layout;
    otherwise torch copies it into a fresh zero tensor, parameter by parameter, which costs
    more than the one flat copy (for a single tangent, with no vmap, nothing is copied at all).
    """
    primals = {name: p.detach() for name, p in params.items()}
    if len({(p.dtype, p.device) for p in primals.values()}) == 1:  # one flat tensor can hold them
        primals = unflatten(flatten(primals), primals)

    def along(v_n):
        return jvp(loss_fn, (primals,), (unflatten(v_n, primals),))

    if len(tangents_kxn) == 1:  # nothing to batch: vmap would only turn matmuls into bmm
        value, jvp_1 = along(tangents_kxn[0])
        return value, jvp_1.reshape(1)
    batched = vmap(along, in_dims=0, out_dims=(None, 0))
    parts = [batched(chunk) for chunk in tangents_kxn.split(chunk_size or len(tangents_kxn))]
    return parts[0][0], torch.cat([jvps for _, jvps in parts])


def module_loss(module: torch.nn.Module, loss: Callable[[torch.Tensor], torch.Tensor], *inputs):
    """A function of a parameter dict: loss(functional_call(module, params, inputs))."""
    def loss_fn(params):
        return loss(functional_call(module, params, inputs))
    return loss_fn


def params_grad(loss_fn: Callable[[dict], torch.Tensor], params: Mapping[str, torch.Tensor]):
    """Loss and exact gradient dict by backprop."""
    primals = {name: p.detach() for name, p in params.items()}
    with torch.enable_grad():
        grads, value = grad_and_value(loss_fn)(primals)
    return value, grads
