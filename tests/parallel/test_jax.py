"""The JAX engine: Keras 3 on JAX across processes under `mpirun`, with the guarantees of the
Horovod engine (same shards and order, identical replicas, exact validation, mid-epoch stop
and resume), and checkpoints that resume under either engine."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import RESUMABLE, jax_env, mpirun, report, train, weights

ROOT = Path(__file__).resolve().parents[2]
COMMON = RESUMABLE  # as the gloo runs of conftest.py, which one test here resumes


def test_two_processes_match_one_with_twice_the_batch(tmp_path, small_file):
    """2 processes x 4 from different initialisations end with identical replicas equal to
    1 process x 8; validation (shards of 16 and 15 clips) is one process's on all 31. With
    BatchNorm the statistics are the global batch's, as SyncBN gives under Horovod; with
    dropout (the default model's 0.3) each sample's mask is its own, whichever process trains it."""
    two, one = tmp_path / "two", tmp_path / "one"
    model = "bn"  # BatchNorm and dropout 0.3 in one pair of runs
    train(2, "jax", small_file, two, "--batch-size", 4, "--init-seed", "rank", "--model", model, "--dropout", 0.3)
    train(1, "jax", small_file, one, "--batch-size", 8, "--model", model, "--dropout", 0.3)
    assert (report(two, 0)["engine"], report(two, 0)["size"], report(one, 0)["size"]) == ("jax", 2, 1)
    for a, b in zip(weights(two, 0), weights(two, 1)):
        np.testing.assert_array_equal(a, b)
    assert len(weights(two, 0)) == len(weights(one, 0)) == 22
    for a, b in zip(weights(two, 0), weights(one, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = {r: report(two, r)["history"] for r in (0, 1)}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[0][key] == history[1][key]
        np.testing.assert_allclose(history[0][key], report(one, 0)["history"][key], rtol=1e-5)
    # 72 training clips (70 and 2 of padding) in 9 global batches, each step on each process.
    assert [len(report(two, r)["trained"]) for r in (0, 1)] == [18, 18]


@pytest.fixture(scope="module")
def jax_straight(small_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("jax-straight")
    train(2, "jax", small_file, out, *COMMON)
    return out


def stop(controller: str, small_file, root: Path):
    """2 ranks x 4 under ``controller``; SIGUSR1 to rank 0 before batch 3 and to rank 1 before
    batch 6 of epoch 1: both stop after batch 3, and rank 0 checkpoints at sample 32."""
    result = train(2, controller, small_file, root / "out", *COMMON, "--checkpoint-dir", root / "checkpoints",
                   "--usr1", 0, 1, 3, "--usr1", 1, 1, 6, check=False)
    assert result.returncode != 0
    assert [json.loads((root / "out" / f"rank{r}.stopped").read_text())["at"] for r in (0, 1)] == [[1, 32]] * 2
    assert (root / "checkpoints" / "PREEMPTED").read_text() == "1 32\n"
    assert (root / "checkpoints" / "epoch-0001-sample-000000032.keras").is_file()
    return root / "checkpoints"


def resume(controller: str, ranks: int, batch: int, small_file, checkpoints: Path, tmp_path: Path):
    copy = tmp_path / f"checkpoints-{controller}-{ranks}"
    shutil.copytree(checkpoints, copy)
    out = tmp_path / f"resumed-{controller}-{ranks}"
    train(ranks, controller, small_file, out, "--batch-size", batch, "--scale-lr", "--epochs", 3,
          "--checkpoint-dir", copy, "--resume")
    assert report(out, 0)["epochs"] == [1, 2]
    assert "resumed_from=epoch:1,sample:32" in report(out, 0)["summary"]
    return out


def assert_the_same_run_across_engines(resumed: list, straight: list) -> None:
    """A checkpoint resumed on the other engine ends where the uninterrupted run does, to within
    what the machine's kernels give: on 2026-12-03 here (AMD EPYC; keras 3.15.1, jax 0.10.2,
    tensorflow-cpu 2.21.0) within 2.3e-8 after 14 steps, as same-engine resumes are; on
    2026-12-02, with the same versions on another machine of this kind, 5.1e-4 (up to 11%
    relative, on a bias). TensorFlow's oneDNN and XLA pick kernels by CPU, so the bound is
    the worst seen, doubled; same-engine resumes are held to 1e-5 relative."""
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(resumed, straight))
    assert worst <= 1e-3, f"the resumed run ends {worst:.2g} from the uninterrupted one"


def test_stop_and_resume_on_jax_and_on_horovod(small_file, jax_straight, tmp_path):
    """A JAX run stopped mid-epoch resumes on 1 JAX process x 8 with the weights of the
    uninterrupted JAX run, and on 2 Horovod ranks x 4 (see the bound above)."""
    checkpoints = stop("jax", small_file, tmp_path / "stopped")
    resumed = resume("jax", 1, 8, small_file, checkpoints, tmp_path)
    for a, b in zip(weights(resumed, 0), weights(jax_straight, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    resumed = resume("gloo", 2, 4, small_file, checkpoints, tmp_path)
    assert_the_same_run_across_engines(weights(resumed, 0), weights(jax_straight, 0))


def test_horovod_checkpoint_resumes_on_jax(small_file, gloo_straight, gloo_stopped, tmp_path):
    """The reverse: a Horovod run stopped mid-epoch (test_resume.py checks that stop) resumes on
    2 JAX processes and ends with the weights of the uninterrupted Horovod run (TensorFlow and
    JAX draw different initial weights from one seed, so the reference is the Horovod run)."""
    resumed = resume("jax", 2, 4, small_file, gloo_stopped[0] / "checkpoints", tmp_path)
    assert report(resumed, 0)["engine"] == "jax"
    assert_the_same_run_across_engines(weights(resumed, 0), weights(gloo_straight, 0))


def test_a_killed_process_ends_the_job(small_file, tmp_path):
    """Process 1 dies (SIGKILL) before step 3 of epoch 1: mpirun ends the job naming it, with its
    status (128 + 9), and no process finishes."""
    # timeout: a bound on a hang only (process 0 left waiting on the dead one); the job ends within a minute here.
    result = train(2, "jax", small_file, tmp_path, *COMMON, "--kill", 1, 1, 2, check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 128 + signal.SIGKILL, output[-3000:]
    assert re.search(r"mpirun noticed that process rank 1 with PID \d+ on node \S+ exited on signal 9 \(Killed\)",
                     output), output[-3000:]
    assert not list(tmp_path.glob("rank*.json"))


def cli_env() -> dict:
    """A user's environment for the CLI with DH5_ENGINE=jax: the CLI sets KERAS_BACKEND itself."""
    env = dict(jax_env(), DH5_ENGINE="jax")
    del env["KERAS_BACKEND"]
    return env


