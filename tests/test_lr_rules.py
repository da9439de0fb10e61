"""Each LR rule against a brute-force optimum: the rate that minimizes the Monte Carlo mean of
the loss after one step, found on a fine grid of rates, with the suite's own samplers and
aggregations (fgexp.tangents, fgexp.aggregate) as the estimators."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fgexp import tangents
from fgexp.aggregate import aggregate
from fgexp.lr import rules

ROOT = Path(__file__).resolve().parents[1]

DRAWS = 100_000                           # tangent draws per setting
LRS = np.logspace(-3, 3, 6001)            # the rate grid: 0.1% apart, no rule's value at its centre
TOL = 0.025                               # relative; wrong rules below are >= 4% away


def brute_force_lr(h_n: torch.Tensor, x_n: torch.Tensor, aggregation: str, sampler: str,
                   k: int, angle_deg: float | None = None, normalize: bool = False,
                   seed: int = 0) -> float:
    """argmin over LRS of E f(x - lr g~), f(x) = x'Hx / 2 with H = diag(h_n), over DRAWS draws."""
    n = x_n.numel()
    g_n = h_n * x_n
    gen = torch.Generator().manual_seed(seed)
    tangents_dxkxn = tangents.sample(sampler, (DRAWS,), k, n, gen, angle_deg=angle_deg,
                                     normalize=normalize, dtype=torch.float64)
    jvps_dxk = tangents_dxkxn @ g_n
    est_dxn = aggregate(tangents_dxkxn, jvps_dxk, aggregation)
    # f(x - lr e) = f(x) - lr <e, g> + lr^2 / 2 e'He, exactly, for each draw; then the mean.
    descent = float((est_dxn @ g_n).mean())
    curvature = float(((est_dxn ** 2) * h_n).sum(-1).mean())
    losses_l = -LRS * descent + 0.5 * LRS ** 2 * curvature
    return float(LRS[np.argmin(losses_l)])


def bp_lr(h_n: torch.Tensor, x_n: torch.Tensor) -> float:
    """bp's one-step optimum on the same grid: g = Hx, argmin of -lr |g|^2 + lr^2 g'Hg / 2."""
    g_n = h_n * x_n
    losses_l = -LRS * float(g_n @ g_n) + 0.5 * LRS ** 2 * float((g_n ** 2 * h_n).sum())
    return float(LRS[np.argmin(losses_l)])


def isotropic(n: int):
    return torch.ones(n, dtype=torch.float64), torch.linspace(1, 2, n, dtype=torch.float64)


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a / b - 1) < tol


@pytest.mark.parametrize("n,k", [(1, 1), (4, 1), (4, 2), (8, 4), (6, 12)])
def test_mean_matches_brute_force_on_the_sphere(n, k):
    h_n, x_n = isotropic(n)
    lr_bp = bp_lr(h_n, x_n)
    assert close(lr_bp, 1.0, 0.002)
    best = brute_force_lr(h_n, x_n, "mean", "normal", k)
    predicted = rules.predict({"gradient": "fg-mean", "k": k, "sampler": "normal", "n": n}, lr_bp)
    assert close(predicted, best), (predicted, best)
    # The test can fail: the tempting k / (n + k) and k / n are far outside the tolerance.
    for wrong in (k / (n + k), k / n):
        assert not close(lr_bp * wrong, best), (wrong, best)


@pytest.mark.parametrize("n,k", [(2, 1), (8, 2), (8, 8), (16, 4)])
def test_projection_keeps_bps_rate(n, k):
    h_n, x_n = isotropic(n)
    lr_bp = bp_lr(h_n, x_n)
    best = brute_force_lr(h_n, x_n, "projection", "normal", k)
    predicted = rules.predict({"gradient": "frog", "k": k, "sampler": "normal", "n": n}, lr_bp)
    assert close(predicted, best, 0.005), (predicted, best)
    if k < n:  # the span's shrinkage k / n does not enter the rate
        assert not close(lr_bp * k / n, best)


