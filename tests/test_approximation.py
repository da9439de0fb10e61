"""Approximation quality: engines, statistics, config, the experiment script and its figures."""
import csv
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fgexp import approximation as approx
from fgexp import plots


def _group(n, k, group, engine, samples, seed=3):
    methods = [m for m in approx.METHODS if approx.group_of(m) == group]
    seq = approx.setting_seed(seed, "normal", n, k, group)
    return approx.sample_group(n, k, group, methods, samples, seq, engine=engine)


# n = 1 and 2 are the edge cases of the reduced engine (empty complement, a line); k > n too.
@pytest.mark.parametrize("n,k,group", [
    (1, 3, "conical"), (2, 1, "single"), (2, 5, "conical"), (3, 2, "conical"),
    (48, 8, "conical"), (64, 128, "conical"), (48, 8, "projection"), (5, 9, "projection"),
])
def test_reduced_engine_matches_brute_force(n, k, group):
    fast = _group(n, k, group, "reduced", 3000)
    slow = _group(n, k, group, "brute", 3000, seed=4)
    for method, (cos_fast, ratio_fast) in fast.items():
        cos_slow, ratio_slow = slow[method]
        for a, b in ((cos_fast, cos_slow), (ratio_fast, ratio_slow)):
            spread = math.hypot(a.std(ddof=1), b.std(ddof=1)) / math.sqrt(a.size)
            assert abs(a.mean() - b.mean()) <= 4 * spread + 1e-9, (method, a.mean(), b.mean())
            if spread > 1e-9:  # two-sample KS: the whole distribution, not only the mean
                assert stats.ks_2samp(a, b).pvalue > 1e-4, method


def test_reduced_engine_keeps_the_joint_law_of_sum_and_normalized_sum():
    # Both walks share their tangents: the paired difference must match brute force too.
    diffs = []
    for engine, seed in (("reduced", 5), ("brute", 6)):
        values = _group(8, 4, "conical", engine, 5000, seed=seed)
        diffs.append(values["sum_normalized"][0] - values["sum"][0])
    assert stats.ks_2samp(*diffs).pvalue > 1e-4


def test_reduced_engine_detects_a_wrong_dimension():
    # The comparison above has power: the same check rejects n = 48 against n = 40.
    cos_a = _group(48, 8, "conical", "reduced", 3000)["sum_normalized"][0]
    cos_b = _group(40, 8, "conical", "brute", 3000)["sum_normalized"][0]
    assert stats.ks_2samp(cos_a, cos_b).pvalue < 1e-4


def test_conical_methods_share_tangents_and_scale():
    values = _group(16, 4, "conical", "reduced", 100)
    np.testing.assert_array_equal(values["sum"][0], values["mean"][0])
    np.testing.assert_allclose(values["sum"][1] / 4, values["mean"][1])
    np.testing.assert_allclose(values["sum_normalized"][1] / 4, values["mean_normalized"][1])
    assert not np.allclose(values["sum"][0], values["sum_normalized"][0])


def test_streams_are_reproducible_and_distinct():
    rows_a, raw_a = approx.run_cell(8, [2, 4], ["mean", "projection"], 50, seed=0)
    rows_b, raw_b = approx.run_cell(8, [2, 4], ["mean", "projection"], 50, seed=0)
    _, raw_c = approx.run_cell(8, [2, 4], ["mean", "projection"], 50, seed=1)
    assert rows_a == rows_b
    assert not np.allclose(raw_a[(8, 2, "mean", None)][0], raw_c[(8, 2, "mean", None)][0])
    seeds = {approx.setting_seed(0, "normal", n, k, g).generate_state(2).tobytes()
             for n in (1, 2) for k in (1, 2) for g in ("conical", "projection")}
    assert len(seeds) == 8


def test_summarize_uses_student_t_interval():
    mean, std, ci = approx.summarize(np.array([1.0, 2.0, 3.0, 4.0]))
    assert (mean, std) == (2.5, pytest.approx(np.std([1, 2, 3, 4], ddof=1)))
    assert ci == pytest.approx(stats.t.ppf(0.975, 3) * std / 2)


def test_single_is_one_row_per_n_at_k_1():
    rows, _ = approx.run_cell(4, [2, 8], list(approx.METHODS), 20, seed=0)
    single = [r for r in rows if r["method"] == "single"]
    assert [r["k"] for r in single] == [1]
    assert len(rows) == 1 + 2 * 5
    projection_k8 = next(r for r in rows if r["method"] == "projection" and r["k"] == 8)
    assert projection_k8["cos_mean"] == pytest.approx(1.0, abs=1e-12)  # k > n: n tangents


def test_cone_cell_writes_angle_and_projection_ignores_it():
    rows, _ = approx.run_cell(16, [16], ["mean", "projection"], 50, seed=0, sampler="cone",
                              angle_deg=15.0)
    by_method = {r["method"]: r for r in rows}
    assert {r["angle_deg"] for r in rows} == {15.0}
    assert by_method["projection"]["cos_mean"] == pytest.approx(1.0, abs=1e-9)
    assert by_method["mean"]["cos_mean"] < 0.5  # a narrow cone: the mean stays near v_1


# ---- config and the script -----------------------------------------------------------------

SCRIPT = "experiments/approximation_quality.py"
SMALL = ["--n", "1,4,16", "--k", "1,2,8", "--samples", "40", "--no-progress"]


