"""Learning rates without a search: each forward gradient's rate predicted from bp's.

Every rule is the one-step optimum on f(x) = |x|^2 / 2 (Hessian I), written as a factor of bp's
rate. Taking one step x' = x - lr g~ with g = grad f(x):

    E f(x') = f(x) - lr E<g~, g> + lr^2 / 2 E|g~|^2   =>   lr* = E<g~, g> / E|g~|^2,

and bp's optimum is lr_bp = 1 (g~ = g). On a smooth f with curvature bound L the descent lemma
gives the same factor of 1/L, so lr = lr_bp * E<g~, g> / E|g~|^2 for any reference rate.
Shared assumptions: (A1) curvature isotropic in the directions the tangents reach, or more
exactly, the gradient's Rayleigh quotient g'Hg / |g|^2 equals the mean eigenvalue tr(H) / n
(then each rule is exact on a diagonal quadratic too; otherwise n is replaced by the effective
dimension tr(H) |g|^2 / g'Hg); (A2) the searched bp rate is at its one-step optimum, not merely
somewhere on a plateau of rates that all converge; (A3) one step tells the whole run's story.
Below, v_i are the k tangents, d_i = <v_i, g>, and E v v' = I for normal and Rademacher.

For networks n is the dimension that is perturbed (`network_dimension`): the parameter count
for weight perturbation, the activation count per example (every block's output) for activity
perturbation. There the rules are heuristics: the error that reaches the weights through the
block-local VJPs is not isotropic, and a tangent shared across the batch (or independent per
example) changes the variance the rule assumes.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

from fgexp.lr.table import canonical
from fgexp.paper import GRADIENTS

AGGREGATIONS = ("sum", "mean", "sum_normalized", "mean_normalized", "projection")
SAMPLERS = ("normal", "rademacher", "cone")


# ---------------------------------------------------------------------------------------------
# The factors lr / lr_bp, one pure function per (aggregation, sampler)

def mean_normal(n: int, k: int) -> float:
    """g~ = (1/k) sum v_i d_i, v_i ~ N(0, I). E<g~, g> = |g|^2. E|v d|^2 = E d^2 |v|^2 =
    (n + 2)|g|^2 (Isserlis), cross terms E<v_i d_i, v_j d_j> = |g|^2, so E|g~|^2 =
    ((n + 2) + (k - 1)) / k |g|^2 = (n + k + 1) / k |g|^2  =>  k / (n + k + 1)."""
    return k / (n + k + 1)


def mean_rademacher(n: int, k: int) -> float:
    """As mean_normal, but |v|^2 = n exactly, so E d^2 |v|^2 = n |g|^2 and E|g~|^2 =
    (n + k - 1) / k |g|^2  =>  k / (n + k - 1)."""
    return k / (n + k - 1)


def mean_unit(n: int, k: int) -> float:
    """Unit tangents u_i, independent, E u u' = I / n (normalized normal or Rademacher):
    E<g~, g> = |g|^2 / n, E|u d|^2 = E d^2 = |g|^2 / n, cross terms |g|^2 / n^2, so
    E|g~|^2 = (n + k - 1) / (k n^2) |g|^2  =>  k n / (n + k - 1)."""
    return k * n / (n + k - 1)


def mean_cone(n: int, k: int, angle_deg: float) -> float:
    """Unit cone tangents (fgexp.tangents.cone): u_1 uniform on the sphere, u_i = c u_1 + s w_i
    (c, s = cos, sin of the angle), w_i unit, orthogonal to u_1, independent and uniform in
    its complement given u_1 (assumed as the sampler draws them). Each u_i is marginally
    uniform, so E<g~, g> = |g|^2 / n at every angle. Pairs: E d_1 d_i <u_1, u_i> = c^2 |g|^2/n
    (2(k-1) ordered pairs), E d_i d_j <u_i, u_j> = (c^4 + s^4 / (n - 1)) |g|^2 / n for
    i != j >= 2 ((k-1)(k-2) pairs), k diagonal terms |g|^2 / n  =>
    k^2 / (k + 2(k-1)c^2 + (k-1)(k-2)(c^4 + s^4 / (n-1))).  90 deg, k = 2: 2; 0 deg: 1."""
    if k == 1:
        return 1.0
    if n < 2:
        raise ValueError("cone tangents need n >= 2 for k > 1")
    c2 = math.cos(math.radians(angle_deg)) ** 2
    s2 = 1.0 - c2
    pairs = 2 * (k - 1) * c2 + (k - 1) * (k - 2) * (c2 * c2 + s2 * s2 / (n - 1))
    return k * k / (k + pairs)


def projection(n: int, k: int) -> float:
    """P g, P the orthogonal projection onto span(v_1..v_k): <P g, g> = |P g|^2 for every draw,
    so the ratio is 1 for any sampler, k and n (here even per draw, not only in expectation;
    E|P g|^2 = (k / n)|g|^2 for a uniformly random span cancels)  =>  1."""
    return 1.0


def _summed(mean_rule: Callable[..., float]) -> Callable[..., float]:
    """The sum is k times the mean: E<g~, g> grows by k, E|g~|^2 by k^2  =>  mean's / k."""
    def rule(n: int, k: int, *args) -> float:
        return mean_rule(n, k, *args) / k
    rule.__doc__ = f"{mean_rule.__name__} / k (sum = k x mean)"
    return rule


