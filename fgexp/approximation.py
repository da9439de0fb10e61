"""Approximation quality of forward gradients (paper Sections 4.1 and 4.3).

For a fixed true gradient g, every setting (n, k, method) draws `samples` independent sets of
k tangents and records, per draw, the cosine similarity cos(estimate, g) and the norm ratio
|estimate| / |g|. Two engines give the same distribution:

- "brute": draw the (samples, k, n) tangents and aggregate them with fgexp.aggregate, batched
  over samples in chunks. It is the reference, and the only engine for the cone sampler.
- "reduced": exact simulation in O(k) numbers per draw instead of O(k n), for Gaussian
  tangents. Both statistics are rotation invariant, so rotate g to |g| e_1 and split each
  tangent v_i = (a_i, w_i) with a_i ~ N(0, 1) and w_i = rho_i u_i, rho_i ~ chi_{n-1},
  u_i uniform on the unit sphere of R^{n-1}, all independent.
  * sum and normalized sum: est / |g| = sum_i c_i v_i with c_i = a_i (sum) or a_i / |v_i|^2
    (normalized). Its first coordinate is sum_i c_i a_i; the rest is sum_i c_i rho_i u_i, a
    random walk with uniform directions. Both walks share the u_i, so we track the 2x2 Gram
    matrix of the two partial sums: the new u_i's coordinates along an orthonormal basis of
    their span are the first two coordinates of a uniform unit vector, independent of the past.
  * projection: Gram-Schmidt one tangent at a time. After j - 1 tangents the residual
    e_1 - P e_1 lies in the (n - j + 1)-dim complement of their span, where the j-th
    orthonormalized tangent is uniform; so 1 - |P_j e_1|^2 = prod_{i<=j} (1 - t_i^2) with t_i
    the first coordinate of a uniform unit vector in R^{n-i+1}.
  The theory (fgexp.theory) is not used here; tests compare both engines with it and with
  each other.

Streams: every (sampler, n, k, method group, angle) setting has its own numpy SeedSequence
derived from the run seed, so no stream is shared between settings. The four conical methods
(sum, mean and their normalized variants) share one group: they are evaluated on the same
tangents, as the brute engine naturally does. "single" is its own group with k = 1, and the
projection is its own group (with k > n it uses n tangents, and its cosine is 1).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fgexp.aggregate import aggregate
from fgexp.config import coerce, grid_fields
from fgexp.paper import CONE_ANGLES
from fgexp.tangents import cone as cone_tangents

METHODS = ("single", "sum", "mean", "sum_normalized", "mean_normalized", "projection")
CONICAL = ("sum", "mean", "sum_normalized", "mean_normalized")
ENGINES = ("reduced", "brute")
SAMPLERS = ("normal", "cone")
COLUMNS = ("n", "k", "method", "sampler", "angle_deg", "samples", "seed", "cos_mean", "cos_std",
           "cos_ci95", "norm_ratio_mean", "norm_ratio_std", "norm_ratio_ci95")
KEY_COLUMNS = ("n", "k", "method", "sampler", "angle_deg")

_GROUP_ID = {"single": 0, "conical": 1, "projection": 2}
_SAMPLER_ID = {"normal": 0, "cone": 1}
# Elements of one brute-force tangent chunk (float64): 2^22 of them is 32 MiB.
_CHUNK_ELEMENTS = 2 ** 22


@dataclasses.dataclass(frozen=True)
class ApproximationConfig:
    n: tuple[int, ...]            # gradient dimensions, Gaussian tangents (Figure 3)
    k: tuple[int, ...]            # numbers of tangents; the projection uses min(k, n) of them
    methods: tuple[str, ...]      # single (k = 1 only), sum, mean, *_normalized, projection
    samples: int                  # independent tangent draws per setting
    seed: int                     # run seed; each setting derives its own stream from it
    cone_n: tuple[int, ...]       # gradient dimensions of the cone grid (Figure 5a)
    cone_k: tuple[int, ...]       # numbers of cone tangents
    cone_angles: tuple[float, ...]  # degrees between every further tangent and the first
    cone_methods: tuple[str, ...]   # methods on cone tangents
    engine: str = "reduced"       # reduced: exact O(k) simulation; brute: full n-dim tangents


PRESETS = {
    "paper": ApproximationConfig(
        n=tuple(2 ** e for e in range(15)), k=tuple(2 ** e for e in range(11)),
        methods=METHODS, samples=1000, seed=0,
        cone_n=(64,), cone_k=(4, 16, 64), cone_angles=CONE_ANGLES,
        cone_methods=("mean", "projection")),
    "smoke": ApproximationConfig(
        n=(1, 4, 16, 64), k=(1, 4, 16, 128), methods=METHODS, samples=200, seed=0,
        cone_n=(16,), cone_k=(4, 16), cone_angles=(30.0, 90.0),
        cone_methods=("mean", "projection")),
}
GRID = ("n", "k", "methods", "angles")  # override names that pick the normal or the cone grid


def resolve(preset: ApproximationConfig, overrides: Mapping[str, object],
            cone: bool = False) -> ApproximationConfig:
    """The preset with overrides named n, k, methods, angles, samples, seed, engine; with
    `cone`, n, k, methods and angles set the cone grid. Lists become tuples, strings are read."""
    fields = grid_fields(overrides, GRID, cone)
    return coerce(preset, {name: tuple(v) if isinstance(v, list) else v
                           for name, v in fields.items()})


def validate(config: ApproximationConfig, cone: bool = False) -> None:
    """Every bad setting of the chosen grid as one ValueError, before any compute."""
    ns, ks = (config.cone_n, config.cone_k) if cone else (config.n, config.k)
    for label, values in (("n", ns), ("k", ks)):
        if not values or min(values) < 1:
            raise ValueError(f"every {label} must be >= 1, got {list(values)}")
    lists = {"n": ns, "k": ks, "methods": config.cone_methods if cone else config.methods}
    if cone:
        lists["angles"] = config.cone_angles
    for label, values in lists.items():
        if len(set(values)) != len(values):  # repeated settings would repeat CSV keys
            raise ValueError(f"--{label} lists a value twice: {list(values)}")
    if config.samples < 2:
        raise ValueError(f"--samples must be >= 2 (spread and CI), got {config.samples}")
    if config.seed < 0:  # numpy seed sequences take non-negative integers only
        raise ValueError(f"--seed must be >= 0, got {config.seed}")
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; allowed: {', '.join(ENGINES)}")
    if cone:
        check_methods(config.cone_methods, "cone")
        if not config.cone_angles or not all(0 < a <= 90 for a in config.cone_angles):
            raise ValueError(f"cone angles must lie in (0, 90], got {list(config.cone_angles)}")
        if min(ns) < 2 and max(ks) > 1:
            raise ValueError("the cone sampler needs n >= 2 for k > 1")
    else:
        check_methods(config.methods, "normal")


def cells(config: ApproximationConfig, cone: bool = False) -> list[tuple[str, dict]]:
    """(cell id, run_cell arguments): one cell per n, and per angle for cones."""
    common = dict(samples=config.samples, seed=config.seed, engine=config.engine)
    if not cone:
        return [(f"normal/n={n}", dict(n=n, ks=config.k, methods=config.methods,
                                       sampler="normal", angle_deg=None, **common))
                for n in config.n]
    return [(f"cone/n={n}/angle={a:g}", dict(n=n, ks=config.cone_k, methods=config.cone_methods,
                                             sampler="cone", angle_deg=float(a), **common))
            for n in config.cone_n for a in config.cone_angles]


def check_methods(methods: Sequence[str], sampler: str = "normal") -> None:
    allowed = METHODS if sampler == "normal" else METHODS[1:]
    bad = [m for m in methods if m not in allowed]
    if bad or not methods:
        raise ValueError(f"unknown method {bad[0] if bad else '(none)'!r} for the {sampler} "
                         f"sampler; allowed: {', '.join(allowed)}")


def group_of(method: str) -> str:
    return "conical" if method in CONICAL else method


def setting_seed(run_seed: int, sampler: str, n: int, k: int, group: str,
                 angle_deg: float | None = None) -> np.random.SeedSequence:
    """The setting's own seed sequence: same run seed and setting, same stream; else disjoint."""
    angle_code = 0 if angle_deg is None else int(round(float(angle_deg) * 1000))
    return np.random.SeedSequence(int(run_seed), spawn_key=(
        _SAMPLER_ID[sampler], int(n), int(k), _GROUP_ID[group], angle_code))