def test_script_smoke_writes_schema_and_raw_and_both_grids_share_a_directory(tmp_path, script):
    out = tmp_path / "run"
    for extra in ([], ["--cone"]):  # the cone grid joins the same directory (same config)
        done = script(SCRIPT, "--preset", "smoke", "--out", out, "--raw", "--no-progress",
                      *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    with open(out / "approximation_quality.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(approx.COLUMNS)
        rows = list(reader)
    normal = [r for r in rows if r["sampler"] == "normal"]
    cone = [r for r in rows if r["sampler"] == "cone"]
    preset = approx.PRESETS["smoke"]
    assert len(normal) == len(preset.n) * (1 + 5 * len(preset.k))
    assert len(cone) == len(preset.cone_angles) * len(preset.cone_k) * 2
    assert all(r["angle_deg"] == "" for r in normal) and all(r["angle_deg"] for r in cone)
    assert all(0 <= float(r["cos_mean"]) <= 1 + 1e-9 for r in rows)
    raw = np.load(out / "approximation_quality_raw.npz")
    assert raw["normal/n=4/k=4/projection/cos"].shape == (preset.samples,)
    assert "cone/n=16/k=4/mean/angle=30/norm_ratio" in raw.files
    assert (out / "approximation_quality.manifest.json").exists()


def test_cells_give_the_rows_of_run_cell():
    config = approx.resolve(approx.PRESETS["smoke"], {"n": [1, 4], "k": [2], "samples": 20})
    cells = approx.cells(config)
    assert [cid for cid, _ in cells] == ["normal/n=1", "normal/n=4"]
    rows, _ = approx.run_cell(**cells[1][1])
    assert rows == approx.run_cell(4, [2], approx.METHODS, 20, seed=0)[0]
    cone = approx.cells(config, cone=True)
    assert [cid for cid, _ in cone] == ["cone/n=16/angle=30", "cone/n=16/angle=90"]


@pytest.mark.parametrize("overrides,cone,message", [
    ({"methods": ["mean", "bogus"]}, False, "unknown method 'bogus'"),
    ({"k": [0]}, False, "every k must be >= 1"), ({"k": [2, -1]}, False, "every k must be >= 1"),
    ({"n": [0]}, False, "every n must be >= 1"), ({"samples": 1}, False, "--samples must be >= 2"),
    ({"angles": [30.0]}, False, "only with --cone"), ({"angles": [0.0]}, True, "cone angles"),
    ({"k": [2, 2]}, False, "lists a value twice"), ({"methods": ["single"]}, True, "for the cone"),
    ({"n": [1], "k": [4]}, True, "needs n >= 2"), ({"engine": "fast"}, False, "unknown engine"),
])
def test_bad_settings_are_one_value_error(overrides, cone, message):
    with pytest.raises(ValueError, match=message):
        approx.validate(approx.resolve(approx.PRESETS["smoke"], overrides, cone), cone)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, script):
    out = tmp_path / "run"
    done = script(SCRIPT, "--out", out, *SMALL, "--methods", "mean,bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_rerun_skips_done_cells_and_another_config_is_refused(tmp_path, script):
    out = tmp_path / "run"
    assert script(SCRIPT, "--out", out, *SMALL).returncode == 0
    before = (out / "approximation_quality.csv").read_bytes()
    again = script(SCRIPT, "--out", out, *SMALL)
    assert again.returncode == 0 and "0 cells computed, 3 already done" in again.stdout
    assert (out / "approximation_quality.csv").read_bytes() == before
    other = script(SCRIPT, "--out", out, *SMALL[:-2], "41", "--no-progress")
    assert other.returncode == 2 and (out / "approximation_quality.csv").read_bytes() == before


def test_flags_override_the_cone_grid_only_with_cone():
    paper = approx.PRESETS["paper"]
    config = approx.resolve(paper, {"k": [2, 4], "angles": [45.0]}, cone=True)
    assert config.cone_k == (2, 4) and config.cone_angles == (45.0,)
    assert config.k == paper.k
    assert approx.resolve(paper, {"k": [2, 4]}).k == (2, 4)
    assert approx.resolve(paper, {"samples": "50"}).samples == 50  # --set style strings


# ---- figures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_frame():
    rows = []
    for n in (1, 4, 16):
        rows += approx.run_cell(n, [1, 2, 8], list(approx.METHODS), 30, seed=0)[0]
    for angle in (30.0, 90.0):
        rows += approx.run_cell(16, [2, 8], ["mean", "projection"], 30, seed=0,
                                sampler="cone", angle_deg=angle)[0]
    return pd.DataFrame(rows)


def test_figure3_on_a_tiny_frame(tiny_frame):
    fig = plots.figure3(tiny_frame)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * 3  # cosine and norm ratio panels for n = 1, 4, 16
    assert all(ax.get_xscale() == "log" for ax in visible)
    assert any("30 draws" in t.get_text() for t in fig.texts)
    assert len(visible[0].collections) >= 6  # a 95% CI band per method


def test_figure5a_axes_draws_mean_and_projection(tiny_frame):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    plots.figure5a_axes(ax, tiny_frame)
    labels = [line.get_label() for line in ax.get_lines()]
    assert sum(label.startswith("mean") for label in labels) == 2
    assert sum(label.startswith("projection") for label in labels) == 2
    assert list(ax.get_lines()[0].get_xdata()) == [30.0, 90.0]
    plt.close(fig)
    assert plots.figure5a(tiny_frame).axes


def test_figure3_panel_choice():
    assert plots.figure3_panel_ns([2 ** e for e in range(15)]) == [2 ** e for e in range(0, 15, 2)]
    assert plots.figure3_panel_ns([4, 1, 16]) == [1, 4, 16]