def test_cli_with_launch_mpirun(small_file, tmp_path):
    """DH5_ENGINE=jax launch/mpirun.sh: the README's command, one summary line for the job."""
    env = cli_env()
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "mpirun.sh"), "-np", "2", str(small_file), "--epochs", "2", "--batch-size",
         "4", "--width", "4", "--depth", "1", "--learning-rate", "0.01", "--checkpoint-dir", str(tmp_path / "ck"),
         "--verbose", "0"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("summary: ")]
    assert len(summaries) == 1 and " ranks=2 epochs=2 " in summaries[0], result.stdout[-3000:]
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.keras")) == ["best.keras", "epoch-0001.keras",
                                                                         "epoch-0002.keras"]
    record = json.loads(zipfile.ZipFile(tmp_path / "ck" / "epoch-0002.keras").read("distributed_h5.json"))
    assert (record["config"]["engine"], record["config"]["ranks"], record["position"]) == (
        "jax", 2, {"epoch": 2, "sample": 0})


def test_evaluate_and_predict_on_two_jax_processes_equal_one(small_file, tmp_path):
    """`evaluate --engine jax` and `predict --engine jax` under mpirun -np 2: each process its
    share on a process-local model, sums combined; the same figures and CSV as one process."""
    cli = str(Path(sys.executable).parent / "distributed-h5")
    env = cli_env()

    def run(*argv):
        result = subprocess.run(list(map(str, argv)), env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    run(cli, "train", small_file, "--epochs", 1, "--batch-size", 4, "--width", 4, "--depth", 1, "--clip-frames", 2,
        "--checkpoint-dir", tmp_path / "run", "--verbose", 0)
    args = ("--checkpoint", tmp_path / "run" / "epoch-0001.keras", "--views", 2, 1)
    alone = run(cli, "evaluate", small_file, *args).strip().split()
    together = [line for line in run(*mpirun(2), cli, "evaluate", small_file, *args).splitlines()
                if "val_accuracy=" in line]
    assert len(together) == 1  # rank 0 prints
    alone, together = (dict(part.split("=", 1) for part in fields) for fields in (alone, together[0].split()))
    assert (alone["ranks"], together["ranks"], alone["samples"], together["samples"]) == ("1", "2", "31", "31")
    assert together["val_accuracy"] == alone["val_accuracy"]
    assert float(together["val_loss"]) == pytest.approx(float(alone["val_loss"]), rel=1e-6)
    run(cli, "predict", small_file, *args, "--out", tmp_path / "alone.csv")
    run(*mpirun(2), cli, "predict", small_file, *args, "--out", tmp_path / "together.csv")
    assert (tmp_path / "together.csv").read_text() == (tmp_path / "alone.csv").read_text()
