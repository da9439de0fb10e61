"""The GPU check (benchmarks/device_check.py) on a CPU: refusal, flags, estimate, the dry run."""
import csv
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import ENV, ROOT, run_script

SCRIPT = "benchmarks/device_check.py"
# What the GPU machine lacks: the dry run must never import them.
ABSENT = ("mlxtend", "propulate", "GPy", "mpi4py")
PROVENANCE = ("machine", "device", "torch", "cuda", "threads", "commit")


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["device_check"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One tiny CPU run as a user starts it, with the packages the GPU machine lacks made
    unimportable (modules of their names that raise ImportError, first on PYTHONPATH)."""
    stubs, out = tmp_path_factory.mktemp("absent"), tmp_path_factory.mktemp("device_check")
    for name in ABSENT:
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    path = os.pathsep.join([str(stubs), str(ROOT), ENV.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(ROOT / SCRIPT), "--device", "cpu", "--tiny",
                           "--out", str(out), "--commit", "abc123"], capture_output=True,
                          text=True, env={**ENV, "PYTHONPATH": path}, cwd=ROOT, timeout=300)
    return done, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_refuses_without_cuda_in_one_line(tmp_path):
    done = run_script(SCRIPT, "--out", tmp_path)
    assert done.returncode == 2
    assert done.stdout.strip().count("\n") == 0 and "no CUDA device" in done.stdout
    assert not any(tmp_path.iterdir())  # refused before any compute or write


@pytest.mark.parametrize("argv", [["--device", "cpu"], ["--budget-s", "-5"],
                                  ["--budget-s", "nan"], ["--part", "everything"]])
def test_bad_flags_are_usage_errors(device_check, argv):
    with pytest.raises(SystemExit) as err:
        device_check.parse_args(argv)
    assert err.value.code == 2


def test_parts_keep_their_order(device_check):
    args = device_check.parse_args(["--part", "training", "--part", "correctness"])
    assert args.parts == ("correctness", "training")
    assert device_check.parse_args([]).parts == device_check.PARTS


def test_the_full_check_is_estimated_within_eight_minutes(device_check, capsys):
    guess = device_check.estimate_s(device_check.FULL)
    assert guess["total"] <= device_check.FULL.budget_s == 480
    assert all(guess[part] > 0 for part in device_check.PARTS)
    assert device_check.main(["--estimate-only"]) == 0
    assert "estimated GPU run time" in capsys.readouterr().out
    assert device_check.main(["--estimate-only", "--budget-s", "30"]) == 2


def test_step_cases_cover_the_issue(device_check):
    labels = [label for label, _ in device_check.step_methods((1, 4, 16))]
    assert labels[0] == "bp" and len(labels) == 1 + 2 * 2 * 3
    assert "simulated-weight-frog-k16" in labels and "forward-activity-frog-k1" in labels
    assert [case[:2] for case in device_check.FULL.bench] == [
        ("fc", 1024), ("fc", 4096), ("resnet18", None), ("vit", None)]
    pairs = device_check.correctness_specs(device_check.FULL)
    assert len(pairs) == 2 * 2 * 2 and all(f.mode == "forward" for f, _ in pairs)


def test_budget_clock(device_check):
    clock = device_check.Clock(10.0)
    assert not clock.over(1.0) and clock.over(11.0)


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_dry_run_writes_the_three_csvs_with_provenance(dry_run, device_check):
    done, out = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "correctness_cpu.csv", "nn_steps_cpu.csv", "training_cpu.csv"]
    for name in ("correctness", "training"):
        rows = read(out / f"{name}_cpu.csv")
        assert list(rows[0]) == [*PROVENANCE, *device_check.COLUMNS[name]]
    for path in out.iterdir():
        for row in read(path):
            assert all(row[c] for c in ("machine", "torch", "threads"))
            assert row["device"] == "cpu" and row["commit"] == "abc123"
    steps = read(out / "nn_steps_cpu.csv")
    assert [r["method"] for r in steps] == [m for m, _ in device_check.step_methods((2,))]
    assert all(float(r["seconds_per_step"]) > 0 and r["memory_ratio_to_bp"] for r in steps)
    assert all(r["passed"] == "True" for r in read(out / "correctness_cpu.csv"))
    training = read(out / "training_cpu.csv")
    assert [r["epoch"] for r in training] == ["0", "1", "0", "1"]


def test_dry_run_prints_a_short_summary(dry_run):
    done, _ = dry_run
    lines = done.stdout.splitlines()
    assert lines[0].startswith("device check: estimated GPU run time")
    assert any(line.startswith("correctness: 22/22 passed") for line in lines)
    assert sum("(falls)" in line for line in lines) == 2
    assert lines[-1].startswith("device check: passed")


def test_summary_names_failures(device_check):
    rows = [{"check": "forward=simulated", "model": "vit", "gradient": "frog", "k": 4,
             "perturbation": "weight", "value": 3e-3, "bound": 1e-4, "passed": False}]
    text = device_check.summary("correctness", rows)
    assert text.startswith("correctness: 0/1 passed") and "FAILED forward=simulated vit" in text
    run = [{"model": "fc", "width": 4096, "gradient": "frog", "k": 16, "train_loss": loss,
            "val_acc": 0.1, "epoch_seconds": 1.0, "status": ""} for loss in (2.3, 2.4)]
    skipped = [{"model": "resnet18", "width": "", "gradient": "bp", "k": "",
                "status": "skipped (budget)"}]
    text = device_check.summary("training", run + skipped)
    assert "fc-4096 frog:16: 2.300 -> 2.400 (DOES NOT FALL)" in text
    assert "resnet18 bp: skipped (budget)" in text


def test_a_failing_computation_fails_only_its_check(device_check, monkeypatch):
    """On a GPU a kernel may lack forward-mode AD: the row fails with the error, the run goes on."""
    def no_kernel(*args, **kwargs):
        raise RuntimeError("no forward AD formula")

    monkeypatch.setattr(device_check, "flat_grads", no_kernel)
    cfg = device_check.dataclasses.replace(device_check.TINY, check_models=(("fc", 12),))
    rows = device_check.correctness_rows(cfg, torch.device("cpu"))
    failed = [r for r in rows if not r["passed"]]
    assert len(failed) == len(rows) - 1  # only the plain tangent draw needs no gradient
    assert all("no forward AD formula" in r["note"] for r in failed)
    assert "FAILED seeded step repeats fc" in device_check.summary("correctness", rows)
