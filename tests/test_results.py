"""fgexp.results / fgexp.store in one process: shards, merge, resume, validation, temporaries."""
import json
import os
import subprocess
import sys
import time

import pytest

from fgexp import results, store

COLUMNS = ["n", "k", "method", "value"]
KEYS = ["n", "k", "method"]


def _run(tmp_path, config=None, **kw):
    return results.RunDir(tmp_path / "run", "exp", config or {"preset": "smoke", "n": [1, 2]},
                          COLUMNS, KEYS, argv=["exp.py", "--preset", "smoke"], **kw)


def _cells():
    return {f"x/n={n}": [{"n": n, "k": 1, "method": "mean", "value": n / 3},
                         {"n": n, "k": 2, "method": "mean", "value": n / 7}] for n in (1, 2, 16)}


def _execute(run, cells, crash_after=None):
    """A tiny experiment loop: skip done cells, write the rest, optionally 'crash'."""
    computed = []
    done = run.done()
    for cell_id, rows in cells.items():
        if cell_id in done:
            continue
        if crash_after is not None and len(computed) == crash_after:
            raise KeyboardInterrupt
        computed.append(cell_id)
        run.write_cell(cell_id, rows)
    run.finish()
    return computed


def _finished(tmp_path):
    run = _run(tmp_path).start(preset="smoke")
    _execute(run, _cells())
    return run


def test_manifest_records_provenance_and_sessions(tmp_path):
    run = _run(tmp_path).start(preset="smoke")
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["config"] == {"preset": "smoke", "n": [1, 2]}
    assert manifest["argv"] == ["exp.py", "--preset", "smoke"]
    assert manifest["store"] == {"layout": results.LAYOUT}
    for key in ("git_commit", "environment", "started"):
        assert manifest[key]
    assert manifest["environment"]["packages"]["torch"]
    _execute(run, _cells())
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["ended"] and manifest["preset"] == "smoke"
    assert len(manifest["sessions"]) == 1 and manifest["sessions"][0]["ended"]


def test_rerun_with_nothing_to_do_leaves_every_file_as_it_was(tmp_path):
    run = _finished(tmp_path)
    before = {p: p.read_bytes() for p in run.dir.rglob("*") if p.is_file()}
    assert _execute(_run(tmp_path).start(), _cells()) == []
    assert {p: p.read_bytes() for p in run.dir.rglob("*") if p.is_file()} == before


def test_interrupted_run_resumes_exactly_the_missing_cells(tmp_path):
    run = _run(tmp_path).start()
    with pytest.raises(KeyboardInterrupt):
        _execute(run, _cells(), crash_after=2)
    assert run.done() == {"x/n=1", "x/n=2"}
    rerun = _run(tmp_path).start()
    assert _execute(rerun, _cells()) == ["x/n=16"]
    assert [r["n"] for r in rerun.rows()] == ["1", "1", "2", "2", "16", "16"]  # natural order
    assert rerun.csv_path.read_text() == store.rows_to_csv(
        [r for rows in _cells().values() for r in rows], COLUMNS)
    assert len(json.loads(rerun.manifest_path.read_text())["sessions"]) == 2


def test_rewritten_cell_replaces_its_shard(tmp_path):
    run = _run(tmp_path).start()
    run.write_cell("x/n=1", _cells()["x/n=1"])
    run.write_cell("x/n=1", _cells()["x/n=1"][:1])
    run.finish()
    assert len(run.rows()) == 1 and len(results.read_csv_rows(run.csv_path, COLUMNS)) == 1


def test_second_writer_with_different_config_is_refused(tmp_path):
    run = _finished(tmp_path)
    before = run.csv_path.read_bytes(), run.manifest_path.read_bytes()
    other = _run(tmp_path, {"preset": "paper", "n": [1, 2]})
    with pytest.raises(results.ResultsError, match="different config.*differs in: preset"):
        other.start()
    assert (run.csv_path.read_bytes(), run.manifest_path.read_bytes()) == before


def test_crash_mid_write_leaves_no_shard_and_no_temporary(tmp_path, monkeypatch):
    run = _run(tmp_path).start()
    run.write_cell("x/n=1", _cells()["x/n=1"])

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError):
        run.write_cell("x/n=2", _cells()["x/n=2"])
    monkeypatch.undo()
    assert run.done() == {"x/n=1"}
    assert not [p for p in run.cells_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["delete", "cut at a line", "cut mid-value", "garble",
                                    "not utf-8", "edit a value"])
def test_damaged_csv_is_rebuilt_from_the_shards(tmp_path, damage, capsys):
    run = _finished(tmp_path)
    good = run.csv_path.read_bytes()
    if damage == "delete":
        run.csv_path.unlink()
    elif damage == "cut at a line":
        run.csv_path.write_bytes(good[:good.index(b"\n", 30) + 1])
    elif damage == "cut mid-value":
        run.csv_path.write_bytes(good[:-5])  # `truncate -s -5`: the field count stays right
    elif damage == "garble":
        run.csv_path.write_bytes(b"\x00garbage,,,\n" + good[40:])
    elif damage == "not utf-8":
        run.csv_path.write_bytes(b"\xff\xfe" + good)
    else:
        run.csv_path.write_bytes(good.replace(b"0.333", b"0.334"))
    assert _execute(_run(tmp_path).start(), _cells()) == []   # nothing recomputed
    assert run.csv_path.read_bytes() == good
    assert "rebuilt from 3 cell shards" in capsys.readouterr().err


