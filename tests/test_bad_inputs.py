"""Bad command lines of the experiment scripts, as real processes: one line naming what is
wrong, exit status 2, before any compute and without creating --out."""
import pytest

SCRIPTS = ("approximation_quality", "closed_form", "fc_mnist", "resnet_vit")
# Small settings, so that an input accepted by mistake finishes quickly (and then fails here).
BASE = {
    "approximation_quality": ["--n", "4", "--k", "2", "--samples", "10"],
    "closed_form": ["--functions", "sphere", "--n", "2", "--max-steps", "5"],
    "fc_mnist": ["--preset", "smoke", "--epochs", "1"],
    "resnet_vit": ["--preset", "smoke", "--epochs", "1"],
}
FAST = [
    ("approximation_quality", ["--n", "2^8..2^4"], "argument --n: descending range"),
    ("approximation_quality", ["--k", "1,,2"], "argument --k: empty item"),
    ("approximation_quality", ["--seed", "-1"], "--seed must be >= 0"),
    ("closed_form", ["--seeds", "2^8..2^4"], "argument --seeds: descending range"),
    ("closed_form", ["--lr-table", "results"], "--lr-table results: not a file"),
    ("closed_form", ["--lr-table", "/no/such/table.csv"], "no learning-rate table"),
    ("closed_form", ["--gradients", "magic:2"], "unknown gradient 'magic'"),
    ("closed_form", ["--k", "0"], "every k must be >= 1"),
    ("closed_form", ["--only", "n=3"], "no cell matches"),
    ("fc_mnist", ["--widths", "2^8..2^4"], "argument --widths: descending range"),
    ("fc_mnist", ["--lr", "nan"], "argument --lr: expected a finite number > 0"),
    ("fc_mnist", ["--lr", "-1"], "argument --lr: expected a finite number > 0"),
    ("fc_mnist", ["--threads", "0"], "--threads must be >= 1"),
    ("fc_mnist", ["--preset", "cpu", "--lr-table", "results"], "--lr-table results: not a file"),
    ("fc_mnist", ["--seeds", "x"], "argument --seeds: expected integers"),
    ("resnet_vit", ["--device", "bogus"], "--device 'bogus': not a torch device"),
    ("resnet_vit", ["--vit-patch", "5"], "vit_patch must divide the image size of mnist5k (28)"),
]
SLOW = [
    ("fc_mnist", ["--models", "mlp"], "unknown model 'mlp'"),
    ("approximation_quality", ["--methods", "mean,bogus"], "unknown method 'bogus'"),
    ("approximation_quality", ["--n", "1.5"], "expected integers"),
    ("approximation_quality", ["--k", "0"], "every k must be >= 1"),
    ("approximation_quality", ["--samples", "1"], "--samples must be >= 2"),
    ("approximation_quality", ["--angles", "30"], "only with --cone"),
    ("approximation_quality", ["--cone", "--angles", "nan"], "cone angles"),
    ("approximation_quality", ["--engine", "fast"], "invalid choice"),
    ("approximation_quality", ["--preset", "nope"], "invalid choice"),
    ("closed_form", ["--n", "0"], "every n must be >= 1"),
    ("closed_form", ["--gradients", "bp,,frog:2"], "empty item"),
    ("closed_form", ["--gradients", "frog:x"], "expected a gradient like 'frog:4'"),
    ("closed_form", ["--gradients", "bp:2"], "bp takes no number of tangents"),
    ("closed_form", ["--k", "4..1"], "descending range"),
    ("closed_form", ["--max-steps", "0"], "--max-steps must be >= 1"),
    ("closed_form", ["--only", "bogus=1"], "expected --only"),
    ("closed_form", ["--cone", "--gradients", "bp"], "bp has no tangents"),
    ("closed_form", ["--threads", "0"], "--threads must be >= 1"),
    ("fc_mnist", ["--datasets", "imagenet"], "unknown data set 'imagenet'"),
    ("fc_mnist", ["--gradients", "fg-mean:0"], "k must be >= 1"),
    ("fc_mnist", ["--k", "2^4..2^1"], "descending range"),
    ("fc_mnist", ["--lr", "inf"], "finite number > 0"),
    ("fc_mnist", ["--epochs", "0"], "max_epochs must be >= 1"),
    ("fc_mnist", ["--preset", "cpu", "--lr-table", "/no/such/table.csv"],
     "make lrs-fc-cpu ARGS='--select model=fc --select width=256 --select gradient=bp'"),
    ("fc_mnist", ["--preset", "paper", "--data-root", "/no/such/dir"], "does not exist"),
    ("resnet_vit", ["--widths", "2^8..2^4"], "descending range"),
    ("resnet_vit", ["--lr", "1e400"], "finite number > 0"),
]


def _check(script, tmp_path, name, args, message):
    out = tmp_path / "out"
    done = script(f"experiments/{name}.py", *BASE[name], *args, "--out", out, "--no-progress")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("name,args,message", FAST)
def test_bad_input_is_one_line_before_compute(script, tmp_path, name, args, message):
    _check(script, tmp_path, name, args, message)


@pytest.mark.slow
@pytest.mark.parametrize("name,args,message", SLOW)
def test_more_bad_input_is_one_line_before_compute(script, tmp_path, name, args, message):
    _check(script, tmp_path, name, args, message)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_runs_as_a_script(script, name):
    done = script(f"experiments/{name}.py", "--help")
    assert done.returncode == 0 and "--preset" in done.stdout and "--out" in done.stdout
