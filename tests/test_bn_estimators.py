"""Activity-perturbation estimators for models with train-mode BatchNorm (coupled examples).

The paper's scheme (per-example) is checked against a float64 reference written here from its
definition; forward and simulated mode are checked equal for every scheme both compute.
"""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fgexp.directional import GradientSpec
from fgexp.nn import activity
from fgexp.nn.gradients import set_gradients
from fgexp.nn.runs import PRESETS, NetConfig, Run, spec_of
from test_nn_gradients import bn_mlp, flat, grads, tiny, true_grads

REPO = Path(__file__).resolve().parents[1]
ACTIVITY_SIZE = 8 + 8 + 3  # bn_mlp: one example's activations over its three blocks


def step(model, x, y, scheme, seed=0, **spec):
    spec = GradientSpec(perturbation="activity", **spec)
    set_gradients(model, x, y, spec, torch.Generator().manual_seed(seed),
                  activity_tangents=scheme)
    return flat(grads(model))


def reference_per_example(model, x, y, tangents_kxn, projection: bool):
    """The paper's estimator from its definition, in float64: each example's exact gradient of
    the mean batch loss at its activations (an additive zero per block output, differentiated by
    autograd), projected onto the shared tangents (explicit formula), then block-local VJPs."""
    model = copy.deepcopy(model).double()
    v_kxn = tangents_kxn.double()
    with torch.no_grad():
        shapes, h = [], x.double()
        for block in model.blocks:
            h = block(h)
            shapes.append(h.shape)
    zeros = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    h, block_inputs = x.double(), []
    for block, zero in zip(model.blocks, zeros):
        block_inputs.append(h.detach())
        h = block(h) + zero
    g_bxn = torch.cat([g.flatten(1) for g in
                       torch.autograd.grad(F.cross_entropy(h, y), zeros)], dim=1)
    d_bxk = g_bxn @ v_kxn.T
    if projection:
        estimate_bxn = d_bxk @ torch.linalg.solve(v_kxn @ v_kxn.T, v_kxn)
    else:
        estimate_bxn = d_bxk @ v_kxn / len(v_kxn)
    parts = estimate_bxn.split([s[1:].numel() for s in shapes], dim=1)
    out = []
    for block, h_in, part, s in zip(model.blocks, block_inputs, parts, shapes):
        params = list(block.parameters())
        out += torch.autograd.grad(block(h_in), params, part.reshape(s))
    return flat(out).float()


@pytest.mark.parametrize("gradient, k", [("fg-mean", 1), ("fg-mean", 4), ("frog", 4)])
def test_per_example_matches_its_float64_reference(gradient, k):
    model, x, y = bn_mlp()
    spec = GradientSpec(gradient, k=k, perturbation="activity")
    tangents_kxn, _ = activity.sample_tangents(model, x, spec, torch.Generator().manual_seed(5),
                                               "per-example")
    want = reference_per_example(model, x, y, tangents_kxn, projection=gradient == "frog")
    got = step(model, x, y, "per-example", seed=5, gradient=gradient, k=k, mode="simulated")
    assert float((got - want).norm() / want.norm()) < 1e-5


def test_per_example_with_every_direction_is_backprop_and_held_stats_is_not():
    """Projection onto k = N tangents recovers the activity gradient the scheme projects: the
    exact one (per-example), or the one with batch statistics held constant (biased)."""
    model, x, y = bn_mlp()
    exact = flat(true_grads(model, x, y))
    paper = step(model, x, y, "per-example", gradient="frog", k=ACTIVITY_SIZE, mode="simulated")
    held = step(model, x, y, "held-stats", gradient="frog", k=ACTIVITY_SIZE, mode="simulated")
    assert float((paper - exact).norm() / exact.norm()) < 1e-4
    assert float((held - exact).norm() / exact.norm()) > 0.05


def test_held_stats_target_is_backprop_with_constant_statistics():
    """Reference: the activity gradients of a copy whose BatchNorm runs in eval mode on this
    batch's own statistics, pulled back through the train-mode blocks."""
    model, x, y = bn_mlp()
    frozen = copy.deepcopy(model)
    h, stats = x, {}
    with torch.no_grad():
        for block in frozen.blocks:  # each BatchNorm's batch statistics (biased variance)
            for module in block:
                if isinstance(module, torch.nn.BatchNorm1d):
                    stats[module] = h.mean(0), h.var(0, unbiased=False)
                h = module(h)
    for module, (mean, var) in stats.items():
        module.running_mean, module.running_var = mean, var
    frozen.eval()
    outputs, h = [], x
    for block in frozen.blocks:
        h = block(h)
        outputs.append(h)
    act = torch.autograd.grad(F.cross_entropy(h, y), outputs)
    inputs = [x, *[o.detach() for o in outputs[:-1]]]
    want = flat([g for block, h_in, a in zip(model.blocks, inputs, act)
                 for g in torch.autograd.grad(block(h_in), list(block.parameters()), a)])
    got = step(model, x, y, "held-stats", gradient="frog", k=ACTIVITY_SIZE, mode="forward")
    assert float((got - want).norm() / want.norm()) < 1e-4


