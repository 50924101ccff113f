"""Resume anywhere: a run stopped mid-epoch on 2 ranks x batch 4 continues from its sample
position on any rank count and batch size; every training sample of the interrupted epoch
is trained exactly once; a resume keeping the global batch keeps the weights exactly; a
non-finite loss stops every rank with nothing written."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter

import h5py
import numpy as np
import pytest

from distributed_h5 import sharding

from .conftest import report, train, weights

def saved(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".keras" or p.name == "PREEMPTED")


def resume(small_file, gloo_stopped, tmp_path, ranks, *args):
    """Resume a copy of the stopped run's checkpoints on ``ranks`` ranks."""
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(gloo_stopped[0] / "checkpoints", checkpoints)
    train(ranks, "gloo", small_file, tmp_path / "resumed", "--scale-lr", "--epochs", 3, "--checkpoint-dir",
          checkpoints, "--resume", *args)
    return checkpoints, tmp_path / "resumed"


def test_signal_stops_all_ranks_at_one_step_and_resume_is_exact(small_file, gloo_straight, gloo_stopped, tmp_path):
    """SIGUSR1 reaches the ranks at different steps; they stop together, rank 0 checkpoints
    mid-epoch, and the resumed run ends with the weights of an uninterrupted one."""
    root, result = gloo_stopped
    # horovodrun reports the first rank's status (75, "run again with resume") and exits 1.
    assert result.returncode == 1 and "Exit code: 75" in result.stderr, result.stderr[-3000:]
    # Rank 0 got the signal before batch 3 of epoch 1; both ranks stopped after that batch:
    # 4 global batches of 2 x 4 = 32 samples of epoch 1's order.
    assert [json.loads((root / "out" / f"rank{r}.stopped").read_text())["at"] for r in (0, 1)] == [[1, 32]] * 2
    assert saved(root / "checkpoints") == ["PREEMPTED", "best.keras", "epoch-0001-sample-000000032.keras",
                                           "epoch-0001.keras"]
    assert (root / "checkpoints" / "PREEMPTED").read_text() == "1 32\n"
    checkpoints, resumed = resume(small_file, gloo_stopped, tmp_path, 2, "--batch-size", 4)
    assert not (checkpoints / "PREEMPTED").exists()
    assert report(resumed, 0)["epochs"] == [1, 2]
    for a, b in zip(weights(resumed, 0), weights(gloo_straight, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The summary says where it resumed, and best.keras is the epoch of the lowest val_loss
    # over the whole run (its first epochs were the stopped run's).
    val_loss = report(gloo_straight, 0)["history"]["val_loss"]
    best = int(np.argmin(val_loss)) + 1
    fields = dict(item.split("=", 1) for item in report(resumed, 0)["summary"].removeprefix("summary: ").split())
    assert (fields["ranks"], fields["epochs"], fields["resumed_from"]) == ("2", "2", "epoch:1,sample:32")
    assert (fields["best_epoch"], fields["checkpoint"]) == (str(best), str(checkpoints / "epoch-0003.keras"))
    assert float(fields["best_val_loss"]) == pytest.approx(val_loss[best - 1], rel=1e-3)
    record = json.loads(zipfile.ZipFile(checkpoints / "best.keras").read("distributed_h5.json"))
    assert record["position"] == {"epoch": best, "sample": 0}
    assert sorted(record["config"]) == ["base_batch", "batch_size", "clip_frames", "crop", "engine", "file_bytes",
                                        "fingerprint", "flip", "frame_stride", "global_batch", "path", "precision",
                                        "ranks", "remainder", "sample_count", "scale", "seed", "split",
                                        "validation_ratio", "version"]


def test_the_same_global_batch_on_another_rank_count_gives_the_same_weights(small_file, gloo_straight, gloo_stopped, tmp_path):
    """Stopped on 2 ranks x 4, resumed on 1 rank x 8: the same samples in the same global
    batches at the same learning rates, so the weights of the uninterrupted 2 x 4 run."""
    _, resumed = resume(small_file, gloo_stopped, tmp_path, 1, "--batch-size", 8)
    assert report(resumed, 0)["size"] == 1 and report(resumed, 0)["epochs"] == [1, 2]
    for a, b in zip(weights(resumed, 0), weights(gloo_straight, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ranks, batch", [(1, 16), (2, 8)])
def test_every_sample_is_trained_once_across_a_change_of_global_batch(small_file, gloo_stopped, tmp_path, ranks, batch):
    """2 x 4 trained the first 32 samples of epoch 1's order; the resumed run with a global
    batch of 16 trains the other 38 in ceil(38 / 16) = 3 global batches, padded (remainder
    'pad') with the first 10 of the order, as an uninterrupted epoch would be."""
    root, _ = gloo_stopped
    _, resumed = resume(small_file, gloo_stopped, tmp_path, ranks, "--batch-size", batch)
    train_set = sharding.split(101, 0.3, seed=0).train
    assert train_set.size == 70

    def clips(records, epoch):
        return [clip for rank_steps in records for at, step in rank_steps if at == epoch for clip in step]

    before = [json.loads((root / "out" / f"rank{r}.stopped").read_text())["trained"] for r in (0, 1)]
    after = [report(resumed, r)["trained"] for r in range(ranks)]
    order = sharding.epoch_order(train_set, seed=0, epoch=1)
    assert sorted(clips(before, 1)) == sorted(order[:32].tolist())
    assert [len([s for at, s in steps if at == 1]) for steps in after] == [3] * ranks
    trained = Counter(clips(before, 1)) + Counter(clips(after, 1))
    assert trained - Counter(train_set.tolist()) == Counter(order[:10].tolist())
    assert set(trained) == set(train_set.tolist())
    # Epoch 2, whole at the new global batch: 5 steps of 16, padded with its order's first 10.
    order = sharding.epoch_order(train_set, seed=0, epoch=2)
    assert Counter(clips(after, 2)) - Counter(train_set.tolist()) == Counter(order[:10].tolist())
    assert set(clips(after, 2)) == set(train_set.tolist())


def test_a_nan_clip_stops_the_job_with_the_readers_line_and_nothing_written(small_file, tmp_path):
    """One NaN pixel in a float32 file: the rank whose batch holds it refuses the clip as it is
    read (a NaN can vanish in a ReLU and leave the loss finite while the weights go NaN), with
    the reader's one line rather than a framework traceback; the job ends and nothing is written."""
    train_set = sharding.split(101, 0.3, seed=0).train
    bad = int(sharding.epoch_order(train_set, seed=0, epoch=0)[20])  # in step 2 of epoch 0 (global batch 8)
    nan_file = tmp_path / "nan.h5"
    with h5py.File(small_file, "r") as source, h5py.File(nan_file, "w") as target:
        x = source["X"][:].astype("float32")
        x[bad, 0, 0, 0, 0] = np.nan
        target["X"], target["Y"] = x, source["Y"][:]
        target.attrs["sample_count"] = source.attrs["sample_count"]
    plans = [sharding.ShardPlan(101, validation_ratio=0.3, seed=0, rank=rank, size=2, batch_size=4) for rank in (0, 1)]
    holder, step = next((rank, step) for rank in (0, 1) for step, batch in enumerate(plans[rank].batches(0))
                        if bad in batch)
    assert (holder, step) == (1, 2)
    result = train(2, "gloo", nan_file, tmp_path / "out", "--epochs", 2,
                   "--checkpoint-dir", tmp_path / "ckpt", check=False)
    assert result.returncode != 0
    assert (tmp_path / "out" / "rank1.error").read_text() == (
        f"DatasetError: {nan_file}: clip {bad} of dataset 'X' has 1 non-finite value(s) (NaN or infinity); training "
        "on it would make the loss NaN. Rewrite the clips that hold them with finite values (`distributed-h5 inspect "
        "--verify` reads every clip and names the first), or drop them from the file")
    assert saved(tmp_path / "ckpt") == []
