"""Smoke runs of experiments/fc_mnist.py and experiments/resnet_vit.py, their bad-input exits,
the LR-search tasks, and the Figure 6 / network-table builders."""
import csv
import dataclasses
import re

import pytest

from fgexp.nn import runs as nets


@pytest.fixture
def net(script):
    """A real subprocess run of experiments/<name>, as `make smoke` does it."""
    return lambda name, *args: script(f"experiments/{name}", *args, "--no-progress")


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fc_smoke_writes_schema_and_resumes(tmp_path, net):
    done = net("fc_mnist.py", "--preset", "smoke", "--out", str(tmp_path),
               "--checkpoints", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "fc_mnist.csv")
    assert list(table[0]) == list(nets.COLUMNS)
    assert len(table) == 3 * 2  # bp, fg k=1, frog k=2; two epochs each
    assert {r["k"] for r in table if r["gradient"] == "bp"} == {""}
    assert {(r["mode"], r["perturbation"]) for r in table} == {("simulated", "activity")}
    assert float(table[1]["train_loss"]) < float(table[0]["train_loss"])  # bp learns
    assert not list((tmp_path / "ckpt").glob("*.pt"))  # checkpoints go once a run is saved
    before = (tmp_path / "fc_mnist.csv").read_text()
    again = net("fc_mnist.py", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0 and (tmp_path / "fc_mnist.csv").read_text() == before


def test_forward_mode_matches_simulated_on_a_run(tmp_path, net):
    out = {}
    for mode in ("forward", "simulated"):
        done = net("fc_mnist.py", "--preset", "smoke", "--gradients", "frog:2", "--epochs", "1",
                      "--mode", mode, "--out", tmp_path / mode)
        assert done.returncode == 0, done.stderr
        out[mode] = rows(tmp_path / mode / "fc_mnist.csv")[0]
    assert float(out["forward"]["val_loss"]) == pytest.approx(float(out["simulated"]["val_loss"]),
                                                              rel=1e-3)


def test_resnet_vit_smoke(tmp_path, net):
    done = net("resnet_vit.py", "--preset", "smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "resnet_vit.csv")
    assert {(r["model"], r["gradient"]) for r in table} == {
        (m, g) for m in ("resnet18", "vit") for g in ("bp", "frog")}
    assert {r["width"] for r in table} == {""}


SMOKE = nets.PRESETS["fc_mnist"]["smoke"]


@pytest.mark.parametrize("overrides, message", [
    ({"models": ("mlp",)}, "unknown model 'mlp'"),
    ({"datasets": ("imagenet",)}, "unknown data set 'imagenet'"),
    ({"widths": (0,)}, "width must be >= 1"),
    ({"gradients": ("fg-mean:0",)}, "k must be >= 1"),
    ({"gradients": ("adam:2",)}, "unknown gradient"),
    ({"seeds": ()}, "no seeds given"),
    ({"max_epochs": 0}, "max_epochs must be >= 1"),
    ({"lr": float("nan")}, "finite number > 0"), ({"lr": -1.0}, "finite number > 0"),
    ({"lr": float("inf")}, "finite number > 0"),
    ({"datasets": ("mnist",), "data_root": "/no/such/dir"}, "does not exist"),
])
def test_bad_configs_are_one_error_before_compute(overrides, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        nets.validate(dataclasses.replace(SMOKE, **overrides))


def test_a_huge_finite_rate_is_not_refused():
    # 1e39 overflows float32 during training (recorded as diverged there), but is a valid rate
    nets.validate(dataclasses.replace(SMOKE, lr=1e39))


def test_missing_rate_or_table_names_the_search():
    # the cpu preset's table has a recipe: the line names its make target for that setting
    cpu = dataclasses.replace(nets.PRESETS["fc_mnist"]["cpu"], lr_table="/no/such/table.csv")
    frog = [r for r in nets.runs(cpu) if r.gradient == "frog" and r.k == 4 and r.width == 1024]
    with pytest.raises(ValueError, match=re.escape(
            "make lrs-fc-cpu ARGS='--select model=fc --select width=1024 --select gradient=frog "
            "--select k=4'")):
        nets.learning_rates(cpu, "fc_mnist:cpu", frog[:1])
    paper = dataclasses.replace(nets.PRESETS["fc_mnist"]["paper"], lr_table="/no/such/table.csv")
    with pytest.raises(ValueError, match="make lr-search TASK=fc_mnist:paper$"):
        nets.learning_rates(paper, "fc_mnist:paper", nets.runs(paper)[:1])


def test_missing_rate_names_the_recipe_of_its_own_table(tmp_path):
    """Two recipes search resnet_vit:cpu; the line names the one whose table is missing."""
    cpu = nets.PRESETS["resnet_vit"]["cpu"]
    (frog,) = [r for r in nets.runs(cpu) if r.model == "resnet18" and r.gradient == "frog"
               and r.k == 16]
    for table, target in ((tmp_path / "lrs" / "resnet_vit.csv", "lrs-resnet-vit-cpu "),
                          (tmp_path / "lrs" / "held_stats" / "resnet_vit.csv",
                           "lrs-resnet-vit-cpu-held-stats ")):
        with pytest.raises(ValueError, match=re.escape(
                f"make {target}ARGS='--select model=resnet18 --select gradient=frog "
                "--select k=16'")):
            nets.learning_rates(dataclasses.replace(cpu, lr_table=str(table)), "resnet_vit:cpu",
                                [frog])


def test_bad_input_is_one_line_and_exit_2(tmp_path, net):
    done = net("fc_mnist.py", "--preset", "cpu", "--lr-table", "/no/such/table.csv",
                  "--out", tmp_path / "out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "make lrs-fc-cpu ARGS=" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_mnist_files_name_the_place(tmp_path):
    paper = dataclasses.replace(nets.PRESETS["fc_mnist"]["paper"], data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        nets.load_data(paper, "mnist")


def test_lr_tasks_yield_per_epoch_losses():
    from fgexp.lr.registry import get_task
    task = get_task("fc_mnist", "smoke", max_epochs="2", search_epochs="none")
    assert [s["gradient"] for s in task.settings()] == ["bp", "fg-mean", "frog"]
    losses = list(task.objective(task.settings()[0], 0.1, seed=0))
    assert len(losses) == 2 and losses[1] <= losses[0]
    assert list(task.objective(task.settings()[0], 1e4, seed=0))[-1] == float("inf")
    assert get_task("resnet_vit", "paper", download="true").horizon(task.settings()[0]) == 50
    with pytest.raises(ValueError, match="unknown option"):
        get_task("fc_mnist", "smoke", depth="3")


def test_figure6_and_table_builders(tmp_path, net, script):
    out, fig = tmp_path / "res", tmp_path / "fig"
    done = net("fc_mnist.py", "--preset", "smoke", "--widths", "16,32", "--epochs", "1",
                  "--out", out)
    assert done.returncode == 0, done.stderr
    (out / "resnet_vit.csv").write_text((out / "fc_mnist.csv").read_text())
    for figure in ("figure6", "table-networks"):
        drawn = script("experiments/plot.py", figure, "--results", out, "--figures", fig)
        assert drawn.returncode == 0, drawn.stderr
    assert (fig / "figure6.png").stat().st_size > 10_000
    table = rows(fig / "table_networks.csv")
    assert [(r["gradient"], r["k"], r["width"]) for r in table] == [
        ("bp", "", "16"), ("bp", "", "32"), ("fg-mean", "1", "16"), ("fg-mean", "1", "32"),
        ("frog", "2", "16"), ("frog", "2", "32")]
    assert all(r["n"] == "1" for r in table)
    assert "| bp |" in (fig / "table_networks.md").read_text()


def test_list_runs_gives_one_line_per_paper_run_that_lists_itself(net):
    listed = net("resnet_vit.py", "--preset", "paper", "--download", "--list-runs")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 * 2 * 8 * 3  # models x data sets x gradients x seeds
    assert len(set(lines)) == len(lines)
    assert lines[0].startswith("--preset paper --models resnet18 --datasets mnist --gradients bp "
                               "--seeds 0")
    again = net("resnet_vit.py", *lines[0].split(), "--download", "--list-runs")
    assert again.stdout.strip().splitlines() == [lines[0]]


def test_gradients_and_k_follow_the_one_rule(net):
    # an explicit :k wins, a bare label takes --k; --k alone applies to the preset's labels
    listed = net("fc_mnist.py", "--preset", "paper", "--download", "--seeds", "0",
                    "--widths", "256", "--gradients", "bp,fg-mean:1,frog", "--k", "4,16",
                    "--list-runs")
    assert listed.returncode == 0, listed.stderr
    gradients = [line.split("--gradients ")[1].split()[0] for line in listed.stdout.splitlines()]
    assert gradients == ["bp", "fg-mean:1", "frog:4", "frog:16"]
