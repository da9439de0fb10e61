"""SLURM scripts: syntax, the generated sbatch command lines and lists, and one array element
run locally with stand-ins for srun and scontrol. The opt-in test marked `slurm` really submits
to a SLURM controller (make slurm-test) and is skipped where there is none."""
from __future__ import annotations

import csv
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
SCRIPTS = sorted(p for p in SLURM.iterdir() if p.suffix in (".sh", ".sbatch", ".env"))
VENV = Path(sys.executable).parent.parent


def env_for(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SBATCH": "echo",
            "FGEXP_PYTHON": sys.executable, "FGEXP_LIST_DIR": str(tmp_path / "lists"),
            "FGEXP_LOG_DIR": str(tmp_path / "logs"), "FGEXP_LR_DIR": str(tmp_path / "lrs"),
            "FGEXP_CHECKPOINTS": str(tmp_path / "ck"), **extra}


def bash(*args, env, cwd=ROOT, timeout=120):
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def test_scripts_exist_and_pass_bash_n():
    names = {p.name for p in SCRIPTS}
    assert {"cluster.env", "lib.sh", "array.sbatch", "lr_search.sbatch", "submit_lr_search.sh",
            "submit_array.sh"} <= names
    for path in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_submit_lr_search_writes_one_line_per_setting_and_the_sbatch_command(tmp_path):
    result = bash("slurm/submit_lr_search.sh", "closed_form:paper", "--select",
                  "function=rosenbrock", "--evaluations", "50",
                  env=env_for(tmp_path, FGEXP_PARTITION="gpu4", FGEXP_ACCOUNT="proj42",
                              FGEXP_MAX_PARALLEL="5"))
    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert command[-3:] == ["slurm/array.sbatch", "experiments/lr_search.py",
                            str(tmp_path / "lists" / "lr_closed_form-paper.txt")]
    for flag in ["--partition=gpu4", "--account=proj42", "--job-name=lr_closed_form-paper",
                 "--array=0-87%5", "--ntasks=4", "--gpus-per-task=1", "--nodes=1",
                 f"--output={tmp_path}/logs/%x_%A_%a.out", "--time=08:00:00"]:
        assert flag in command, flag
    lines = (tmp_path / "lists" / "lr_closed_form-paper.txt").read_text().splitlines()
    assert len(lines) == 11 * 8
    assert len(set(lines)) == len(lines)
    args = shlex.split(lines[17])
    assert args[:6] == ["--backend", "propulate", "--task", "closed_form:paper", "--ranks", "4"]
    assert args[-2:] == ["--evaluations", "50"] and f"--lr-dir={tmp_path}/lrs" not in args
    assert args[args.index("--lr-dir") + 1] == str(tmp_path / "lrs")
    # The line selects exactly one setting when handed back to the script.
    listed = subprocess.run([sys.executable, "experiments/lr_search.py", *args, "--list-settings"],
                            capture_output=True, text=True, cwd=ROOT, env=env_for(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 and "--select function=rosenbrock" in listed.stdout


def test_submit_single_mode_and_bad_task(tmp_path):
    result = bash("slurm/submit_lr_search.sh", "closed_form", "--select", "n=4",
                  env=env_for(tmp_path, MODE="single"))
    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert "slurm/lr_search.sbatch" in command and "--ntasks=4" in command
    assert command[-4:] == ["--task", "closed_form", "--select", "n=4"]
    bad = bash("slurm/submit_lr_search.sh", "no_such_task", env=env_for(tmp_path))
    assert bad.returncode == 2 and "unknown task" in bad.stderr
    assert not list((tmp_path / "lists").glob("*.txt"))
    usage = bash("slurm/submit_lr_search.sh", env=env_for(tmp_path))
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_submit_array_for_training_runs(tmp_path):
    runs = tmp_path / "runs.txt"
    runs.write_text("--preset paper --gradient frog --k 4\n--preset paper --gradient bp\n")
    result = bash("slurm/submit_array.sh", "experiments/lr_search.py", runs, "fc",
                  env=env_for(tmp_path, FGEXP_EXTRA_SBATCH="--qos=long --constraint=a100"))
    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    assert {"--array=0-1%16", "--job-name=fc", "--time=24:00:00", "--ntasks=1", "--qos=long",
            "--constraint=a100"} <= set(command)
    assert command[-3:] == ["slurm/array.sbatch", "experiments/lr_search.py", str(runs)]
    runs.write_text("--a\n\n--b\n")
    assert bash("slurm/submit_array.sh", "experiments/lr_search.py", runs,
                env=env_for(tmp_path)).returncode == 2


def fake_tools(bin_dir: Path, srun_body: str) -> None:
    """srun and scontrol stand-ins: scontrol records its arguments, srun runs `srun_body`."""
    bin_dir.mkdir()
    for name, body in [("scontrol", 'echo "$@" >> "$FAKE_LOG"'), ("srun", srun_body)]:
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def array_env(tmp_path: Path, index: int, **extra) -> dict:
    return env_for(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                   FAKE_LOG=str(tmp_path / "fake.log"), FGEXP_ROOT=str(ROOT),
                   FGEXP_VENV=str(VENV), SLURM_ARRAY_TASK_ID=str(index),
                   SLURM_ARRAY_JOB_ID="77", SLURM_JOB_ID="78", SLURM_JOB_NAME="lr_closed_form",
                   **extra)


def test_array_element_runs_its_line_with_setting_names(tmp_path):
    fake_tools(tmp_path / "bin", 'echo "srun $*" >> "$FAKE_LOG"')
    runs = tmp_path / "runs.txt"
    runs.write_text("--task closed_form --select n=4\n"
                    "--task closed_form:paper --select function=sphere --select 'n=8' --out x\n")
    result = bash("slurm/array.sbatch", "experiments/lr_search.py", runs,
                  env=array_env(tmp_path, 1))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "fake.log").read_text().splitlines()
    label = "closed_form-paper_function=sphere_n=8"
    assert calls[0] == f"update JobId=77_1 JobName=lr_closed_form_{label}"
    assert calls[1] == ("srun --mpi=pmix python experiments/lr_search.py --task closed_form:paper "
                        "--select function=sphere --select n=8 --out x")
    link = tmp_path / "logs" / f"lr_closed_form_{label}.out"
    assert link.is_symlink() and os.readlink(link) == "lr_closed_form_77_1.out"
    missing = bash("slurm/array.sbatch", "experiments/lr_search.py", runs,
                   env=array_env(tmp_path, 5))
    assert missing.returncode == 2 and "no line 6" in missing.stderr


@pytest.mark.mpi
@pytest.mark.slow
def test_submitted_list_line_runs_a_real_search_through_array_sbatch(tmp_path):
    """The whole SLURM path without SLURM: the list the submit script writes, one element run
    by array.sbatch, with srun standing in as `mpirun -n 2`."""
    fake_tools(tmp_path / "bin", f'shift; exec "{VENV}/bin/mpirun" -n 2 "$@"')
    env = env_for(tmp_path, FGEXP_RANKS="2")
    submit = bash("slurm/submit_lr_search.sh", "closed_form", "--set", "max_steps=30",
                  "--set", "interim=5", "--evaluations", "6", "--no-progress", env=env)
    assert submit.returncode == 0, submit.stderr
    result = bash("slurm/array.sbatch", "experiments/lr_search.py",
                  tmp_path / "lists" / "lr_closed_form.txt",
                  env=array_env(tmp_path, 0, FGEXP_RANKS="2"), timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    with open(tmp_path / "lrs" / "closed_form_smoke.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["backend"] == "propulate" and row["evaluations"] == "6"
    assert list((tmp_path / "ck" / "closed_form_smoke").glob("*/island_0_ckpt.pickle"))


def slurm_env(request, tmp_path: Path, **extra) -> dict:
    """Settings for a local single-node SLURM (slurm/local_cluster.sh): CPU only, small."""
    if "slurm" not in request.config.getoption("markexpr") or \
            "not slurm" in request.config.getoption("markexpr"):
        pytest.skip("opt-in: make slurm-test (pytest -m slurm)")
    if not shutil.which("sbatch") or subprocess.run(["sinfo"], capture_output=True).returncode:
        pytest.skip("no reachable SLURM controller (sbatch/sinfo); see slurm/local_cluster.sh")
    return {**os.environ, "OMP_NUM_THREADS": "1", "SBATCH": "sbatch", "FGEXP_PYTHON": sys.executable,
            "FGEXP_VENV": str(VENV), "FGEXP_LOG_DIR": str(tmp_path / "logs"),
            "FGEXP_LIST_DIR": str(tmp_path / "lists"), "FGEXP_LR_DIR": str(tmp_path / "lrs"),
            "FGEXP_CHECKPOINTS": str(tmp_path / "ck"),
            "FGEXP_PARTITION": os.environ.get("FGEXP_PARTITION", "debug"),
            "FGEXP_GPUS_PER_TASK": os.environ.get("FGEXP_GPUS_PER_TASK", ""),
            "FGEXP_CPUS_PER_TASK": os.environ.get("FGEXP_CPUS_PER_TASK", "1"),
            "FGEXP_TIME_RUN": "00:10:00", "FGEXP_TIME_LR": "00:10:00", **extra}


def wait_for(job: str, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                              text=True).stdout.strip():
            return
        time.sleep(2)
    pytest.fail(f"SLURM job {job} still queued or running after {seconds} s")


@pytest.mark.slurm
def test_real_slurm_array_submission(request, tmp_path):
    """Opt-in (make slurm-test): a two-element array of plain runs, job and log names."""
    runs = tmp_path / "runs.txt"
    runs.write_text("--task closed_form --list-settings\n--task closed_form:cone --list-settings\n")
    env = slurm_env(request, tmp_path, FGEXP_SRUN_MPI=os.environ.get("FGEXP_SRUN_MPI", "none"))
    submit = subprocess.run(["bash", "slurm/submit_array.sh", "experiments/lr_search.py",
                             str(runs), "fgexp_test", "--parsable"], capture_output=True,
                            text=True, cwd=ROOT, env=env)
    assert submit.returncode == 0, submit.stderr
    wait_for(submit.stdout.strip().split(";")[0])
    logs = sorted((tmp_path / "logs").glob("fgexp_test_*.out"))
    assert len([p for p in logs if not p.is_symlink()]) == 2
    named = tmp_path / "logs" / "fgexp_test_closed_form-cone.out"
    assert named.is_symlink() and "angle_deg=15 " in named.read_text()


@pytest.mark.slurm
def test_real_slurm_lr_search_array(request, tmp_path):
    """Opt-in: make slurm-lr-search's path for real, two settings, 2 ranks each under srun."""
    env = slurm_env(request, tmp_path, FGEXP_RANKS="2",
                    FGEXP_SRUN_MPI=os.environ.get("FGEXP_SRUN_MPI", "pmi2"))
    submit = subprocess.run(
        ["bash", "slurm/submit_lr_search.sh", "closed_form:paper", "--select", "function=sphere",
         "--select", "n=2", "--select", "gradient=bp,frog", "--select", "k=,2",
         "--set", "max_steps=30", "--set", "interim=5", "--evaluations", "4", "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, env={**env, "FGEXP_EXTRA_SBATCH": "--parsable"})
    assert submit.returncode == 0, submit.stderr
    wait_for(submit.stdout.strip().split(";")[0])
    with open(tmp_path / "lrs" / "closed_form.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.out"))
    assert sorted((r["gradient"], r["k"]) for r in rows) == [("bp", ""), ("frog", "2")], logs
    assert {r["evaluations"] for r in rows} == {"4"}
    links = [p.name for p in (tmp_path / "logs").glob("*.out") if p.is_symlink()]
    assert any("function=sphere_n=2_gradient=frog_k=2_sampler=normal" in n for n in links), links
