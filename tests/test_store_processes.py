"""The results store under real processes: concurrent writers, SIGKILL at random points.

Most trials use a tiny writer (RunDir directly, without importing torch, so that many writers
really overlap); one case runs the real experiments/closed_form.py twice at once.
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ENV, ROOT, run_script
from fgexp.results import read_csv_rows

WRITER = textwrap.dedent("""
    import os, sys, time, types
    # fgexp/__init__ imports torch (seconds); the store needs none of it, and fast starts make
    # the writers overlap for real.
    package = types.ModuleType("fgexp")
    package.__path__ = [os.path.join(sys.argv[1], "fgexp")]
    sys.modules["fgexp"] = package
    from fgexp.results import RunDir
    out, cells, pause = sys.argv[2], sys.argv[3].split(","), float(sys.argv[4])
    rename_pause = float(os.environ.get("RENAME_PAUSE", "0"))
    if rename_pause:  # widen the window between a shard's temporary and its rename
        real_replace = os.replace
        def slow_replace(src, dst):
            time.sleep(rename_pause)
            real_replace(src, dst)
        os.replace = slow_replace
    run = RunDir(out, "toy", {"grid": "toy"}, ["cell", "i", "value"], ["cell", "i"],
                 argv=["writer"]).start("toy")
    done = run.done()
    for cell in cells:
        if cell in done:
            continue
        time.sleep(pause)
        run.write_cell(cell, [{"cell": cell, "i": i, "value": int(cell[1:]) / (i + 3)}
                              for i in range(3)])
    run.finish()
""")


@pytest.fixture
def writer(tmp_path):
    path = tmp_path / "writer.py"
    path.write_text(WRITER)

    def start(out, cells, pause=0.0, rename_pause=0.0):
        env = {**ENV, "RENAME_PAUSE": str(rename_pause)}
        return subprocess.Popen([sys.executable, str(path), str(ROOT), str(out),
                                 ",".join(cells), str(pause)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return start


def _cells(numbers):
    return [f"c{n}" for n in numbers]


def _finish(proc, timeout=60):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def _reference(writer, out, cells):
    _finish(writer(out, cells))
    return (out / "toy.csv").read_bytes()


def _temporaries(out):
    return [p for p in out.rglob(".*") if p.name.endswith(".tmp")]


def _concurrent_trials(tmp_path, writer, trials):
    everything = _cells(range(120))
    expected = _reference(writer, tmp_path / "reference", everything)
    assert expected.count(b"\n") == 1 + 3 * 120
    plans = [_cells(range(0, 60)), _cells(range(30, 90)), _cells(range(0, 120, 2)),
             _cells(range(1, 120, 2)), _cells(range(119, 59, -1))]  # overlapping and disjoint
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        procs = [writer(out, plan, pause=random.uniform(0, 0.004)) for plan in plans]
        for proc in procs:
            _finish(proc)
        assert (out / "toy.csv").read_bytes() == expected, f"trial {trial}"
        assert not _temporaries(out)


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path, writer):
    _concurrent_trials(tmp_path, writer, trials=2)


@pytest.mark.slow
def test_concurrent_writers_lose_and_duplicate_nothing_many_trials(tmp_path, writer):
    _concurrent_trials(tmp_path, writer, trials=25)


def _kill_trials(tmp_path, writer, trials):
    cells = _cells(range(40))
    expected = _reference(writer, tmp_path / "reference", cells)
    rng = random.Random(14)
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        # Half the trials stretch the window between a shard's temporary and its rename, so
        # the kill lands mid-write with a temporary on disk.
        rename_pause = 0.05 if trial % 2 else 0.0
        proc = writer(out, cells, pause=0.01, rename_pause=rename_pause)
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _finish(writer(out, cells))
        assert (out / "toy.csv").read_bytes() == expected, f"trial {trial}"
        assert not _temporaries(out), f"trial {trial}: temporaries left"


def test_sigkill_at_random_points_then_rerun_gives_the_same_bytes(tmp_path, writer):
    _kill_trials(tmp_path, writer, trials=3)


@pytest.mark.slow
def test_sigkill_at_random_points_many_trials(tmp_path, writer):
    _kill_trials(tmp_path, writer, trials=30)


def test_kill_mid_write_leaves_a_temporary_the_rerun_removes(tmp_path, writer):
    out = tmp_path / "out"
    proc = writer(out, _cells(range(5)), rename_pause=30)
    deadline = time.time() + 30
    while not _temporaries(out) and time.time() < deadline:
        time.sleep(0.02)
    assert _temporaries(out), "the writer never reached its first rename"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _temporaries(out) and not list((out / "toy.cells").glob("*.csv"))
    _finish(writer(out, _cells(range(5))))
    assert not _temporaries(out)
    assert (out / "toy.csv").read_bytes() == _reference(writer, tmp_path / "ref", _cells(range(5)))


# ---- one real experiment ----------------------------------------------------------------------

CLOSED_FORM = ["--preset", "paper", "--functions", "sphere", "--n", "1,2,4,8,16",
               "--gradients", "bp,fg-mean:1,frog:2", "--max-steps", "20", "--seeds", "0",
               "--no-progress", "--lr-table", str(ROOT / "results" / "lrs" / "closed_form.csv")]


def _closed_form_concurrently(tmp_path, trials):
    """The issue's reproduction, shrunk: two closed_form.py into one --out with overlapping
    --only selections; every cell of the union must hold its rows exactly once."""
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        procs = [subprocess.Popen([sys.executable, str(ROOT / "experiments/closed_form.py"),
                                   *CLOSED_FORM, "--out", str(out), "--only", only], env=ENV,
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for only in ("n=1,4,16", "n=2,4,8")]
        for proc in procs:
            _finish(proc, timeout=300)
        rows = read_csv_rows(out / "closed_form.csv")
        keys = [(r["n"], r["gradient"], r["k"]) for r in rows]
        assert len(keys) == len(set(keys)) == 5 * 3, f"trial {trial}"
        assert {r["n"] for r in rows} == {"1", "2", "4", "8", "16"}
        if trial == 1:  # done-ness agrees with the rows (one more torch start: slow runs only)
            again = run_script("experiments/closed_form.py", *CLOSED_FORM, "--out", out)
            assert again.returncode == 0 and "0 cells computed, 5 already done" in again.stdout


def test_closed_form_writers_at_once_lose_nothing(tmp_path):
    _closed_form_concurrently(tmp_path, trials=1)


@pytest.mark.slow
def test_closed_form_writers_at_once_many_trials(tmp_path):
    _closed_form_concurrently(tmp_path, trials=4)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete", "cut at a line", "cut mid-value"])
def test_approximation_csv_damage_is_rebuilt_without_recompute(tmp_path, damage):
    args = ["experiments/approximation_quality.py", "--n", "1,4,16", "--k", "1,4",
            "--samples", "50", "--no-progress", "--out", tmp_path]
    assert run_script(*args).returncode == 0
    csv_path = tmp_path / "approximation_quality.csv"
    good = csv_path.read_bytes()
    if damage == "delete":
        csv_path.unlink()
    elif damage == "cut at a line":
        csv_path.write_bytes(good[:good.index(b"\n", 200) + 1])
    else:
        os.truncate(csv_path, len(good) - 5)
    again = run_script(*args)
    assert again.returncode == 0 and "0 cells computed, 3 already done" in again.stdout
    assert csv_path.read_bytes() == good