@pytest.mark.parametrize("scheme", ["per-example", "held-stats", "independent"])
@pytest.mark.parametrize("make", [bn_mlp, lambda: tiny("resnet18")], ids=["bn-mlp", "resnet18"])
def test_forward_equals_simulated_for_every_coupled_scheme(scheme, make):
    model, x, y = make()
    spec = dict(gradient="frog", k=3, chunk_size=2)
    forward = step(model, x, y, scheme, mode="forward", **spec)
    simulated = step(model, x, y, scheme, mode="simulated", **spec)
    assert forward.norm() > 0
    assert float((forward - simulated).norm() / simulated.norm()) < 1e-4


@pytest.mark.parametrize("scheme, mode", [("per-example", "forward"),
                                          ("held-stats", "simulated"), ("held-stats", "forward")])
def test_batchnorm_statistics_advance_once_like_bp(scheme, mode):
    model, x, y = tiny("resnet18")
    reference = copy.deepcopy(model)
    set_gradients(reference, x, y, GradientSpec("bp"))
    step(model, x, y, scheme, gradient="fg-mean", k=2, mode=mode)
    buffers = dict(reference.named_buffers())
    for name, got in model.named_buffers():
        torch.testing.assert_close(got, buffers[name], rtol=1e-5, atol=1e-6, msg=name)


def test_without_coupling_the_shared_tangent_schemes_are_one():
    model, x, y = tiny("vit")
    shared = step(model, x, y, "shared", gradient="frog", k=3, mode="simulated")
    for scheme in ("per-example", "held-stats"):
        torch.testing.assert_close(step(model, x, y, scheme, gradient="frog", k=3,
                                        mode="forward"), shared, rtol=1e-4, atol=1e-6)


def test_the_network_config_carries_the_scheme():
    cfg = PRESETS["resnet_vit"]["cpu"]
    assert cfg.activity_tangents == "per-example" == PRESETS["resnet_vit"]["paper"].activity_tangents
    spec = spec_of(Run("resnet18", "mnist5k", None, "frog", 2, 0), cfg)
    model, x, y = tiny("resnet18")
    set_gradients(model, x, y, spec)  # the spec's scheme is used: "shared" would be refused
    with pytest.raises(ValueError, match="biased.*per-example, independent, held-stats"):
        set_gradients(model, x, y, spec_of(Run("resnet18", "mnist5k", None, "frog", 2, 0),
                                           NetConfig(activity_tangents="shared")))
    with pytest.raises(ValueError, match="unknown activity tangent scheme 'paper'"):
        spec_of(Run("resnet18", "mnist5k", None, "frog", 2, 0),
                NetConfig(activity_tangents="paper"))