def factor(aggregation: str, sampler: str, n: int, k: int,
           angle_deg: float | None = None) -> float:
    """lr / lr_bp of one estimator under the isotropic one-step rule (see each function)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"no rule for sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if not (n >= 1 and k >= 1):
        raise ValueError(f"n and k must be >= 1, got n={n}, k={k}")
    if aggregation == "projection":
        return projection(n, k)
    if sampler == "cone":  # unit tangents already: normalizing changes nothing
        if angle_deg is None:
            raise ValueError("the cone rule needs its angle (angle_deg)")
        mean = mean_cone(n, k, float(angle_deg))
    elif aggregation.endswith("_normalized"):
        mean = mean_unit(n, k)
    else:
        mean = {"normal": mean_normal, "rademacher": mean_rademacher}[sampler](n, k)
    return mean / k if aggregation.startswith("sum") else mean


# ---------------------------------------------------------------------------------------------
# Rules on LR-table rows

def _isotropic(aggregation, sampler, n, k, angle_deg):
    return factor(aggregation, sampler, n, k, angle_deg)


def _same_as_bp(aggregation, sampler, n, k, angle_deg):
    return 1.0  # the null rule: no search, no theory; what the isotropic rule must beat


RULES: dict[str, Callable[..., float]] = {"isotropic": _isotropic, "same-as-bp": _same_as_bp}

@functools.lru_cache(maxsize=None)  # one model build per network, however many settings ask
def network_dimension(model: str, dataset: str, width: int | None = None,
                      perturbation: str = "activity", patch: int | None = None) -> int:
    """n of a network: activations per example summed over blocks (activity perturbation, one
    tangent spans all blocks) or trainable parameters (weight perturbation); patch: the ViT's."""
    import torch  # only networks need it

    from fgexp.nn.data import INPUT_SHAPES
    from fgexp.nn.models import build
    channels, size = INPUT_SHAPES[dataset]
    net = build(model, in_channels=channels, image_size=size, num_classes=10, width=width,
                patch=patch)
    if perturbation == "weight":
        return sum(p.numel() for p in net.parameters() if p.requires_grad)
    if perturbation != "activity":
        raise ValueError(f"unknown perturbation {perturbation!r}; allowed: activity, weight")
    net.eval()
    x, n = torch.zeros(1, channels, size, size), 0
    with torch.no_grad():
        for block in net.blocks:
            x = block(x)
            n += x[0].numel()
    return n


def _number(value) -> float | None:
    text = canonical(value)
    return None if text == "" else float(text)


def predict(setting: Mapping, lr_bp: float, rule: str = "isotropic",
            n: int | None = None) -> float:
    """The rate of one LR-table setting row (gradient, k, sampler, angle_deg, n or model/width)
    predicted from bp's rate of the same setting; `n` overrides the row's dimension."""
    if rule not in RULES:
        raise ValueError(f"unknown LR rule {rule!r}; allowed: {', '.join(RULES)}")
    label = canonical(setting.get("gradient"))
    if label not in GRADIENTS:
        raise ValueError(f"unknown gradient {label!r}; allowed: {', '.join(GRADIENTS)}")
    if label == "bp":
        return float(lr_bp)
    k = int(_number(setting.get("k")) or 1)
    sampler = canonical(setting.get("sampler")) or "normal"
    if n is None:
        if _number(setting.get("n")) is not None:
            n = int(_number(setting["n"]))
        else:
            width = _number(setting.get("width"))
            n = network_dimension(canonical(setting["model"]), canonical(setting["dataset"]),
                                  None if width is None else int(width),
                                  canonical(setting.get("perturbation")) or "activity")
    return float(lr_bp) * RULES[rule](GRADIENTS[label], sampler, n, k,
                                      _number(setting.get("angle_deg")))


# ---------------------------------------------------------------------------------------------
# Validation: predicted against searched rates, per table

PREDICTION_COLUMNS = ("source", "table", "group", "setting", "n", "gradient", "k", "sampler",
                      "angle_deg", "rule", "lr_bp", "lr_searched", "lr_predicted",
                      "searched_over_predicted")
VALIDATION_COLUMNS = ("source", "table", "group", "gradient", "rule", "settings", "within_2x",
                      "within_10x", "frac_2x", "frac_10x", "median_searched_over_predicted")
# Table -> (columns naming the group of a figure panel, the other setting columns).
GROUPS = {"closed_form": (("function",), ("n",)),
          "fc_mnist": (("model",), ("dataset", "width")),
          "resnet_vit": (("model",), ("dataset",))}


