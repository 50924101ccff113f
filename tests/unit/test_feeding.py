"""The Feeder: epoch after epoch in the sequence's order, through tf.data, with its wait counted."""

import time

from distributed_h5 import ShardedSequence
from distributed_h5.feeding import Feeder
from distributed_h5.synthetic import clip_index


def test_feeder_continues_across_epochs_from_a_mid_epoch_start(files):
    seq = ShardedSequence(files["clip-chunks"], batch_size=8, rank=1, size=2, seed=5)
    steps = len(seq)  # 9 batches of 8 over 137 training clips / 2 ranks
    feeder = Feeder.for_sequence(seq, first_epoch=3, start=4 * 16, workers=2)  # 4 global batches of 2 x 8 done
    expected = [b.tolist() for b in seq.epoch_batches(3)[4:] + seq.epoch_batches(4) + seq.epoch_batches(5)[:2]]
    got = []
    for x, y in feeder.dataset().take(steps - 4 + steps + 2):
        got.append(clip_index(x.numpy()).tolist())
        assert y.shape == (8, 5)
    assert got == expected
    seq.close()


def test_a_prefetch_buffer_keeps_the_order_across_epochs(files):
    """prefetch=1 changes when batches are read, never which: the same batches, epoch after epoch."""
    import pytest

    seq = ShardedSequence(files["clip-chunks"], batch_size=8, rank=0, size=2, seed=5)
    expected = [b.tolist() for b in seq.epoch_batches(0) + seq.epoch_batches(1)]
    feeder = Feeder.for_sequence(seq, prefetch=1)
    assert [clip_index(x.numpy()).tolist() for x, _ in feeder.dataset().take(len(expected))] == expected
    with pytest.raises(ValueError, match=r"prefetch must be an integer >= 0. Received: prefetch=-1"):
        Feeder.for_sequence(seq, prefetch=-1)
    seq.close()


def test_wait_is_the_time_spent_blocked_on_a_slow_read(files, monkeypatch):
    seq = ShardedSequence(files["contiguous"], batch_size=4)
    reader = seq.reader()
    real_read = reader.read
    monkeypatch.setattr(reader, "read", lambda batch, out=None: (time.sleep(0.05), real_read(batch, out))[1])
    feeder = Feeder.for_sequence(seq, workers=1, depth=1)
    batches = iter(feeder)
    for _ in range(4):  # nothing is computed between batches: each waits for its whole read
        next(batches)
    # At least the four sleeps. The upper bound only catches a wait counted many times over or a
    # hang, never a slow machine: 60 s, while the four reads take 0.2 s.
    assert 4 * 0.05 <= feeder.wait_seconds < 60
    batches.close()
    seq.close()


def test_with_a_prefetch_buffer_the_wait_is_timed_where_the_step_takes_its_batch(files, monkeypatch):
    """Reads of 0.05 s. A step that computes 0.25 s finds its next batch ready: it waits only for
    the take, though the feeder's thread blocked 0.05 s on every read (what was counted before,
    an upper bound). A step that asks at once waits for the read."""
    seq = ShardedSequence(files["contiguous"], batch_size=4)
    reader = seq.reader()
    real_read = reader.read
    monkeypatch.setattr(reader, "read", lambda batch, out=None: (time.sleep(0.05), real_read(batch, out))[1])
    feeder = Feeder.for_sequence(seq, workers=1, depth=1)
    assert feeder.prefetch == 1  # the default
    batches = iter(feeder.dataset())
    next(batches)
    before = feeder.wait_seconds
    for _ in range(4):
        time.sleep(0.25)
        next(batches)
    assert 0 <= feeder.wait_seconds - before < 0.05  # four reads of 0.05 s all overlapped the steps
    before = feeder.wait_seconds
    for _ in range(6):  # no compute: the buffer and the read ahead hold 2 batches, then each waits a read
        next(batches)
    assert 4 * 0.05 * 0.9 <= feeder.wait_seconds - before < 60
    del batches
    seq.close()