def torch_generator(seq: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]) >> 1)


# ---- statistics ---------------------------------------------------------------------------

def summarize(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, sample standard deviation, half-width of the Student-t 95% CI of the mean)."""
    from scipy.stats import t as student_t
    values = np.asarray(values, dtype=np.float64)
    count = values.size
    mean = float(values.mean())
    if count < 2:
        return mean, 0.0, 0.0
    std = float(values.std(ddof=1))
    return mean, std, float(student_t.ppf(0.975, count - 1) * std / math.sqrt(count))


def cos_and_ratio(estimate_sxn: torch.Tensor, g_n: torch.Tensor):
    """Per-sample cosine to g and |estimate| / |g|, as float64 numpy arrays."""
    est_norm_s = estimate_sxn.norm(dim=-1)
    g_norm = g_n.norm()
    cos_s = (estimate_sxn @ g_n) / (est_norm_s * g_norm)
    return cos_s.double().numpy(), (est_norm_s / g_norm).double().numpy()


# ---- reduced (exact, low-dimensional) engine -----------------------------------------------

def _chi2(rng: np.random.Generator, df, size) -> np.ndarray:
    """chi^2 draws that allow df = 0 (the constant 0), unlike Generator.chisquare."""
    return rng.gamma(np.asarray(df, dtype=np.float64) / 2, 2.0, size)


def _sphere_coords(rng: np.random.Generator, dim: int, size: tuple[int, ...]) -> np.ndarray:
    """First two coordinates of uniform unit vectors in R^dim (zeros beyond dim): size + (2,)."""
    out = np.zeros(size + (2,))
    if dim == 0:
        return out
    lead = min(dim, 2)
    x = rng.standard_normal(size + (lead,))
    norm = np.sqrt(np.square(x).sum(-1) + _chi2(rng, dim - lead, size))
    out[..., :lead] = x / norm[..., None]
    return out


def reduced_conical(n: int, k: int, samples: int, rng: np.random.Generator) -> dict:
    """Exact per-sample (cos, norm ratio) of sum and normalized sum, from O(k) numbers each."""
    m = n - 1  # dimension of the complement of g
    a_sxk = rng.standard_normal((samples, k))
    rho2_sxk = _chi2(rng, m, (samples, k))
    y_sxkx2 = _sphere_coords(rng, m, (samples, k))
    coef = {"sum": a_sxk, "sum_normalized": a_sxk / (np.square(a_sxk) + rho2_sxk)}
    # c_i rho_i: the step lengths of the two walks in the complement.
    step_s = coef["sum"] * np.sqrt(rho2_sxk)
    step_t = coef["sum_normalized"] * np.sqrt(rho2_sxk)
    # Walk S lies along the basis vector e; walk T = t1 e + t2 f.
    s1 = np.zeros(samples)
    t1 = np.zeros(samples)
    t2 = np.zeros(samples)
    for i in range(k):
        y1, y2 = y_sxkx2[:, i, 0], y_sxkx2[:, i, 1]
        c, d = step_s[:, i], step_t[:, i]
        u_s, u_t = s1 * y1, t1 * y1 + t2 * y2  # <u_i, S>, <u_i, T>
        ss = s1 * s1 + 2 * c * u_s + c * c
        tt = t1 * t1 + t2 * t2 + 2 * d * u_t + d * d
        st = s1 * t1 + c * u_t + d * u_s + c * d
        s1 = np.sqrt(ss)
        t1 = np.divide(st, s1, out=np.sqrt(tt), where=s1 > 0)
        t2 = np.sqrt(np.maximum(tt - t1 * t1, 0.0))
    rest = {"sum": s1, "sum_normalized": np.sqrt(t1 * t1 + t2 * t2)}
    out = {}
    for name, coef_sxk in coef.items():
        first_s = (coef_sxk * a_sxk).sum(-1)
        norm_s = np.hypot(first_s, rest[name])
        out[name] = (first_s / norm_s, norm_s)
    return out


def reduced_projection(n: int, k: int, samples: int, rng: np.random.Generator):
    """Exact per-sample |P_U e_1| (cosine = norm ratio), by Gram-Schmidt one tangent at a time."""
    steps = min(k, n)
    dims_j = n - np.arange(steps)  # dimension of the complement when tangent j arrives
    x_sxj = rng.standard_normal((samples, steps))
    tail_sxj = _chi2(rng, dims_j - 1, (samples, steps))
    t2_sxj = np.square(x_sxj) / (np.square(x_sxj) + tail_sxj)
    with np.errstate(divide="ignore"):  # t = 1 at j = n: log 0 = -inf, residual 0, cos 1
        residual_s = np.exp(np.log1p(-np.minimum(t2_sxj, 1.0)).sum(-1))
    cos_s = np.sqrt(1.0 - residual_s)
    return cos_s, cos_s.copy()


# ---- brute-force engine --------------------------------------------------------------------

def _chunks(samples: int, k: int, n: int):
    size = max(1, min(samples, _CHUNK_ELEMENTS // (k * n)))
    for start in range(0, samples, size):
        yield min(size, samples - start)


def brute_group(n: int, k: int, methods: Sequence[str], samples: int, gen: torch.Generator,
                sampler: str = "normal", angle_deg: float | None = None) -> dict:
    """Per-sample (cos, norm ratio) of each method, from full (chunk, k, n) tangents."""
    g_n = torch.ones(n, dtype=torch.float64)
    k_used = min(k, n) if methods == ["projection"] and sampler == "normal" else k
    parts = {m: ([], []) for m in methods}
    for size in _chunks(samples, k_used, n):
        if sampler == "cone":
            tangents = cone_tangents((size,), k_used, n, angle_deg, gen, dtype=torch.float64)
        else:
            tangents = torch.randn(size, k_used, n, generator=gen, dtype=torch.float64)
        jvps_sxk = tangents @ g_n
        for method in methods:
            if method == "projection" and k_used > n:  # cone with k > n: n tangents suffice
                est = aggregate(tangents[:, :n], jvps_sxk[:, :n], "projection")
            else:
                est = aggregate(tangents, jvps_sxk, "mean" if method == "single" else method)
            cos_s, ratio_s = cos_and_ratio(est, g_n)
            parts[method][0].append(cos_s)
            parts[method][1].append(ratio_s)
    return {m: (np.concatenate(c), np.concatenate(r)) for m, (c, r) in parts.items()}


def loop_baseline(n: int, k: int, method: str, samples: int, gen: torch.Generator):
    """The straightforward reference: one sample at a time (benchmarks only)."""
    g_n = torch.ones(n, dtype=torch.float64)
    k_used = min(k, n) if method == "projection" else k
    cos, ratio = [], []
    for _ in range(samples):
        tangents_kxn = torch.randn(k_used, n, generator=gen, dtype=torch.float64)
        est_n = aggregate(tangents_kxn, tangents_kxn @ g_n,
                          "mean" if method == "single" else method)
        cos.append(float(est_n @ g_n / (est_n.norm() * g_n.norm())))
        ratio.append(float(est_n.norm() / g_n.norm()))
    return np.array(cos), np.array(ratio)


# ---- one setting, one cell -----------------------------------------------------------------

def sample_group(n: int, k: int, group: str, methods: Sequence[str], samples: int,
                 seq: np.random.SeedSequence, engine: str = "reduced", sampler: str = "normal",
                 angle_deg: float | None = None) -> dict:
    """method -> (cos_s, norm_ratio_s) for the methods of one group at one (n, k)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    if engine == "brute" or sampler == "cone":
        values = brute_group(n, k, list(methods), samples, torch_generator(seq),
                             sampler, angle_deg)
    elif group == "projection":
        values = {"projection": reduced_projection(n, k, samples, np.random.default_rng(seq))}
    else:
        values = reduced_conical(n, k, samples, np.random.default_rng(seq))
        if group == "single":
            values = {"single": values["sum"]}
    # mean = sum / k: same direction, norm ratio divided by k (likewise the normalized pair).
    for mean, total in (("mean", "sum"), ("mean_normalized", "sum_normalized")):
        if total in values and mean not in values:
            values[mean] = (values[total][0], values[total][1] / k)
    return {m: values[m] for m in methods if m in values}


def run_cell(n: int, ks: Sequence[int], methods: Sequence[str], samples: int, seed: int,
             engine: str = "reduced", sampler: str = "normal",
             angle_deg: float | None = None) -> tuple[list[dict], dict]:
    """All rows of one n (and angle): CSV rows plus {(n, k, method): (cos_s, ratio_s)} raw values."""
    rows, raw = [], {}
    settings = [(1, "single")] if "single" in methods else []
    for k in ks:
        settings += [(k, group) for group in ("conical", "projection")
                     if any(group_of(m) == group for m in methods)]
    for k, group in settings:
        wanted = [m for m in methods if group_of(m) == group]
        seq = setting_seed(seed, sampler, n, k, group, angle_deg)
        values = sample_group(n, k, group, wanted, samples, seq, engine, sampler, angle_deg)
        for method in wanted:
            cos_s, ratio_s = values[method]
            cos_stats, ratio_stats = summarize(cos_s), summarize(ratio_s)
            rows.append(dict(zip(COLUMNS, (
                n, k, method, sampler, angle_deg, samples, seed, *cos_stats, *ratio_stats))))
            raw[(n, k, method, angle_deg)] = (cos_s, ratio_s)
    return rows, raw
