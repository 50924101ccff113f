"""A real one-node SLURM cluster for the scheduler tests, started by tests/slurm/cluster.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def slurm_env(conf: str) -> dict:
    env = dict(os.environ, SLURM_CONF=conf, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def cluster_is_up(env: dict) -> bool:
    try:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return state.returncode == 0 and state.stdout.split()[:1] == ["idle"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """``SLURM_CONF`` of a cluster that is up: an existing one if ``SLURM_CONF`` points at an idle
    node, else one started here and stopped at the end. Where SLURM cannot run at all the
    tests skip with the reason, except in CI, where that is a failure."""
    existing = os.environ.get("SLURM_CONF")
    if existing and cluster_is_up(slurm_env(existing)):
        yield existing
        return
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool, path="/usr/sbin:/usr/bin") is None]
    reason = (f"SLURM is not installed ({', '.join(missing)} missing): run `make install-test`" if missing
              else "starting SLURM's daemons needs root" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", HERE / "cluster.sh", "start", directory], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh could not start SLURM:\n{started.stderr}")
    try:
        yield str(directory / "slurm.conf")
    finally:
        subprocess.run(["bash", HERE / "cluster.sh", "stop", directory], capture_output=True)


def sbatch(conf: str, *args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``sbatch --wait`` from ``cwd``; returns when the job has ended."""
    return subprocess.run(["sbatch", "--wait", "--parsable", *map(str, args)], env=slurm_env(conf), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