@pytest.mark.parametrize("label,aggregation,sampler,normalize,n,k", [
    ("fg-sum", "sum", "normal", False, 4, 4),
    ("fg-mean", "mean", "rademacher", False, 4, 2),
    ("fg-sum", "sum", "rademacher", False, 8, 4),
    ("fg-mean-normalized", "mean_normalized", "normal", True, 4, 4),
    ("fg-sum-normalized", "sum_normalized", "normal", True, 8, 2),
    ("fg-mean-normalized", "mean_normalized", "rademacher", True, 4, 8),
])
def test_other_rules_match_brute_force(label, aggregation, sampler, normalize, n, k):
    h_n, x_n = isotropic(n)
    # normalize=False with the _normalized aggregation: it divides by |v|^2 itself.
    best = brute_force_lr(h_n, x_n, aggregation, sampler, k, normalize=False)
    predicted = rules.predict({"gradient": label, "k": k, "sampler": sampler, "n": n},
                              bp_lr(h_n, x_n))
    assert close(predicted, best), (predicted, best)


@pytest.mark.parametrize("angle,n,k", [(15.0, 8, 4), (45.0, 16, 4), (90.0, 8, 8), (60.0, 4, 2)])
def test_cone_mean_matches_brute_force(angle, n, k):
    h_n, x_n = isotropic(n)
    best = brute_force_lr(h_n, x_n, "mean", "cone", k, angle_deg=angle)
    predicted = rules.predict({"gradient": "fg-mean", "k": k, "sampler": "cone", "n": n,
                               "angle_deg": angle}, bp_lr(h_n, x_n))
    assert close(predicted, best), (angle, predicted, best)
    frog = brute_force_lr(h_n, x_n, "projection", "cone", k, angle_deg=angle)
    assert close(frog, bp_lr(h_n, x_n), 0.005)


@pytest.mark.parametrize("n,k", [(4, 1), (8, 4)])
def test_diagonal_quadratic_with_gradient_at_mean_curvature(n, k):
    """Assumption A1: g'Hg / |g|^2 = tr(H) / n (here g = (1, ..., 1)) keeps both rules exact."""
    h_n = torch.linspace(0.5, 4.0, n, dtype=torch.float64)
    x_n = 1.0 / h_n
    lr_bp = bp_lr(h_n, x_n)
    for label, aggregation in (("fg-mean", "mean"), ("frog", "projection")):
        best = brute_force_lr(h_n, x_n, aggregation, "normal", k, seed=1)
        predicted = rules.predict({"gradient": label, "k": k, "sampler": "normal", "n": n},
                                  lr_bp)
        assert close(predicted, best, 0.03), (label, predicted, best)


def test_predict_reads_table_rows():
    row = {"function": "sphere", "n": "16", "angle_deg": "", "gradient": "fg-mean", "k": "4",
           "sampler": "normal", "lr": "0.01"}
    assert math.isclose(rules.predict(row, 0.1), 0.1 * 4 / 21)
    assert rules.predict({**row, "gradient": "frog"}, 0.1) == 0.1
    assert rules.predict({**row, "gradient": "bp", "k": ""}, 0.1) == 0.1
    assert rules.predict(row, 0.1, rule="same-as-bp") == 0.1
    with pytest.raises(ValueError, match="unknown LR rule"):
        rules.predict(row, 0.1, rule="nope")


def test_network_dimension_counts_activations_and_parameters():
    # FC width 256 on MNIST: block outputs 256 + 256 + 10 per example.
    assert rules.network_dimension("fc", "mnist", 256) == 522
    params = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert rules.network_dimension("fc", "mnist", 256, "weight") == params


def test_predictions_and_fractions_on_a_small_table():
    rows = [{"function": "sphere", "n": "8", "angle_deg": "", "gradient": "bp", "k": "",
             "sampler": "", "lr": "0.1"},
            {"function": "sphere", "n": "8", "angle_deg": "", "gradient": "fg-mean", "k": "1",
             "sampler": "normal", "lr": "0.01"},     # predicted 0.01: factor 1
            {"function": "sphere", "n": "8", "angle_deg": "", "gradient": "frog", "k": "2",
             "sampler": "normal", "lr": "0.5"}]      # predicted 0.1: factor 5
    preds = rules.predictions(rows, "closed_form", "ours", ("isotropic",))
    assert [round(p["searched_over_predicted"], 6) for p in preds] == [1.0, 5.0]
    total = [f for f in rules.fractions(preds) if f["gradient"] == "all"][0]
    assert (total["settings"], total["within_2x"], total["within_10x"]) == (2, 1, 2)
    table = rules.predicted_table(rows, "closed_form", "isotropic")
    assert [float(r["lr"]) for r in table] == pytest.approx([0.1, 0.01, 0.1])
    assert table[1]["backend"] == "rule:isotropic" and table[0]["gradient"] == "bp"


