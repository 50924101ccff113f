"""ShardedSequence: rank-aware, aligned, picklable, and usable by Keras with workers."""

import pickle

import h5py
import numpy as np
import pytest

from distributed_h5 import DatasetError, ShardedSequence, sharding
from distributed_h5.sequence import EpochSetter
from distributed_h5.synthetic import clip_index


def labels_of(path):
    with h5py.File(path, "r", locking=False) as file:
        return file["Y"][:].argmax(1)


@pytest.mark.parametrize("layout", ["contiguous", "clip-chunks", "gzip", "lzf"])
def test_eight_simulated_ranks_read_one_process_order(files, layout):
    path, labels = files[layout], labels_of(files[layout])
    ranks = [ShardedSequence(path, batch_size=3, rank=r, size=8, seed=11, epoch=2) for r in range(8)]
    single = ShardedSequence(path, batch_size=24, rank=0, size=1, seed=11, epoch=2)
    assert {len(seq) for seq in ranks} == {len(single)} == {-(-int(0.7 * 197) // 24)}
    for step in range(len(single)):
        union = []
        for seq in ranks:
            x, y = seq[step]
            index = clip_index(x)
            assert index.tolist() == seq.indices(step).tolist()
            assert y.argmax(1).tolist() == labels[index].tolist()  # X and Y rows aligned
            union += index.tolist()
        assert sorted(union) == clip_index(single[step][0]).tolist()


def test_validation_subset_reads_every_validation_sample_once(files):
    path = files["clip-chunks"]
    validation = sharding.split(197, 0.3, seed=0).validation
    seen = []
    for rank in range(3):
        seq = ShardedSequence(path, subset="validation", batch_size=7, rank=rank, size=3)
        for i in range(len(seq)):
            seen += clip_index(seq[i][0]).tolist()
    assert sorted(seen) == validation.tolist()


def test_epochs_follow_set_epoch(files):
    seq = ShardedSequence(files["contiguous"], batch_size=5, seed=3)
    epoch0 = [seq.indices(i).tolist() for i in range(len(seq))]
    seq.set_epoch(1)
    epoch1 = [seq.indices(i).tolist() for i in range(len(seq))]
    assert epoch1 != epoch0
    seq.set_epoch(0)
    assert [seq.indices(i).tolist() for i in range(len(seq))] == epoch0
    expected = sharding.shard(197, seed=3, epoch=1, batch_size=5)
    assert epoch1 == [b.tolist() for b in expected]


def test_pickles_without_its_open_file(files):
    seq = ShardedSequence(files["gzip"], batch_size=4, rank=1, size=2)
    before = seq[1]
    copy = pickle.loads(pickle.dumps(seq))
    assert copy._reader is None
    after = copy[1]
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_rank_and_size_default_to_one_process(files):
    seq = ShardedSequence(files["contiguous"])
    assert (seq.rank, seq.size) == (0, 1)


def test_bad_rank_and_bad_file(files, tmp_path):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 3\] for size=4. Received: rank=4"):
        ShardedSequence(files["contiguous"], rank=4, size=4)
    with pytest.raises(ValueError, match="pass both rank and size, or neither"):
        ShardedSequence(files["contiguous"], rank=1)
    with pytest.raises(DatasetError, match="no such file"):
        ShardedSequence(tmp_path / "missing.h5")
    with pytest.raises(IndexError, match="batch index must be in"):
        ShardedSequence(files["contiguous"], batch_size=100)[5]


@pytest.mark.parametrize("workers, multiprocessing", [(1, False), (2, False), (2, True)])
def test_keras_fit_trains_on_each_epochs_order(files, workers, multiprocessing):
    """The model sees exactly the batches of shard(epoch) in order, epoch by epoch, with
    batches read in this thread, in worker threads, or in worker processes."""
    import keras

    seq = ShardedSequence(files["clip-chunks"], batch_size=16, rank=1, size=2, seed=4,
                          workers=workers, use_multiprocessing=multiprocessing)
    seen = []

    class Record(keras.layers.Layer):  # the model reads each clip's index from its pixels
        def call(self, x):
            if hasattr(x, "numpy"):  # an eager batch, not a symbolic tensor while building
                seen.append(clip_index(x.numpy()).tolist())
            return keras.ops.cast(x, "float32")

    inputs = keras.Input((8, 3, 16, 16), dtype="uint8")
    model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(Record()(inputs))))
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True), run_eagerly=True)
    history = model.fit(seq, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[EpochSetter(seq)])
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    expected = [b.tolist() for epoch in (1, 2)
                for b in sharding.shard(197, seed=4, epoch=epoch, rank=1, size=2, batch_size=16)]
    assert seen == expected