def test_reader_gets_a_current_csv(tmp_path):
    run = _finished(tmp_path)
    good = run.csv_path.read_bytes()
    run.csv_path.write_bytes(good[:-5])
    assert results.current_csv(run.dir, "exp") == run.csv_path
    assert run.csv_path.read_bytes() == good


def _refused_before_any_write(tmp_path, match):
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(results.ResultsError, match=match) as err:
        _run(tmp_path).start()
    assert "\n" not in str(err.value)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    return str(err.value)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-5], "checksum line is missing"),
    (lambda b: b[:len(b) // 2], "checksum line is missing"),
    (lambda b: b.replace(b"0.666", b"0.667"), "checksum mismatch"),
    (lambda b: b.replace(b'"sha256"', b'"sha"'), "unreadable checksum"),
    (lambda b: b"\xff" + b, "not UTF-8"),
    (lambda b: b"", "checksum line is missing"),
])
def test_damaged_shard_is_refused_with_one_line_naming_it(tmp_path, damage, match):
    run = _finished(tmp_path)
    shard = run.shard_path("x/n=2")
    shard.write_bytes(damage(shard.read_bytes()))
    message = _refused_before_any_write(tmp_path, match)
    assert str(shard) in message and "delete it" in message


def test_shard_under_another_cells_name_is_refused(tmp_path):
    run = _finished(tmp_path)
    run.shard_path("x/n=3").write_bytes(run.shard_path("x/n=2").read_bytes())
    _refused_before_any_write(tmp_path, "shard of cell 'x/n=2' under the file name of 'x/n=3'")


def test_two_shards_with_one_key_are_refused(tmp_path):
    run = _finished(tmp_path)
    run.write_cell("y/copy", _cells()["x/n=2"])
    _refused_before_any_write(tmp_path, "holds a row of key")


@pytest.mark.parametrize("text,match", [("{not json", "not JSON"), ("[1, 2]", "JSON object"),
                                        ('{"config": 3}', "'config' object"),
                                        ("\udcff", "not UTF-8")])
def test_garbage_manifest_is_refused_and_kept(tmp_path, text, match):
    run = _finished(tmp_path)
    run.manifest_path.write_bytes(text.encode(errors="surrogateescape"))
    message = _refused_before_any_write(tmp_path, match)
    assert str(run.manifest_path) in message


def test_old_layout_and_foreign_csv_are_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "exp.csv").write_text("n,k,method,value\n1,1,mean,0.5\n")
    _refused_before_any_write(tmp_path, "exists without its cell shards")
    (out / "exp.done").write_text("x/n=1\n")
    _refused_before_any_write(tmp_path, "old layout")


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


def test_timing_columns_go_to_the_timing_file(tmp_path):
    run = _run(tmp_path, timing_columns=["seconds"]).start()
    run.write_cell("a", [{"n": 1, "k": 1, "method": "mean", "value": 0.5, "seconds": 1.25}])
    run.finish()
    assert "seconds" not in run.csv_path.read_text()
    assert run.timing_path.read_text() == "n,k,method,seconds\n1,1,mean,1.25\n"


def test_shard_names_quote_cell_ids_reversibly():
    for cell in ("cone/n=64/angle=15", "fc-w256_mnist5k_frog-k2_seed0", "a~b%c d"):
        name = store.shard_name(cell)
        assert "/" not in name and store.cell_of(name) == cell
    assert store.shard_name("normal/n=16") == "normal%2Fn=16.csv"
    ids = ["n=16", "n=2", "n=1024", "n=1", "m"]
    assert sorted(ids, key=store.natural_key) == ["m", "n=1", "n=2", "n=16", "n=1024"]


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    run = _finished(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_tmp = store.temp_path(run.csv_path).name.replace(f"~{os.getpid()}~",
                                                          f"~{dead.pid}~")
    live_tmp = store.temp_path(run.shard_path("x/n=1"))  # this process: alive
    old_live = store.temp_path(run.manifest_path)
    legacy_young = run.dir / ".exp.csv.ab12cd_x"        # mkstemp name of older versions
    legacy_old = run.dir / ".exp.csv.zz99yy_q"
    for path in (run.dir / dead_tmp, live_tmp, old_live, legacy_young, legacy_old):
        path.write_text("partial")
    hour_ago = time.time() - store.STALE_TEMP_SECONDS - 60
    for path in (old_live, legacy_old):
        os.utime(path, (hour_ago, hour_ago))
    _run(tmp_path).start()
    assert live_tmp.exists() and legacy_young.exists()
    assert not (run.dir / dead_tmp).exists() and not old_live.exists()
    assert not legacy_old.exists()
    assert (run.dir / ".exp.merge.lock").exists()  # locks are not temporaries


def test_temporaries_are_unique_per_call(tmp_path):
    target = tmp_path / "f.pt"
    assert store.temp_path(target) != store.temp_path(target)
