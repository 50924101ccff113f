"""train_model on real Horovod ranks: exact averaging, identical replicas, exact validation,
equal steps, checkpoints and resume, and a dead rank ending the job."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distributed_h5 import sharding
from distributed_h5.reader import BatchReader

from .conftest import RESUMABLE, launch, report, train, weights

CONTROLLERS = ["gloo", "mpi"]


def saved(directory: Path) -> list[str]:
    """The checkpoints and the PREEMPTED marker in ``directory`` (logs and the lock aside)."""
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".keras" or p.name == "PREEMPTED")


@pytest.mark.parametrize("controller, dropout, layout", [("gloo", 0.3, "raw"), ("mpi", 0.0, "jpeg")])
def test_two_ranks_match_one_rank_with_twice_the_batch(tmp_path, stored, controller, dropout, layout):
    """Averaged gradients of two half-batches are the full batch's gradient (SGD, no LR
    scaling), with the default model's dropout (0.3, each sample's mask keyed by the sample)
    as without it, on raw clips as on JPEG frames; and the replicas are identical."""
    small_file = stored(layout)
    train(2, controller, small_file, tmp_path / "two", "--batch-size", 4, "--epochs", 2, "--dropout", dropout)
    train(1, controller, small_file, tmp_path / "one", "--batch-size", 8, "--epochs", 2, "--dropout", dropout)
    two, one = weights(tmp_path / "two", 0), weights(tmp_path / "one", 0)
    for a, b in zip(two, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(two, weights(tmp_path / "two", 1)):
        np.testing.assert_array_equal(a, b)
    assert report(tmp_path / "two", 0)["size"] == 2 and report(tmp_path / "two", 0)["epochs"] == [0, 1]
    # The steps the runs took (the worker records each step's clips, which carry their index):
    # 70 training clips, global batch 8, so each rank ran ceil(70 / 8) = 9 steps per epoch, on
    # its shard of the epoch's order; the one rank ran the same 9 global batches, the two ranks'
    # batches of each step together; every clip trained once an epoch, 2 of padding (remainder 'pad').
    two = [report(tmp_path / "two", rank)["trained"] for rank in (0, 1)]
    one = report(tmp_path / "one", 0)["trained"]
    for rank in (0, 1):
        plan = sharding.ShardPlan(101, validation_ratio=0.3, seed=0, rank=rank, size=2, batch_size=4)
        assert two[rank] == [[epoch, batch.tolist()] for epoch in (0, 1) for batch in plan.batches(epoch)]
        assert [len(two[rank]), {len(step) for _, step in two[rank]}] == [18, {4}]
    assert [[epoch, sorted(step)] for epoch, step in one] == [
        [epoch, sorted(mine + theirs)] for (epoch, mine), (_, theirs) in zip(*two)]
    train_set = sharding.split(101, 0.3, seed=0).train.tolist()
    for epoch in (0, 1):
        clips = Counter(clip for steps in two for at, step in steps if at == epoch for clip in step)
        padding = sharding.epoch_order(np.array(train_set), seed=0, epoch=epoch)[:2].tolist()
        assert clips == Counter(train_set) + Counter(padding)


@pytest.mark.parametrize("controller, layout", [("gloo", "raw"), ("mpi", "jpeg")])
def test_replicas_identical_and_validation_exact(tmp_path, stored, controller, layout):
    """Ranks start from different weights; after training they are bit-identical, and the
    validation metrics every rank reports equal one process's on the whole validation set
    (on a JPEG file, the clips as the reader decodes them)."""
    small_file = stored(layout)
    out = tmp_path / "run"
    train(2, controller, small_file, out, "--init-seed", "rank", "--batch-size", 4, "--epochs", 2, "--scale-lr")
    first, second = weights(out, 0), weights(out, 1)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    history0, history1 = report(out, 0)["history"], report(out, 1)["history"]
    assert history0 == history1

    from distributed_h5.models import video_classifier

    model = video_classifier((4, 3, 12, 12), 3, width=4, depth=2, dropout=0.0)
    model.set_weights(first)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    validation = sharding.split(101, 0.3, seed=0).validation
    assert validation.size == 31  # 31 clips: 16 + 15 per rank, last batches short, no padding
    with BatchReader(small_file) as reader:
        x, y = reader.read(validation)
    expected = model.evaluate(x, y, batch_size=31, verbose=0, return_dict=True)
    assert history0["val_loss"][-1] == pytest.approx(expected["loss"], rel=1e-5)
    assert history0["val_accuracy"][-1] == pytest.approx(expected["accuracy"], abs=1e-7)


def test_resume_continues_as_an_uninterrupted_run(tmp_path, small_file, gloo_straight):
    """2 epochs, then resume to 3 == 3 epochs straight (conftest's run): same data order, same weights."""
    checkpoints = tmp_path / "checkpoints"
    train(2, "gloo", small_file, tmp_path / "first", *RESUMABLE[:-1], 2, "--checkpoint-dir", checkpoints)
    assert saved(checkpoints) == ["best.keras", "epoch-0001.keras", "epoch-0002.keras"]
    train(2, "gloo", small_file, tmp_path / "resumed", *RESUMABLE, "--checkpoint-dir", checkpoints, "--resume")
    assert report(tmp_path / "resumed", 0)["epochs"] == [2]
    assert saved(checkpoints) == ["best.keras", "epoch-0002.keras", "epoch-0003.keras"]
    for a, b in zip(weights(tmp_path / "resumed", 1), weights(gloo_straight, 1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    straight, resumed = report(gloo_straight, 0)["history"], report(tmp_path / "resumed", 0)["history"]
    assert resumed["loss"] == pytest.approx(straight["loss"][2:], rel=1e-5)


# What each launcher says when rank 1 dies of SIGKILL: the job ends because of rank 1, killed (137 = 128 + 9).
KILLED_RANK_1 = {
    "gloo": [r"Process 1 exit with status code 137\.", r"Terminating remaining workers after failure of Process 1\.",
             r"The first process to do so was:\nProcess name: 1\nExit code: 137"],
    "mpi": [r"mpirun noticed that process rank 1 with PID \d+ on node \S+ exited on signal 9 \(Killed\)"],
}


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_a_killed_rank_ends_the_job_and_resume_finishes(tmp_path, stored, controller):
    """Rank 1 dies (SIGKILL, as a crashed node) before step 4 of epoch 1: the launcher ends the
    job because of rank 1, no rank finishes, and (under Gloo, on a JPEG file) a resume finishes
    from epoch 1's checkpoint."""
    small_file = stored("jpeg" if controller == "gloo" else "raw")
    checkpoints = tmp_path / "checkpoints"
    # timeout: a bound on a hang only (a job left waiting on the dead rank); it ends in well under a minute here.
    result = train(2, controller, small_file, tmp_path / "killed", "--epochs", 3, "--checkpoint-dir", checkpoints,
                   "--kill", 1, 1, 3, check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for said in KILLED_RANK_1[controller]:
        assert re.search(said, output), f"{said!r} not in:\n{output[-3000:]}"
    assert not list((tmp_path / "killed").glob("rank*.json"))  # neither rank got past the dead one
    assert saved(checkpoints) == ["best.keras", "epoch-0001.keras"]
    import keras

    restored = keras.models.load_model(checkpoints / "epoch-0001.keras")
    assert int(restored.optimizer.iterations.numpy()) == 9  # one epoch of 9 steps
    if controller == "gloo":  # the resume does not depend on the launcher: once is enough
        train(2, controller, small_file, tmp_path / "resumed", "--epochs", 3, "--checkpoint-dir", checkpoints,
              "--resume")
        assert report(tmp_path / "resumed", 0)["epochs"] == [1, 2]


def test_cli_learns_under_horovodrun(tmp_path):
    """The CLI end to end on 2 ranks: validation accuracy far above chance (1/4)."""
    data = tmp_path / "learn.h5"
    subprocess.run([sys.executable, "-m", "distributed_h5.cli", "make-synthetic", data, "--samples", "512",
                    "--frames", "8", "--size", "24", "24", "--classes", "4"], check=True, capture_output=True)
    result = launch(2, "gloo", sys.executable, "-m", "distributed_h5.cli", "train", data, "--epochs", "4",
                    "--batch-size", "8", "--tf-threads", "1", "--width", "8", "--log-dir", tmp_path / "logs")
    summary = [line for line in result.stdout.splitlines() if "summary:" in line]
    assert len(summary) == 1  # rank 0 only
    fields = dict(item.split("=") for item in summary[0].split("summary:")[1].split())
    assert fields["ranks"] == "2" and fields["epochs"] == "4"
    assert float(fields["val_accuracy"]) >= 0.7
    rows = (tmp_path / "logs" / "training.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "epoch" and len(rows) == 5


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_launch_horovodrun_script(tmp_path, small_file, controller):
    """launch/horovodrun.sh prints the exact command, sets one TF thread per rank, and trains."""
    from .conftest import horovodrun_env

    script = Path(__file__).parents[2] / "launch" / "horovodrun.sh"
    result = subprocess.run(["bash", script, "-np", "2", f"--{controller}", small_file, "--epochs", "1",
                             "--batch-size", "4", "--width", "4", "--depth", "1"],
                            env=horovodrun_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"+ DH5_TF_THREADS=1 horovodrun -np 2 --{controller} distributed-h5 train {small_file} --epochs 1" in result.stderr
    summary = [line for line in result.stdout.splitlines() if "summary:" in line]
    assert len(summary) == 1 and "ranks=2 epochs=1 " in summary[0]