def test_a_resumed_epoch_with_another_global_batch_trains_the_rest_exactly_once():
    """Stopped after 3 global batches of 2 ranks x 4 (24 samples), resumed on 1 rank x 16."""
    from distributed_h5 import sharding

    common = dict(validation_ratio=0.3, seed=5)
    order = sharding.epoch_order(sharding.split(197, 0.3, 5).train, 5, 2).tolist()  # 137 training samples
    before = [sharding.ShardPlan(197, rank=r, size=2, batch_size=4, **common) for r in (0, 1)]
    trained = [i for plan in before for batch in plan.batches(2)[:3] for i in batch.tolist()]
    assert sorted(trained) == sorted(order[:24]) and before[0].samples_after(0, 3) == 24
    after = sharding.ShardPlan(197, rank=0, size=1, batch_size=16, **common)
    rest = [i for batch in after.batches(2, start=24) for i in batch.tolist()]
    # 113 samples remain: 8 batches of 16, the last padded with the order's first 15
    assert len(after.batches(2, start=24)) == 8
    assert sorted(trained + rest) == sorted(order + order[:15])
    assert after.batches(2, start=137) == [] and after.samples_after(24, 8) == 137


def test_train_with_a_prefetch_buffer_trains_the_same_weights(tmp_path):
    """train --prefetch 1 reads ahead through tf.data; the steps, their batches and so the
    weights are those of the default, unbuffered run."""
    import os
    import subprocess
    import sys

    import keras
    import numpy as np

    from distributed_h5.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "data.h5", samples=40, frames=2, size=(8, 8), classes=2, seed=1, progress=False)
    weights = []
    for prefetch in ("0", "1"):
        out = tmp_path / f"prefetch-{prefetch}"
        subprocess.run([sys.executable, "-m", "distributed_h5.cli", "train", str(data), "--epochs", "2",
                        "--batch-size", "4", "--width", "2", "--depth", "1", "--tf-threads", "1", "--optimizer", "sgd",
                        "--prefetch", prefetch, "--checkpoint-dir", str(out)], check=True, capture_output=True,
                       env=dict(os.environ), timeout=300)
        weights.append(keras.models.load_model(out / "epoch-0002.keras").get_weights())
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_the_timing_maps_run_in_the_thread_that_takes_the_batch(files):
    """Feeder.dataset()'s clock and take run inline (use_inter_op_parallelism false: no hand-over
    to TensorFlow's thread pool and back per step), and the clock is no Dataset.counter() (a
    ScanDataset: a third function per step, on that pool). A later TensorFlow without the private
    _MapDataset fails here, not silently slower."""
    import tensorflow as tf

    seq = ShardedSequence(files["contiguous"], batch_size=4)
    graph = tf.compat.v1.GraphDef.FromString(Feeder.for_sequence(seq).dataset()._as_serialized_graph().numpy())
    ops = [node.op for node in graph.node]
    maps = [node for node in graph.node if node.op == "MapDataset"]
    assert len(maps) == 2 and "ScanDataset" not in ops
    assert all("use_inter_op_parallelism" in node.attr for node in maps)  # a missing one would read False
    assert [node.attr["use_inter_op_parallelism"].b for node in maps] == [False, False]
    seq.close()


def test_inline_map_falls_back_to_the_public_map_where_tensorflow_s_private_one_takes_other_arguments(monkeypatch):
    """A later TensorFlow that keeps _MapDataset under another signature gets the public map, not a traceback."""
    import tensorflow as tf
    from tensorflow.python.data.ops import map_op

    from distributed_h5.feeding import inline_map

    real = map_op._MapDataset

    def changed(dataset, function, **kwargs):  # the public map goes through it too, without that argument
        if "use_inter_op_parallelism" in kwargs:
            raise TypeError("_MapDataset.__init__() got an unexpected keyword argument 'use_inter_op_parallelism'")
        return real(dataset, function, **kwargs)

    monkeypatch.setattr(map_op, "_MapDataset", changed)
    dataset = inline_map(tf.data.Dataset.range(3), lambda x: x * 2)
    assert [int(x) for x in dataset] == [0, 2, 4]
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    assert [node.attr["use_inter_op_parallelism"].b for node in graph.node if node.op == "MapDataset"] == [True]
