"""The step benchmark's measurements (benchmarks/nn_steps.py) and its figure."""
import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from fgexp import plots

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nn_steps():
    spec = importlib.util.spec_from_file_location("nn_steps", REPO / "benchmarks" / "nn_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensor_peak_counts_what_is_held_at_once(nn_steps):
    mib = 2**20

    def two_then_one():
        a = torch.ones(mib // 4)       # 1 MiB
        b = torch.ones(2 * mib // 4)   # 2 MiB while a is alive: peak 3 MiB
        del a, b
        c = torch.ones(mib // 4)       # 1 MiB, alone
        return c.sum()

    peak = nn_steps.peak_tensor_bytes_cpu(two_then_one)
    assert 3 * mib <= peak < 3 * mib + 64 * 1024


def rss_peak_resettable() -> bool:
    """Linux lets a process reset its own peak resident set; elsewhere RSS peaks are NaN."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def test_peak_memory_reports_both_measures_on_cpu(nn_steps):
    mib = 2**20
    measured = nn_steps.peak_memory(lambda: torch.ones(mib).sum(), torch.device("cpu"))
    assert set(measured) == {"peak_memory_bytes", "peak_rss_bytes"}
    assert 4 * mib <= measured["peak_memory_bytes"] < 4 * mib + 64 * 1024
    if rss_peak_resettable():
        # 4 MiB are written; pages already resident before the step may cover a little of it.
        assert 3.5 * mib <= measured["peak_rss_bytes"] < 64 * mib
    else:
        assert math.isnan(measured["peak_rss_bytes"])


def test_quick_fc_case_writes_ratios_to_bp(nn_steps, tmp_path):
    path = tmp_path / "steps.csv"
    assert nn_steps.main(["--quick", "--case", "fc", "--csv", str(path)]) == 0
    frame = pd.read_csv(path)
    assert frame["method"].iloc[0] == "bp"
    assert frame.loc[0, ["time_ratio_to_bp", "memory_ratio_to_bp"]].tolist() == [1.0, 1.0]
    assert {"forward-activity-mean-k1", "loop-weight-mean-k4"} <= set(frame["method"])
    assert (frame["peak_memory_bytes"] > 0).all()


def test_bad_case_is_refused(nn_steps):
    with pytest.raises(SystemExit) as stop:
        nn_steps.main(["--case", "resnet50"])
    assert stop.value.code == 2


def test_figure_has_a_panel_row_per_model_and_batch():
    rows = [{"model": model, "batch": batch, "method": method, "time_ratio_to_bp": ratio,
             "memory_ratio_to_bp": ratio, "device": "cpu"}
            for model, batch in (("resnet18", 32), ("resnet18", 128))
            for method, ratio in (("bp", 1.0), ("forward-activity-mean-k1", 0.7))]
    fig = plots.benchmark_steps(pd.DataFrame(rows))
    titles = [ax.get_title() for ax in fig.axes]
    assert any("batch 32" in t for t in titles) and any("batch 128" in t for t in titles)
    assert len(fig.axes) == 4


def _suite(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_draw_variants_flag_which_keep_fgexps_stream():
    draw = _suite("draw")
    rows = draw.device_rows(torch.device("cpu"), 4096, (1, 3), repetitions=1)
    same = {(r["k"], r["variant"]): r["same_stream"] for r in rows}
    for k in (1, 3):
        assert same[k, "fgexp"] and same[k, "fgexp-out"]
        assert not same[k, "rand-out"] and not same[k, "numpy-pcg64-out"]
        assert same[k, "fill"] is None
    # torch fills normals in blocks of 16: per-tangent calls keep the stream when 16 divides n
    assert same[3, "per-tangent"]
    floors = [r["ratio_to_floor"] for r in rows if r["variant"] == "fill"]
    assert floors == [1.0, 1.0]


def test_step_rows_of_one_case_replace_only_that_case(tmp_path):
    run = _suite("run")
    path = tmp_path / "nn_steps.csv"
    pd.DataFrame([{"model": m, "batch": b, "method": "bp", "commit": "old"}
                  for m, b in (("fc-1024", 64), ("resnet18", 32))]).to_csv(path, index=False)
    merged = run.merged_rows(path, [{"model": "fc-1024", "batch": 64, "method": "bp",
                                     "commit": "new"}])
    assert [(r["model"], r["commit"]) for r in merged] == [("fc-1024", "new"),
                                                           ("resnet18", "old")]
    assert run.main(["--case", "fc", "--out", str(tmp_path)]) == 2  # --case needs nn_steps
