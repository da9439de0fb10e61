"""The plots package: each figure and table on a tiny frame, the CSV checks, the plotting CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fgexp import plots
from fgexp.plots import approximation, networks, style
from fgexp.plots.data import CSVError, read_results

REPO = Path(__file__).resolve().parents[1]


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


@pytest.fixture
def approximation_frame() -> pd.DataFrame:
    """Two dimensions, k = 1, 2, 4, Gaussian tangents; one dimension with cone tangents."""
    rows = []
    for n in (4, 16):
        for k in (1, 2, 4):
            for method in ("single", "mean", "sum", "projection"):
                if method == "single" and k > 1:
                    continue
                rows.append(dict(n=n, k=k, method=method, sampler="normal", angle_deg=np.nan,
                                 samples=100, cos_mean=0.5, cos_ci95=0.05,
                                 norm_ratio_mean=1.5, norm_ratio_ci95=0.1))
    for angle in (15.0, 30.0):
        for k in (2, 4):
            for method in ("mean", "projection"):
                rows.append(dict(n=4, k=k, method=method, sampler="cone", angle_deg=angle,
                                 samples=100, cos_mean=0.7, cos_ci95=0.05,
                                 norm_ratio_mean=1.0, norm_ratio_ci95=0.1))
    return pd.DataFrame(rows)


GRADIENTS = (("bp", np.nan), ("fg-mean", 1), ("frog", 2))


@pytest.fixture
def closed_form_frame() -> pd.DataFrame:
    """Every function at n = 2 and 4, three gradients, two seeds; cone rows for Figure 5b."""
    rows = [dict(function=f, n=n, gradient=g, k=k, sampler="normal", angle_deg=np.nan,
                 seed=seed, lr=0.01, best_value=float(n + seed) * (-40 if f == "styblinski-tang"
                                                                  else 1e-3))
            for f in ("sphere", "rosenbrock", "styblinski-tang") for n in (2, 4)
            for g, k in GRADIENTS for seed in (0, 1)]
    rows += [dict(function="styblinski-tang", n=4, gradient=g, k=16, sampler="cone",
                  angle_deg=angle, seed=seed, lr=0.01, best_value=-120.0 - seed)
             for g in ("fg-mean", "frog") for angle in (15.0, 30.0) for seed in (0, 1)]
    return pd.DataFrame(rows)


@pytest.fixture
def network_frame() -> pd.DataFrame:
    """FC runs at two widths, three gradients, two seeds, two epochs each."""
    return pd.DataFrame([
        dict(model="fc", dataset="mnist", width=width, gradient=g, k=k, mode="forward",
             perturbation="activity", seed=seed, epoch=epoch, test_acc=0.8 + 0.05 * epoch,
             test_loss=1.0 / epoch, status="completed")
        for width in (16, 32) for g, k in GRADIENTS for seed in (0, 1) for epoch in (1, 2)])


def test_gradient_order_is_the_papers():
    assert style.GRADIENT_ORDER[:3] == ("bp", "fg-mean", "frog")
    assert style.gradient_rank("bp") < style.gradient_rank("frog") < style.gradient_rank("x")


def test_figure3_has_a_cosine_and_a_norm_ratio_panel_per_n(approximation_frame):
    fig = plots.figure3(approximation_frame)
    axes = fig.axes
    assert len(axes) == 4  # (cos, ratio) x (n = 4, 16)
    assert [ax.get_title() for ax in axes[:2]] == ["$n = 2^{2}$", "$n = 2^{4}$"]
    assert axes[0].get_ylabel() == approximation.COS_LABEL
    assert axes[2].get_ylabel() == approximation.RATIO_LABEL
    assert axes[3].get_xlabel() == "number of tangents $k$"
    labels = legend_texts(fig.legends[0])
    assert [approximation.APPROX_STYLE[m][2] for m in ("single", "sum", "mean", "projection")] \
        == labels[:4]
    assert labels[4:] == ["theory (exact expectation)", "$k = n$"]
    assert "100 draws per point" in fig._suptitle.get_text()


def test_figure5a_draws_a_line_per_method_and_k(approximation_frame):
    fig = plots.figure5a(approximation_frame)
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("cone angle")
    assert ax.get_ylabel() == approximation.COS_LABEL
    assert "$n = 4$" in ax.get_title()
    labels = legend_texts(ax.get_legend())
    assert {"mean, $k=2$", "mean, $k=4$", "projection, $k=2$", "projection, $k=4$"} <= set(labels)
    assert list(ax.get_xticks()) == [15.0, 30.0]


def test_figure4_has_a_panel_per_function(closed_form_frame):
    fig = plots.figure4(closed_form_frame)
    assert [ax.get_title() for ax in fig.axes] == ["Sphere", "Rosenbrock", "Styblinski-Tang"]
    assert all(ax.get_xlabel() == "dimension $n$" for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log" and fig.axes[2].get_yscale() == "linear"
    assert "per dimension" in fig.axes[2].get_ylabel()
    assert legend_texts(fig.legends[0]) == ["BP", "FG ($k=1$)", "FROG (projection), $k=2$",
                                            "global minimum"]
    assert "n = 2 seeds" in fig._suptitle.get_text()


def test_figure5_pairs_cosine_and_best_value_against_the_angle(approximation_frame,
                                                               closed_form_frame):
    fig = plots.figure5(approximation_frame, closed_form_frame)
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel()
    assert "Styblinski-Tang, $n = 4$" in right.get_title()
    assert legend_texts(right.get_legend()) == ["FG mean, $k=16$", "FROG (projection), $k=16$",
                                                "global minimum"]


def test_table_c_has_a_column_per_seed_and_ignores_row_order(closed_form_frame):
    table = plots.table_c(closed_form_frame)
    assert list(table.columns) == ["n", "gradient", "k", "lr", "seed 0", "seed 1", "mean"]
    assert list(zip(table["n"], table["gradient"])) == [(2, "bp"), (2, "fg-mean"), (2, "frog"),
                                                        (4, "bp"), (4, "fg-mean"), (4, "frog")]
    assert table["mean"].iloc[0] == pytest.approx((2e-3 + 3e-3) / 2)
    shuffled = plots.table_c(closed_form_frame.sample(frac=1.0, random_state=0))
    pd.testing.assert_frame_equal(shuffled.reset_index(drop=True), table.reset_index(drop=True))
    markdown = style.markdown_table(table, "{:.3g}")
    assert markdown.splitlines()[0] == "| n | gradient | k | lr | seed 0 | seed 1 | mean |"
    assert "| 2 | bp |  | 0.01 | 0.002 | 0.003 | 0.0025 |" in markdown


def test_figure6_legend_names_each_gradient_with_n(network_frame):
    fig = plots.figure6(network_frame, curve_width=32)
    left, right = fig.axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("hidden layer width", "best test error (%)")
    assert (right.get_xlabel(), right.get_ylabel()) == ("epoch", "test loss")
    assert "width 32" in right.get_title()
    assert legend_texts(fig.legends[0]) == ["BP (n=2)", "FG single tangent (k=1) (n=2)",
                                            "FROG (projection), k=2 (n=2)"]
    assert len(right.get_lines()) == 3  # one mean test-loss curve per gradient


def test_table_networks_reports_mean_std_and_n(network_frame):
    table = plots.table_networks(network_frame)
    assert [(g, k, w) for g, k, w in zip(table["gradient"], table["k"], table["width"])] == \
        [("bp", "", "16"), ("bp", "", "32"), ("fg-mean", "1", "16"), ("fg-mean", "1", "32"),
         ("frog", "2", "16"), ("frog", "2", "32")]
    assert list(table["n"]) == [2] * 6  # two seeds per gradient and width
    assert table["test_error_pct"].iloc[0] == pytest.approx(10.0)
    markdown = plots.table_networks_markdown(table)
    assert markdown.splitlines()[0] == "| gradient | k | fc-16 / mnist | fc-32 / mnist |"
    assert "| bp |  | 10.00 ± 0.00 (n=2) | 10.00 ± 0.00 (n=2) |" in markdown


def test_network_plots_do_not_read_wall_times(network_frame):
    with_times = network_frame.assign(epoch_seconds=np.arange(len(network_frame), 0, -1.0))
    pd.testing.assert_frame_equal(networks.table_networks(with_times),
                                  networks.table_networks(network_frame))


def test_benchmark_figure_labels_every_method():
    rows = [{"model": "fc", "batch": 64, "method": m, "time_ratio_to_bp": r,
             "memory_ratio_to_bp": r, "device": "cpu"}
            for m, r in (("bp", 1.0), ("forward-weight-frog-k4", 2.0))]
    fig = plots.benchmark_steps(pd.DataFrame(rows))
    time_ax, memory_ax = fig.axes
    assert [t.get_text() for t in time_ax.get_yticklabels()] == ["bp", "forward-weight-frog-k4"]
    assert memory_ax.get_title() == "fc, batch 64: peak tensor memory / bp"


# Reading CSVs: every malformation is one error naming the file.

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("a,b\n", "a header but no rows"),
    ("a,b\n1,2\n3,", "cut short"),
    ("a,b\n1,2\n3\n", "line 3 has 1 fields"),
    ("a\n1\n", "missing column b"),
    ("a,b\n1,2\n3,four\n", "column b, line 3: 'four' is not a number"),
])
def test_malformed_csvs_are_refused_naming_the_file(tmp_path, text, message):
    path = write(tmp_path / "x.csv", text)
    with pytest.raises(CSVError, match=message) as err:
        read_results(path, numeric=("a", "b"))
    assert str(err.value).startswith(str(path))


def test_rows_come_sorted_and_empty_numbers_are_nan(tmp_path):
    path = write(tmp_path / "x.csv", "a,b\n2,\n1,5\n")
    df = read_results(path, numeric=("a", "b"))
    assert list(df["a"]) == [1, 2] and np.isnan(df["b"].iloc[1])


# The CLI, through real processes (about 2 s each).

def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "plot.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_draws_figure4_from_a_csv(tmp_path, closed_form_frame):
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    closed_form_frame.to_csv(results / "closed_form.csv", index=False)
    done = plot("figure4", "--results", str(results), "--figures", str(figures))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in figures.iterdir()) == ["figure4.pdf", "figure4.png"]


@pytest.mark.parametrize("case", ["figures-is-a-file", "cut-mid-line", "nothing-to-plot"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, closed_form_frame, case):
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    csv_path = results / "closed_form.csv"
    closed_form_frame.to_csv(csv_path, index=False)
    args = ["figure4", "--results", str(results), "--figures", str(figures)]
    if case == "figures-is-a-file":
        args[-1], expected = str(csv_path), f"--figures {csv_path}: not a directory"
    elif case == "cut-mid-line":
        csv_path.write_text(csv_path.read_text()[:-7])
        expected = f"{csv_path}: the last line is cut short"
    else:
        csv_path.unlink()
        args = ["all", "--allow-missing", *args[1:]]
        expected = f"nothing to plot: {results}"
    done = plot(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {expected}") and done.stderr.count("\n") == 1
    assert not figures.exists()
