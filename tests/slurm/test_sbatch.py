"""The sbatch templates and launch scripts on one node of the test cluster, and through shellcheck."""

import csv
import json
import re
import subprocess
import zipfile

import pytest

from distributed_h5.synthetic import make_synthetic

from .conftest import ROOT, job_state, sbatch, slurm_env, wait_for

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


def test_scaling_sbatch_writes_a_row_per_rank_count(cluster, data, tmp_path, monkeypatch):
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    result = sbatch(cluster, "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", ROOT / "slurm" / "scaling.sbatch",
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
    result = sbatch(cluster, "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out", tmp_path / "job.sh",
                    cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert "+ mpirun -np 2 --bind-to none --map-by slot --allow-run-as-root" in log
    assert re.search(r"^summary: ranks=2 epochs=1 ", log, re.M), log[-3000:]


def test_train_sbatch_with_the_jax_engine(cluster, data, tmp_path, monkeypatch):
    """DH5_ENGINE=jax slurm/train.sbatch: srun starts the processes, JAX finds them from
    SLURM's variables, and the checkpoint records the engine."""
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DH5_ENGINE", "jax")
    result = sbatch(cluster, "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out",
                    ROOT / "slurm" / "train.sbatch", data, "--epochs", 1, "--batch-size", 8, "--width", 4, "--depth", 1,
                    cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert re.search(r"^summary: ranks=2 epochs=1 ", log, re.M), log[-3000:]
    record = json.loads(zipfile.ZipFile(tmp_path / "run" / "checkpoints" / "epoch-0001.keras").read("distributed_h5.json"))
    assert (record["config"]["engine"], record["config"]["ranks"]) == ("jax", 2)


def test_scancel_while_training_leaves_a_job_that_did_not_succeed(cluster, data, tmp_path, monkeypatch):
    """scancel while train.sbatch trains: SLURM sends SIGTERM to the batch shell and the ranks.
    The shell passes it on to srun, waits until the ranks have ended and exits 143, so the job
    records ExitCode=143:0 (not 0:15, a shell killed before its ranks ended, and never 0)."""
    monkeypatch.setenv("DH5_ROOT", str(ROOT))
    monkeypatch.setenv("DH5_RUN_DIR", str(tmp_path / "run"))
    job = sbatch(cluster, "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--output=job-%j.out",
                 ROOT / "slurm" / "train.sbatch", data, "--epochs", 100000, "--batch-size", 8, "--width", 4, "--depth", 1,
                 "--verbose", 0, cwd=tmp_path, wait=False).stdout.strip()
    log = tmp_path / f"job-{job}.out"
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    # Hang guards only: an epoch checkpoint means training is under way.
    wait_for(lambda: any((tmp_path / "run" / "checkpoints").glob("epoch-*.keras")), 300,
             lambda: job_state(cluster, job) + text()[-3000:])
    subprocess.run(["scancel", job], env=slurm_env(cluster), check=True, timeout=30)
    squeue = lambda: subprocess.run(["squeue", "-h", "-j", job], env=slurm_env(cluster), capture_output=True,  # noqa: E731
                                    text=True, timeout=30).stdout.strip()
    wait_for(lambda: not squeue(), 120, lambda: job_state(cluster, job) + text()[-3000:])
    state = job_state(cluster, job)
    assert "JobState=CANCELLED" in state and "ExitCode=143:0" in state, state + text()[-3000:]
    assert f"job {job}: stopped by SIGTERM (scancel or the time limit) before training finished" in text()
    assert "summary:" not in text()
