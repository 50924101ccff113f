"""The Feeder: epoch after epoch in the sequence's order, through tf.data, with its wait counted."""

import time

from distributed_h5 import ShardedSequence
from distributed_h5.feeding import Feeder
from distributed_h5.synthetic import clip_index


def test_feeder_continues_across_epochs_from_a_mid_epoch_start(files):
    seq = ShardedSequence(files["clip-chunks"], batch_size=8, rank=1, size=2, seed=5)
    steps = len(seq)  # 9 batches of 8 over 137 training clips / 2 ranks
    feeder = Feeder(seq, first_epoch=3, start_step=4, workers=2)
    expected = [b.tolist() for b in seq.epoch_batches(3)[4:] + seq.epoch_batches(4) + seq.epoch_batches(5)[:2]]
    got = []
    for x, y in feeder.dataset().take(steps - 4 + steps + 2):
        got.append(clip_index(x.numpy()).tolist())
        assert y.shape == (8, 5)
    assert got == expected
    seq.close()


def test_wait_is_the_time_spent_blocked_on_a_slow_read(files, monkeypatch):
    seq = ShardedSequence(files["contiguous"], batch_size=4)
    reader = seq.reader()
    real_read = reader.read
    monkeypatch.setattr(reader, "read", lambda batch: (time.sleep(0.05), real_read(batch))[1])
    feeder = Feeder(seq, workers=1, depth=1)
    batches = iter(feeder)
    for _ in range(4):  # nothing is computed between batches: each waits for its whole read
        next(batches)
    assert 4 * 0.05 <= feeder.wait_seconds < 1.0  # at least the four sleeps; far from a speed target
    batches.close()
    seq.close()