@pytest.mark.parametrize("scheme, message", [
    ("paper", "invalid choice: 'paper'"),
    ("shared", "error: --activity-tangents shared is biased for resnet18 (BatchNorm in train "
               "mode); use one of per-example, independent, held-stats"),
])
def test_bad_scheme_on_the_command_line_is_one_line(tmp_path, scheme, message):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "experiments/resnet_vit.py", "--preset", "cpu", "--activity-tangents",
         scheme, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_scheme_targets_are_bp_except_for_held_statistics():
    model, x, y = bn_mlp()
    exact = flat(true_grads(model, x, y))
    names = [name for name, _ in model.named_parameters()]
    for scheme in ("per-example", "independent"):
        target = flat([activity.scheme_target(model, x, y, scheme)[n] for n in names])
        torch.testing.assert_close(target, exact, rtol=1e-4, atol=1e-6)
    held = flat([activity.scheme_target(model, x, y, "held-stats")[n] for n in names])
    projected = step(model, x, y, "held-stats", gradient="frog", k=ACTIVITY_SIZE,
                     mode="simulated")
    torch.testing.assert_close(held, projected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # about 40 s
def test_quick_benchmark_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bn_estimators
    rows = {(r["scheme"], r["mode"]): r for r in bn_estimators.run(quick=True)}
    assert set(rows) == {("", ""), *[(s, m) for s in activity.COUPLED_SCHEMES
                                     for m in ("simulated", "forward")]} - {("per-example",
                                                                            "forward")}
    assert rows[("per-example", "simulated")]["target_cosine"] == pytest.approx(1, abs=1e-4)
    assert rows[("independent", "forward")]["target_cosine"] == pytest.approx(1, abs=1e-4)
    assert rows[("held-stats", "forward")]["target_cosine"] < 0.9999
    assert all(r["seconds_per_step"] > 0 for r in rows.values())


def test_table_names_each_models_estimator():
    import pandas as pd

    from fgexp.plots import networks
    rows = [{"model": m, "dataset": "mnist5k", "width": None, "gradient": g, "k": k,
             "mode": "simulated", "perturbation": "activity", "seed": 0, "lr": 0.1, "epoch": 1,
             "test_acc": 0.5, "test_loss": 1.0, "status": "completed"}
            for m in ("resnet18", "vit") for g, k in (("bp", None), ("frog", 2))]
    table = networks.table_networks(pd.DataFrame(rows), "per-example")
    assert list(table["estimator"]) == ["exact", "per-example", "exact", "shared"]
    header = networks.table_networks_markdown(table).splitlines()[0]
    assert header == "| gradient | k | resnet18 / mnist5k (per-example) | vit / mnist5k |"
    old = networks.table_networks(pd.DataFrame(rows))  # a manifest from before the field
    assert list(old["estimator"]) == ["exact", "independent", "exact", "shared"]


def test_table_gives_each_resnet18_scheme_a_column_and_the_vit_its_width(tmp_path):
    """The held-stats store beside resnet_vit.csv adds ResNet18 columns; bp is in each."""
    import json

    import pandas as pd

    from fgexp.plots.registry import BUILDERS

    def store(directory, models, scheme, gradients, error):
        directory.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"model": m, "dataset": "mnist5k", "width": w, "gradient": g, "k": k,
                       "mode": "simulated", "perturbation": "activity", "seed": 0, "lr": 0.1,
                       "epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                       "val_acc": 0.5, "test_loss": 1.0, "test_acc": 1 - error,
                       "status": "completed"}
                      for m, w in models for g, k in gradients]).to_csv(
            directory / "resnet_vit.csv", index=False)
        (directory / "resnet_vit.manifest.json").write_text(json.dumps(
            {"name": "resnet_vit", "preset": "cpu", "config": {"activity_tangents": scheme}}))

    store(tmp_path, [("resnet18", None), ("vit", 128)], "per-example",
          [("bp", None), ("frog", 16)], 0.25)
    store(tmp_path / "resnet_vit_held_stats", [("resnet18", None)], "held-stats",
          [("frog", 16)], 0.5)
    markdown = BUILDERS["table-networks"].build(tmp_path)["table_networks.md"]
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0] == ("| gradient | k | resnet18 / mnist5k (per-example) "
                        "| resnet18 / mnist5k (held-stats) | vit-128 / mnist5k |")
    assert table[2] == "| bp |  | 25.00 (n=1) | 25.00 (n=1) | 25.00 (n=1) |"
    assert table[3] == "| frog | 16 | 25.00 (n=1) | 50.00 (n=1) | 25.00 (n=1) |"


def test_batchnorm_models_are_those_that_couple_examples():
    from fgexp.paper import BATCHNORM_MODELS, MODELS
    for name in MODELS:
        model, _, _ = tiny(name)
        assert activity.couples_examples(model) == (name in BATCHNORM_MODELS), name


@pytest.mark.slow  # about 40 s
def test_quick_epoch_cost_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import epoch_cost
    rows = epoch_cost.run(quick=True)
    cases = [(r["model"], r["scheme"], r["mode"], r["gradient"], r["k"]) for r in rows]
    assert cases[0] == ("resnet18", "exact", "simulated", "bp", "")
    assert ("resnet18", "per-example", "simulated", "frog", 2) in cases
    assert ("resnet18", "held-stats", "forward", "frog", 2) in cases
    assert not any(c[1:3] == ("per-example", "forward") for c in cases)  # B passes per tangent
    assert ("vit", "shared", "forward", "frog", 2) in cases
    full = list(epoch_cost.cases("resnet18", quick=False))
    assert ("per-example", "forward", "fg-mean", 1) in full
    assert ("per-example", "forward", "frog", 2) not in full
    assert all(r["train_epoch_seconds"] == pytest.approx(55 * r["seconds_per_step"]) for r in rows)
    assert all(r["eval_epoch_seconds"] > 0 and r["time_ratio_to_bp"] > 0 for r in rows)
    assert {(r["width"], r["patch"]) for r in rows if r["model"] == "vit"} == {(128, 7)}
