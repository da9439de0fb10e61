"""The paper's vocabulary, defined once: gradient labels, the gradient lists of its figures,
cone angles, closed-form function and model names, and the one parser of gradient tokens.

A gradient token is "bp" or "label:k" (e.g. "frog:4"); a bare forward-gradient label means
k = 1, the paper's single-tangent baseline when the label is fg-mean. Kept free of torch so
that plotting and configuration load quickly.
"""
from __future__ import annotations

from collections.abc import Sequence

# Gradient labels of the paper's tables -> aggregation in fgexp.aggregate (None: exact gradient).
GRADIENTS = {
    "bp": None,
    "fg-mean": "mean",
    "frog": "projection",
    "fg-sum": "sum",
    "fg-mean-normalized": "mean_normalized",
    "fg-sum-normalized": "sum_normalized",
}
# Figures 4 and 6, Section 4.5: bp; single tangent; mean and projection with k = 2, 4, 16.
PAPER_GRADIENTS = ("bp", "fg-mean:1", "fg-mean:2", "fg-mean:4", "fg-mean:16",
                   "frog:2", "frog:4", "frog:16")
# Figure 5b: cone tangents with k = 16 and 64.
CONE_GRADIENTS = ("fg-mean:16", "fg-mean:64", "frog:16", "frog:64")
# Section 4.3: degrees between every further tangent and the first.
CONE_ANGLES = (15.0, 30.0, 45.0, 60.0, 75.0, 90.0)
# Figure 4's dimensions, 1 .. 1024.
PAPER_NS = tuple(2 ** e for e in range(11))
# Closed-form test functions (fgexp.functions), in the paper's order.
FUNCTIONS = ("sphere", "rosenbrock", "styblinski-tang")
# Network models (fgexp.nn.models.build).
MODELS = ("fc", "resnet18", "vit")
# Those with BatchNorm, whose examples are coupled in train mode (their activity tangent
# scheme matters: docs/network_gradients.md).
BATCHNORM_MODELS = ("resnet18",)
# The paper's ViT patch size in pixels (Section 4.5); the cpu preset's ViT uses larger ones.
VIT_PATCH = 4


def parse_gradient(token: str) -> tuple[str, int | None]:
    """'frog:4' -> ('frog', 4); 'bp' -> ('bp', None); 'fg-mean' -> ('fg-mean', 1).

    Raises ValueError with one line naming the token for an unknown label or a bad k.
    """
    label, sep, k = token.strip().partition(":")
    if label not in GRADIENTS:
        raise ValueError(f"unknown gradient {label!r} in {token!r}; allowed: "
                         f"{', '.join(GRADIENTS)}")
    if label == "bp":
        if sep:
            raise ValueError(f"bp takes no number of tangents, got {token!r}")
        return label, None
    try:
        k_value = int(k) if sep else 1
    except ValueError:
        raise ValueError(f"expected a gradient like '{label}:4', got {token!r}") from None
    if k_value < 1:
        raise ValueError(f"k must be >= 1, got {token!r}")
    return label, k_value


def gradient_token(label: str, k: int | None) -> str:
    """The inverse of parse_gradient: ('frog', 4) -> 'frog:4', ('bp', None) -> 'bp'."""
    return label if label == "bp" else f"{label}:{k}"


def check_gradients(tokens: Sequence[str]) -> tuple[str, ...]:
    """Tokens in their canonical form, duplicates dropped; ValueError on the first bad one."""
    return tuple(dict.fromkeys(gradient_token(*parse_gradient(t)) for t in tokens))


def with_k(tokens: Sequence[str] | None, ks: Sequence[int] | None,
           default: Sequence[str]) -> tuple[str, ...]:
    """The gradients that --gradients TOKENS and --k KS ask for, in every script.

    bp stays bp; a token with its own ':k' keeps it; a bare label takes every k of `ks`
    (k = 1 without `ks`). Without tokens: `default` (the preset's list) as it is, or, with
    `ks`, its labels, each with every k of `ks`. E.g. (None, [2, 8], paper list) -> bp,
    fg-mean:2, fg-mean:8, frog:2, frog:8; (['bp', 'fg-mean:1', 'frog'], [4], ...) -> bp,
    fg-mean:1, frog:4. Canonical tokens, duplicates dropped; ValueError on a bad one.
    """
    if ks is not None and (not ks or min(ks) < 1):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if tokens is None:
        if not ks:
            return check_gradients(default)
        tokens = dict.fromkeys(parse_gradient(t)[0] for t in default)
    out = []
    for token in tokens:
        label, k = parse_gradient(token)
        explicit = label == "bp" or ":" in token
        out += [gradient_token(label, k)] if explicit or not ks else [f"{label}:{j}" for j in ks]
    return check_gradients(out)
