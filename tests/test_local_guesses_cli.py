"""experiments/local_guesses.py: bad input is one line before compute; the smoke preset, resumed,
trains nothing twice; the figure is drawn from its CSV."""
import importlib.util

import pytest

from conftest import ROOT


def _script(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the script imports _common
    spec = importlib.util.spec_from_file_location("local_guesses_script",
                                                  ROOT / "experiments" / "local_guesses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BAD = [
    (["--set", "methods=magic:2"], "unknown tangent set 'magic'"),
    (["--set", "methods=blocks:2"], "tangent set 'blocks' needs k >= 3"),
    (["--set", "methods=guess+blocks:3"], "tangent set 'guess+blocks' needs k >= 4"),
    (["--set", "methods=guess"], "tangent set 'guess' needs a number of tangents"),
    (["--perturbation", "weight"], "guessed tangents need activity perturbation"),
    (["--set", "aggregations=median"], "unknown aggregation 'median'"),
    (["--set", "seeds=-1"], "every seed must be >= 0"),
    (["--set", "bogus=1"], "unknown option bogus"),
    (["--set", "max_epochs=x"], "option max_epochs: cannot read 'x'"),
    (["--set", "mode=backward"], "unknown mode 'backward'"),
    (["--only", "fc-w9_nothing"], "--only fc-w9_nothing: no such run"),
    (["--device", "bogus"], "--device 'bogus': not a torch device"),
    (["--preset", "cpu", "--set", "lr=none", "--set", "lr_table=/no/such/table.csv"],
     "no learning-rate table"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_before_compute(tmp_path, capsys, monkeypatch, args, message):
    out = tmp_path / "out"
    status = _script(monkeypatch).main([*args, "--out", str(out), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists()


@pytest.mark.slow
def test_smoke_resumes_and_plots(tmp_path, capsys, monkeypatch):
    from fgexp.plots.registry import BUILDERS
    script, out = _script(monkeypatch), tmp_path / "out"
    assert script.main(["--out", str(out), "--no-progress"]) == 0
    assert script.main(["--out", str(out), "--no-progress"]) == 0
    assert "0 runs trained" in capsys.readouterr().err
    outputs = BUILDERS["local-guesses"].build(out)
    assert "local_guesses" in outputs and "| guess |" in outputs["local_guesses.md"]