def predictions(rows: list[Mapping], table: str, source: str,
                rules_: tuple[str, ...] = tuple(RULES)) -> list[dict]:
    """One row per forward-gradient setting of an LR table (rows as read by read_table) and rule:
    its searched rate against the rate predicted from bp's rate of the same setting (same
    function and n, or model, data set and width; a cone setting takes the normal grid's bp)."""
    group_cols, other_cols = GROUPS[table]
    key_cols = (*group_cols, *other_cols)
    bp = {tuple(canonical(r.get(c)) for c in key_cols): float(r["lr"])
          for r in rows if canonical(r["gradient"]) == "bp"}
    out = []
    for row in rows:
        key = tuple(canonical(row.get(c)) for c in key_cols)
        if canonical(row["gradient"]) == "bp" or key not in bp:
            continue
        if table == "closed_form":
            n = int(float(row["n"]))
        else:
            n = network_dimension(canonical(row["model"]), canonical(row["dataset"]),
                                  int(float(row["width"])) if canonical(row.get("width")) else None)
        for rule in rules_:
            lr = predict(row, bp[key], rule, n=n)
            out.append({"source": source, "table": table,
                        "group": " ".join(canonical(row[c]) for c in group_cols),
                        "setting": " ".join(f"{c}={canonical(row.get(c))}" for c in other_cols),
                        "n": n, "gradient": canonical(row["gradient"]),
                        "k": canonical(row["k"]), "sampler": canonical(row["sampler"]) or "normal",
                        "angle_deg": canonical(row.get("angle_deg")), "rule": rule,
                        "lr_bp": bp[key], "lr_searched": float(row["lr"]), "lr_predicted": lr,
                        "searched_over_predicted": float(row["lr"]) / lr})
    return out


def fractions(pred_rows: list[Mapping]) -> list[dict]:
    """Within 2x and 10x per (source, table, group, rule), per gradient label and 'all'."""
    cells: dict[tuple, list[float]] = {}
    for r in pred_rows:
        for gradient in (r["gradient"], "all"):
            key = (r["source"], r["table"], r["group"], gradient, r["rule"])
            cells.setdefault(key, []).append(float(r["searched_over_predicted"]))
    out = []
    for (source, table, group, gradient, rule), ratios in cells.items():
        factors = [max(q, 1 / q) for q in ratios]
        w2, w10 = sum(f <= 2 for f in factors), sum(f <= 10 for f in factors)
        out.append({"source": source, "table": table, "group": group, "gradient": gradient,
                    "rule": rule, "settings": len(ratios), "within_2x": w2, "within_10x": w10,
                    "frac_2x": round(w2 / len(ratios), 4), "frac_10x": round(w10 / len(ratios), 4),
                    "median_searched_over_predicted": float(f"{sorted(ratios)[len(ratios) // 2]:.4g}")})
    return out


def authors_rows(name: str, csv_rows: list[Mapping]) -> tuple[str, list[dict]]:
    """The authors' published rates (paper_lrs/<name>.csv) as rows of our table of the same
    task: (table name, rows with our setting columns, gradient, k, sampler, lr)."""
    out = []
    for r in csv_rows:
        sampler, angle = "normal", ""
        spec = r.get("optimizer", "")
        if "sampler=specific_angle_" in spec:
            sampler, angle = "cone", spec.split("specific_angle_")[1].rstrip(")")
        row = {"gradient": r["gradient_approach"], "k": canonical(r["k"]), "sampler": sampler,
               "angle_deg": angle, "lr": r["lr"]}
        if name.startswith("math"):
            row.update(function=r["function"], n=r["n"])
        else:
            model, _, width = r["model"].partition("_w=")
            row.update(model=model, dataset=r["dataset"], width=width)
        out.append(row)
    table = {"math": "closed_form", "math__custom_tangents": "closed_form",
             "fc_nns": "fc_mnist", "sota_nns": "resnet_vit"}[name]
    return table, out


def predicted_table(rows: list[Mapping], table: str, rule: str) -> list[dict]:
    """An LR table (same columns as `rows`, read by read_table) whose forward-gradient rates
    come from `rule` and bp's rate; bp's rows are kept. Backend 'rule:<name>', loss NaN (no
    search), evaluations 0: experiments read it with --lr-table like any searched table."""
    preds = {(p["group"], p["setting"], p["gradient"], p["k"], p["sampler"], p["angle_deg"]):
             p["lr_predicted"] for p in predictions(rows, table, "ours", (rule,))}
    group_cols, other_cols = GROUPS[table]
    out = []
    for row in rows:
        if canonical(row["gradient"]) == "bp":
            out.append(dict(row))
            continue
        key = (" ".join(canonical(row[c]) for c in group_cols),
               " ".join(f"{c}={canonical(row.get(c))}" for c in other_cols),
               canonical(row["gradient"]), canonical(row["k"]),
               canonical(row["sampler"]) or "normal", canonical(row.get("angle_deg")))
        if key in preds:
            out.append({**row, "lr": preds[key], "loss": "nan", "evaluations": 0,
                        "backend": f"rule:{rule}"})
    return out