def test_outcome_verdicts():
    import pandas as pd

    from fgexp.plots import lr_rules as plots

    def runs(gaps):
        return pd.DataFrame([{"function": "sphere", "n": 4, "gradient": g, "k": k,
                              "sampler": "normal", "seed": s, "lr": 0.1, "best_value": v}
                             for (g, k), v in gaps.items() for s in (0, 1)])
    settings = [("fg-mean", 1), ("fg-mean", 2), ("frog", 2), ("frog", 4)]
    searched = runs(dict(zip(settings, [0.0, 1.0, 1.0, 1.0])))
    ruled = runs(dict(zip(settings, [0.0, 1.5, 10.0, 0.1])))
    verdicts = plots.outcome_table(searched, ruled)["verdict"].tolist()
    assert verdicts == ["both at minimum", "within 2x", "rule worse", "rule better"]


def test_lr_rule_option_takes_forward_rates_from_bp_and_is_recorded(tmp_path, script):
    """--lr-rule: bp from the table, every forward-gradient rate from the rule, in the CSV's lr
    and the manifest's config."""
    out = tmp_path / "cf"
    result = script("experiments/closed_form.py", "--preset", "paper", "--functions", "sphere",
                    "--n", "16", "--gradients", "bp,fg-mean:4,frog:4", "--seeds", "0",
                    "--max-steps", "20", "--lr-rule", "isotropic", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    lrs = {r["gradient"]: float(r["lr"]) for r in csv.DictReader(open(out / "closed_form.csv"))}
    table = {(r["gradient"], r["k"]): float(r["lr"]) for r in
             csv.DictReader(open(ROOT / "results/lrs/closed_form.csv"))
             if r["function"] == "sphere" and r["n"] == "16" and not r["angle_deg"]}
    bp = table[("bp", "")]
    assert lrs["bp"] == bp
    assert lrs["fg-mean"] == pytest.approx(bp * 4 / (16 + 4 + 1))
    assert lrs["frog"] == bp and lrs["fg-mean"] != table[("fg-mean", "4")]
    manifest = json.loads((out / "closed_form.manifest.json").read_text())
    assert manifest["config"]["lr_rule"] == "isotropic"
    bad = script("experiments/closed_form.py", "--lr-rule", "nope", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "unknown --lr-rule 'nope'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_lr_rule_for_networks_scales_the_mean_and_keeps_the_projection_at_bp():
    import dataclasses

    from fgexp.nn import runs as nets
    cfg = dataclasses.replace(nets.PRESETS["fc_mnist"]["cpu"], lr_rule="isotropic",
                              widths=(256,), seeds=(0,), gradients=("bp", "fg-mean:4", "frog:4"))
    nets.validate(cfg)
    lrs = {r.gradient: rate for r, rate in nets.learning_rates(cfg, "fc_mnist:cpu",
                                                               nets.runs(cfg)).items()}
    n = rules.network_dimension("fc", "mnist5k", 256, "activity")
    assert lrs["frog"] == lrs["bp"]
    assert lrs["fg-mean"] == pytest.approx(lrs["bp"] * 4 / (n + 4 + 1))
    with pytest.raises(ValueError, match="one rate"):
        nets.validate(dataclasses.replace(cfg, lr=0.1))


def test_a_config_field_added_at_none_matches_an_older_manifest():
    from fgexp.results import same_config
    assert same_config({"a": 1}, {"a": 1, "lr_rule": None})
    assert not same_config({"a": 1}, {"a": 1, "lr_rule": "isotropic"})
    assert not same_config({"a": 1, "lr_rule": None}, {"a": 1, "lr_rule": "isotropic"})
