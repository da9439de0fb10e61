import json
import os

import pytest

from fgexp import results

COLUMNS = ["n", "k", "method", "value"]
KEYS = ["n", "k", "method"]


def _run(tmp_path, config=None):
    return results.RunDir(tmp_path / "run", "exp", config or {"preset": "smoke", "n": [1, 2]},
                          COLUMNS, KEYS, argv=["exp.py", "--preset", "smoke"])


def _cells():
    return {f"n={n}": [{"n": n, "k": 1, "method": "mean", "value": n / 3}] for n in (1, 2, 3)}


def _execute(run, cells, crash_after=None):
    """A tiny experiment loop: skip DONE cells, write the rest, optionally 'crash'."""
    computed = []
    done = run.done()
    for i, (cell_id, rows) in enumerate(cells.items()):
        if cell_id in done:
            continue
        if crash_after is not None and len(computed) == crash_after:
            raise KeyboardInterrupt
        computed.append(cell_id)
        run.write_cell(cell_id, rows)
    run.finish()
    return computed


def test_manifest_records_provenance(tmp_path):
    run = _run(tmp_path).start(preset="smoke")
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["config"] == {"preset": "smoke", "n": [1, 2]}
    assert manifest["argv"] == ["exp.py", "--preset", "smoke"]
    assert manifest["preset"] == "smoke"
    for key in ("git_commit", "environment", "started"):
        assert manifest[key]
    assert manifest["environment"]["packages"]["torch"]
    _execute(run, _cells())
    assert json.loads(run.manifest_path.read_text())["ended"]


def test_interrupted_run_resumes_without_redoing_done_cells(tmp_path):
    run = _run(tmp_path).start()
    with pytest.raises(KeyboardInterrupt):
        _execute(run, _cells(), crash_after=2)
    assert run.done() == {"n=1", "n=2"}
    rerun = _run(tmp_path).start()
    assert _execute(rerun, _cells()) == ["n=3"]
    rows = rerun.rows()
    assert [r["n"] for r in rows] == ["1", "2", "3"]
    assert json.loads(rerun.manifest_path.read_text())["sessions"].__len__() == 2


def test_rewritten_cell_replaces_its_rows_instead_of_duplicating(tmp_path):
    run = _run(tmp_path).start()
    run.write_cell("n=1", _cells()["n=1"])
    run.done_path.unlink()          # as if the process died between the CSV and the DONE write
    run.write_cell("n=1", _cells()["n=1"])
    assert len(run.rows()) == 1


def test_second_writer_with_different_config_is_refused(tmp_path):
    run = _run(tmp_path).start()
    _execute(run, _cells())
    before = run.csv_path.read_bytes(), run.manifest_path.read_bytes()
    other = _run(tmp_path, {"preset": "paper", "n": [1, 2]})
    with pytest.raises(results.ResultsError, match="different config.*differs in: preset"):
        other.start()
    assert (run.csv_path.read_bytes(), run.manifest_path.read_bytes()) == before


def test_crash_mid_write_leaves_previous_csv_intact(tmp_path, monkeypatch):
    run = _run(tmp_path).start()
    run.write_cell("n=1", _cells()["n=1"])
    before = run.csv_path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError):
        run.write_cell("n=2", _cells()["n=2"])
    monkeypatch.undo()
    assert run.csv_path.read_bytes() == before
    assert run.done() == {"n=1"}
    assert not [p for p in run.dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_malformed_csv_is_refused_before_any_write(tmp_path):
    run = _run(tmp_path).start()
    run.write_cell("n=1", _cells()["n=1"])
    run.csv_path.write_text("n,k,method\n1,1,mean\n")
    with pytest.raises(results.ResultsError, match="malformed CSV"):
        _run(tmp_path).check()
    run.csv_path.write_text("n,k,method,value\n1,1\n")
    with pytest.raises(results.ResultsError, match="wrong number of fields"):
        _run(tmp_path).check()


def test_unwritable_output_is_refused(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/fgexp-results"   # not even root can create files there
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run"
    with pytest.raises(results.ResultsError, match="not writable"):
        results.RunDir(target, "exp", {}, COLUMNS, KEYS).check()


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(results.ResultsError, match="not a directory"):
        results.RunDir(tmp_path / "file", "exp", {}, COLUMNS, KEYS).check()


def test_csv_float_formatting_round_trips(tmp_path):
    run = _run(tmp_path).start()
    run.write_cell("a", [{"n": 1, "k": None, "method": "bp", "value": 0.1 + 0.2}])
    row = run.rows()[0]
    assert row["k"] == "" and float(row["value"]) == 0.1 + 0.2
