"""The sbatch templates and launch scripts, on a real SLURM cluster and through shellcheck."""

import csv
import re
import subprocess
import time
from pathlib import Path

import pytest

from distributed_h5.synthetic import make_synthetic

from .conftest import ROOT, sbatch, slurm_env

SCRIPTS = sorted([*ROOT.glob("launch/*.sh"), *ROOT.glob("slurm/*.sbatch"), *ROOT.glob("scripts/*.sh"),
                  ROOT / ".ci" / "run", *ROOT.glob("tests/slurm/*.sh")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_pass_bash_n_and_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True, text=True).returncode == 0
    checked = subprocess.run(["shellcheck", "-x", script], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("template", sorted(ROOT.glob("slurm/*.sbatch")), ids=lambda p: p.name)
def test_templates_are_accepted_by_sbatch(cluster, template, tmp_path):
    result = subprocess.run(["sbatch", "--test-only", "--ntasks=2", template, "data.h5"], env=slurm_env(cluster),
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "to start at" in result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("sbatch") / "data.h5", samples=96, frames=4, size=(12, 12),
                          classes=3, progress=False)


@pytest.mark.parametrize("stage", ["0", "1"])
def test_train_sbatch_runs_two_ranks(cluster, data, tmp_path, stage, monkeypatch):
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DH5_STAGE", stage)
    monkeypatch.setenv("DH5_STAGE_DIR", str(tmp_path / "local"))
    (tmp_path / "local").mkdir()
    result = sbatch(cluster, "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", ROOT / "slurm" / "train.sbatch",
                    data, "--epochs", 2, "--batch-size", 8, "--width", 4, "--depth", 1, cwd=tmp_path)
    job = result.stdout.strip()
    log = (tmp_path / f"job-{job}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert f"job {job} (start 0): 2 ranks on 1 node(s), 1 cpu(s) each" in log
    assert (f"+ DH5_TF_THREADS=1 srun --mpi=pmix --kill-on-bad-exit=1 distributed-h5 train {data if stage == '0' else ''}"
            in log)
    summary = [line for line in log.splitlines() if line.startswith("summary:")]
    assert len(summary) == 1 and "ranks=2 epochs=2" in summary[0]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-0001.keras", "epoch-0002.keras"]
    if stage == "1":
        assert f"staging {data} to {tmp_path}/local/dh5-{job}-data.h5 on 1 node(s)" in log
        assert list(Path(tmp_path / "local").iterdir()) == []  # the staged copy is removed at the end


def test_signal_before_the_time_limit_checkpoints_requeues_and_resumes(cluster, data, tmp_path, monkeypatch):
    """SIGUSR1 to the job's ranks (what --signal=USR1@300 sends before the limit): the ranks
    stop together, rank 0 checkpoints mid-epoch, the job requeues itself and the second
    start resumes from that step and finishes, with the epoch count continuing."""
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    env = slurm_env(cluster)
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", ROOT / "slurm" / "train.sbatch",
         data, "--epochs", "20", "--batch-size", "2", "--width", "4", "--depth", "1", "--verbose", "2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    job = submitted.stdout.strip()
    log = tmp_path / f"job-{job}.out"
    deadline = time.monotonic() + 300
    while "Epoch 3/20" not in (log.read_text() if log.exists() else ""):  # two epochs done and checkpointed
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    deadline += 300  # a requeued job waits about two minutes before SLURM starts it again
    while "JobState=COMPLETED" not in (state := subprocess.run(["scontrol", "show", "job", job], env=env,
                                                               capture_output=True, text=True).stdout):
        assert time.monotonic() < deadline and "JobState=FAILED" not in state, state + log.read_text()
        time.sleep(2)
    text = log.read_text()
    assert "Restarts=1" in state
    stopped = re.search(r"stopped by SIGUSR1 after (\d+) epochs and (\d+) steps", text)
    assert stopped, text[-5000:]
    epochs_done = int(stopped.group(1))
    assert epochs_done >= 2
    assert f"job {job}: checkpointed before the time limit; requeueing" in text
    first, second = text.split(f"job {job} (start 1): 2 ranks")
    # The second start finishes the interrupted epoch from its step, then the rest: the count continues.
    assert f"Epoch {epochs_done + 1}/20" in second and f"Epoch {epochs_done}/20" not in second
    assert f"summary: ranks=2 epochs={20 - epochs_done} " in second
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["epoch-0019.keras", "epoch-0020.keras"]


def test_scaling_sbatch_writes_a_row_per_rank_count(cluster, data, tmp_path, monkeypatch):
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    result = sbatch(cluster, "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", ROOT / "slurm" / "scaling.sbatch",
                    data, "--steps", 3, "--warmup", 1, "--width", 4, "--depth", 1, "--batch-size", 4, cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert "scaling over ranks 1,2 on 1 node(s)" in log
    rows = list(csv.DictReader((tmp_path / "run" / "scaling.csv").open()))
    assert [(r["mode"], r["ranks"], r["batch_per_rank"], r["steps"]) for r in rows] == [
        ("weak", "1", "4", "3"), ("weak", "2", "4", "3"), ("strong", "1", "8", "3"), ("strong", "2", "4", "3")]
    assert all(float(r["global_samples_per_second"]) > 0 for r in rows)
    assert (tmp_path / "run" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mpirun_launch_inside_an_allocation(cluster, data, tmp_path):
    """launch/mpirun.sh in a 2-task allocation: Open MPI takes the ranks from SLURM."""
    script = f"#!/bin/bash\nexport PATH={ROOT}/.venv/bin:$PATH\n{ROOT}/launch/mpirun.sh {data} --epochs 1 --batch-size 8 --width 4 --depth 1\n"
    (tmp_path / "job.sh").write_text(script)
    result = sbatch(cluster, "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", tmp_path / "job.sh", cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert "+ mpirun -np 2 --bind-to none --map-by slot --allow-run-as-root" in log
    assert re.search(r"^summary: ranks=2 epochs=1 ", log, re.M), log[-3000:]


def test_convert_with_srun_pmix(cluster, tmp_path):
    """The README's cluster conversion line: srun --mpi=pmix gives each task a share of the videos."""
    from ..videos import make_tree

    make_tree(tmp_path / "videos")
    line = (f"srun --mpi=pmix {ROOT}/.venv/bin/distributed-h5 convert {tmp_path}/videos {tmp_path}/videos.h5 "
            "--frames 8 --size 24 32 --part-videos 4")
    result = sbatch(cluster, "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", "--wrap", line, cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode == 0, log[-3000:]
    assert log.count(f"converted 14 video(s) into {tmp_path}/videos.h5") == 1
    assert "  blue/blue_corrupt.mp4: cannot be decoded" in log
