"""Parallel tests: each one launches real ranks with horovodrun (Gloo or MPI) and checks what they wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed_h5.synthetic import make_synthetic

WORKER = Path(__file__).with_name("worker.py")
VENV_BIN = Path(sys.executable).parent


def horovodrun_env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HDF5_USE_FILE_LOCKING="FALSE", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session", autouse=True)
def need_horovodrun():
    if shutil.which("horovodrun", path=horovodrun_env()["PATH"]) is None:
        pytest.fail("horovodrun is not installed: run `make install`")


def launch(ranks: int, controller: str, *command, timeout: float = 300, check: bool = True):
    """Run ``command`` on ``ranks`` processes with ``horovodrun --gloo`` or ``--mpi``."""
    return run(["horovodrun", "-np", str(ranks), f"--{controller}", *map(str, command)], horovodrun_env(), timeout,
               check)


def run(argv: list[str], env: dict, timeout: float, check: bool):
    """Run a launcher's command line; with ``check``, a non-zero exit fails with its output."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def train(ranks: int, controller: str, file, out: Path, *args, **kwargs):
    if controller == "jax":
        return launch_jax(ranks, sys.executable, WORKER, file, out, *args, **kwargs)
    return launch(ranks, controller, sys.executable, WORKER, file, out, *args, **kwargs)


def jax_env() -> dict:
    return dict(horovodrun_env(), KERAS_BACKEND="jax")


def mpirun(ranks: int) -> list[str]:
    """Open MPI's mpirun for ``ranks`` processes on this machine, passing the test's environment."""
    argv = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    for variable in ("KERAS_BACKEND", "HDF5_USE_FILE_LOCKING", "PYTHONUNBUFFERED", "PATH", "TF_CPP_MIN_LOG_LEVEL"):
        argv += ["-x", variable]
    return argv


def launch_jax(ranks: int, *command, timeout: float = 300, check: bool = True):
    """Run ``command`` on ``ranks`` processes with ``mpirun`` and KERAS_BACKEND=jax (the JAX engine)."""
    return run([*mpirun(ranks), *map(str, command)], jax_env(), timeout, check)


def weights(out: Path, rank: int) -> list[np.ndarray]:
    with np.load(out / f"rank{rank}.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def report(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


SMALL = dict(samples=101, frames=4, channels=3, size=(12, 12), classes=3, seed=2, progress=False)


@pytest.fixture(scope="session")
def small_file(tmp_path_factory):
    """101 clips (70 train, 31 validation at ratio 0.3): neither divides by ranks x batch."""
    return make_synthetic(tmp_path_factory.mktemp("parallel") / "small.h5", **SMALL)


@pytest.fixture(scope="session")
def small_jpeg(tmp_path_factory):
    """The same clips stored as JPEG frames (q90, 4:4:4): the reader decodes them in its threads."""
    return make_synthetic(tmp_path_factory.mktemp("parallel") / "small-jpeg.h5", **SMALL, codec="jpeg")


@pytest.fixture
def stored(small_file, small_jpeg):
    """``stored("raw")`` or ``stored("jpeg")``: the small file in that layout."""
    return {"raw": small_file, "jpeg": small_jpeg}.__getitem__


# The gloo run that test_resume.py, test_training.py and test_jax.py resume against: 2 ranks x 4,
# learning rate scaled, 3 epochs; computed once per session.
RESUMABLE = ("--batch-size", 4, "--scale-lr", "--epochs", 3)


@pytest.fixture(scope="session")
def gloo_straight(small_file, tmp_path_factory):
    """The uninterrupted run: 2 ranks x 4 for 3 epochs."""
    out = tmp_path_factory.mktemp("straight")
    train(2, "gloo", small_file, out, *RESUMABLE)
    return out


@pytest.fixture(scope="session")
def gloo_stopped(small_file, tmp_path_factory):
    """The same run, SIGUSR1 to rank 0 before batch 3 and to rank 1 before batch 6 of epoch 1:
    ``(root, result)``, its checkpoints in ``root/checkpoints`` (copy them before resuming)."""
    root = tmp_path_factory.mktemp("stopped")
    result = train(2, "gloo", small_file, root / "out", *RESUMABLE, "--checkpoint-dir", root / "checkpoints",
                   "--usr1", 0, 1, 3, "--usr1", 1, 1, 6, check=False)
    return root, result
