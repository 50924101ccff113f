"""Clip sampling and augmentation: every choice a pure function of (seed, epoch, index), views in
bounds, the centre view for validation, and window reads byte-exact in every layout."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_h5 import ShardedSequence, checkpoints
from distributed_h5.augment import Augment
from distributed_h5.feeding import Feeder
from distributed_h5.reader import BatchReader

from .test_cli import run_cli

CLIP = (8, 3, 16, 16)  # the conftest files' clips


def truth(path) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as file:
        return file["X"][:]


def expected_clip(stored: np.ndarray, augment: Augment, views, row: int) -> np.ndarray:
    """What ``augment`` should make of one stored clip, from its view, by plain numpy slicing."""
    start, span = int(views.start[row]), augment.span(stored.shape)
    window = stored[start : start + span : augment.frame_stride]
    rows, cols = augment.crop or stored.shape[2:]
    top, left = int(views.top[row]), int(views.left[row])
    clip = window[:, :, top : top + rows, left : left + cols]
    return clip[..., ::-1] if views.flip[row] else clip


# --- the choices ---------------------------------------------------------------------------
augments = st.builds(
    Augment,
    clip_frames=st.one_of(st.none(), st.integers(1, 4)),
    frame_stride=st.integers(1, 3),
    crop=st.one_of(st.none(), st.tuples(st.integers(1, 16), st.integers(1, 16))),
    flip=st.booleans(),
    scale=st.one_of(st.none(), st.tuples(st.integers(16, 20), st.integers(0, 8)).map(lambda p: (p[0], p[0] + p[1]))),
).filter(lambda a: fits(a, CLIP))


def fits(augment: Augment, clip_shape) -> bool:
    try:
        augment.output_shape(clip_shape)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(augments, st.integers(-2**40, 2**40), st.integers(0, 1000),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_each_view_depends_only_on_seed_epoch_and_index(augment, seed, epoch, indices, rnd):
    """A sample's view is the same read alone or in any batch, in any order; and in bounds."""
    indices = np.array(indices)
    views = augment.views(indices, CLIP, seed=seed, epoch=epoch, training=True)
    shuffled = indices.copy()
    rnd.shuffle(shuffled)
    again = augment.views(shuffled, CLIP, seed=seed, epoch=epoch, training=True)
    for field in views._fields:
        by_index = dict(zip(indices.tolist(), getattr(views, field).tolist()))
        assert [by_index[i] for i in shuffled.tolist()] == getattr(again, field).tolist()
        alone = [getattr(augment.views([i], CLIP, seed=seed, epoch=epoch, training=True), field)[0]
                 for i in indices[:3]]
        assert alone == getattr(views, field)[:3].tolist()
    span, (rows, cols) = augment.span(CLIP), augment.crop or CLIP[2:]
    assert ((views.start >= 0) & (views.start + span <= CLIP[0])).all()
    assert ((views.top >= 0) & (views.top + rows <= views.rows)).all()
    assert ((views.left >= 0) & (views.left + cols <= views.cols)).all()
    if augment.scale:
        assert (np.minimum(views.rows, views.cols) >= augment.scale[0]).all()
        assert (np.minimum(views.rows, views.cols) <= augment.scale[1]).all()
    if not augment.flip:
        assert not views.flip.any()


@settings(max_examples=60, deadline=None)
@given(augments, st.integers(0, 2**31), st.integers(0, 50))
def test_validation_takes_the_centre_view_whatever_the_seed_and_epoch(augment, seed, epoch):
    views = augment.views(np.arange(5), CLIP, seed=seed, epoch=epoch, training=False)
    span, (rows, cols) = augment.span(CLIP), augment.crop or CLIP[2:]
    short = augment.scale[0] if augment.scale else 16
    assert views.start.tolist() == [(CLIP[0] - span) // 2] * 5
    assert views.rows.tolist() == [short] * 5 and views.cols.tolist() == [short] * 5
    assert views.top.tolist() == [(short - rows) // 2] * 5 and views.left.tolist() == [(short - cols) // 2] * 5
    assert not views.flip.any()


def test_views_change_with_epoch_and_seed_and_flip_half_the_time():
    augment = Augment(clip_frames=4, crop=(8, 8), flip=True)
    indices = np.arange(2000)
    base = augment.views(indices, CLIP, seed=0, epoch=0, training=True)
    for other in (augment.views(indices, CLIP, seed=0, epoch=1, training=True),
                  augment.views(indices, CLIP, seed=1, epoch=0, training=True)):
        assert (other.start != base.start).mean() > 0.5 and (other.top != base.top).mean() > 0.5
    assert 0.45 < base.flip.mean() < 0.55
    assert np.bincount(base.start, minlength=5).min() > 300  # 5 window starts, all drawn
    # Turning flip off leaves every other choice as it was.
    plain = dataclasses.replace(augment, flip=False).views(indices, CLIP, seed=0, epoch=0, training=True)
    assert (plain.start == base.start).all() and (plain.top == base.top).all() and not plain.flip.any()


def test_output_shape_and_bad_arguments():
    assert Augment().output_shape((32, 3, 112, 112)) == (32, 3, 112, 112)
    assert Augment(clip_frames=16, crop=(96, 96), flip=True).output_shape((32, 3, 112, 112)) == (16, 3, 96, 96)
    assert Augment(clip_frames=8, frame_stride=4, crop=(112, 112), scale=(128, 160)).output_shape(
        (32, 3, 120, 160)) == (8, 3, 112, 112)
    with pytest.raises(ValueError, match=r"spans 33 frames, but the file's clips have 32"):
        Augment(clip_frames=17, frame_stride=2).output_shape((32, 3, 112, 112))
    with pytest.raises(ValueError, match=r"crop=\(120, 96\) does not fit: the file's frames are \(112, 112\)"):
        Augment(crop=(120, 96)).output_shape((32, 3, 112, 112))
    with pytest.raises(ValueError, match=r"short side 100 are \(100, 133\)"):
        Augment(crop=(112, 112), scale=(100, 120)).output_shape((32, 3, 120, 160))
    with pytest.raises(ValueError, match="scale needs a crop"):
        Augment(scale=(100, 120)).output_shape((32, 3, 120, 160))
    for kwargs in (dict(clip_frames=0), dict(frame_stride=1.5), dict(crop=(0, 3)), dict(crop=(3,)),
                   dict(scale=(5, 4)), dict(flip="yes")):
        with pytest.raises(ValueError, match="Received"):
            Augment(**kwargs)


# --- the reads -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "clip-chunks", "gzip", "lzf"])
@pytest.mark.parametrize("threads", [1, 3])
def test_window_reads_equal_reading_the_clip_and_slicing(files, layout, threads):
    stored = truth(files[layout])
    rng = np.random.default_rng(3)
    with BatchReader(files[layout], threads=threads) as reader:
        for frames, stride in [(1, 1), (3, 1), (8, 1), (3, 2), (2, 7), (4, 2)]:
            span = (frames - 1) * stride + 1
            indices = np.sort(rng.choice(197, 9, replace=False))
            indices[1] = indices[0] + 1  # clips adjacent on disk
            starts = rng.integers(0, CLIP[0] - span + 1, indices.size)
            x, y = reader.read_windows(indices, starts, frames, stride)
            for row, (index, start) in enumerate(zip(indices, starts)):
                np.testing.assert_array_equal(x[row], stored[index, start : start + span : stride])
            np.testing.assert_array_equal(y, reader.read(indices)[1])
        with pytest.raises(ValueError, match=r"must start in \[0, 5\]"):
            reader.read_windows(np.array([1, 2]), np.array([0, 6]), 3)


@pytest.mark.parametrize("layout", ["contiguous", "clip-chunks", "gzip", "lzf"])
def test_augmented_pixels_are_the_stored_ones_windowed_cropped_and_flipped(files, layout):
    stored = truth(files[layout])
    indices = np.array([0, 1, 2, 30, 31, 100, 196])
    with BatchReader(files[layout], threads=2) as reader:
        for augment in (Augment(clip_frames=4, crop=(10, 12), flip=True), Augment(clip_frames=3, frame_stride=2),
                        Augment(crop=(16, 9), flip=True), Augment(clip_frames=5, crop=(10, 12), scale=(16, 16))):
            for training in (True, False):
                views = augment.views(indices, CLIP, seed=4, epoch=2, training=training)
                x, y = augment.read(reader, indices, seed=4, epoch=2, training=training)
                assert x.dtype == np.uint8 and x.shape == (indices.size, *augment.output_shape(CLIP))
                for row, index in enumerate(indices):
                    np.testing.assert_array_equal(x[row], expected_clip(stored[index], augment, views, row))


def test_a_scale_is_a_nearest_neighbour_resize(files):
    """Twice the short side: every stored pixel becomes a 2 x 2 block (then cropped and flipped)."""
    stored = truth(files["contiguous"])
    augment = Augment(clip_frames=2, crop=(32, 32), flip=True, scale=(32, 32))
    indices = np.arange(40, 60)
    with BatchReader(files["contiguous"]) as reader:
        x, _ = augment.read(reader, indices, seed=1, epoch=0, training=True)
    views = augment.views(indices, CLIP, seed=1, epoch=0, training=True)
    assert views.flip.any() and not views.flip.all()
    for row, index in enumerate(indices):
        window = stored[index, views.start[row] : views.start[row] + 2]
        doubled = window.repeat(2, axis=2).repeat(2, axis=3)
        np.testing.assert_array_equal(x[row], doubled[..., ::-1] if views.flip[row] else doubled)


def test_sequences_and_the_feeder_give_each_sample_the_same_clip_on_any_rank_count(files):
    """1 rank x batch 8 and 2 ranks x batch 4 (and the Feeder from mid-epoch) see identical augmented clips."""
    augment = Augment(clip_frames=5, crop=(12, 12), flip=True)
    path = files["clip-chunks"]

    def clips_by_index(sequences, epoch):
        seen = {}
        for seq in sequences:
            seq.set_epoch(epoch)
            for i in range(len(seq)):
                for index, clip in zip(seq.indices(i).tolist(), seq[i][0]):
                    assert seen.setdefault(index, clip.tobytes()) == clip.tobytes()
        return seen

    one = [ShardedSequence(path, batch_size=8, rank=0, size=1, seed=3, augment=augment)]
    two = [ShardedSequence(path, batch_size=4, rank=r, size=2, seed=3, augment=augment) for r in (0, 1)]
    for epoch in (0, 1):
        assert clips_by_index(one, epoch) == clips_by_index(two, epoch)
    assert clips_by_index(one, 0) != clips_by_index(one, 1)
    # The Feeder, started mid-epoch 1, gives the sequence's batches of epochs 1 and 2.
    seq = two[1]
    feeder = Feeder.for_sequence(seq, first_epoch=1, start=2 * 8)
    expected = []
    for epoch in (1, 2):
        seq.set_epoch(epoch)
        expected += [seq[i][0] for i in range(2 if epoch == 1 else 0, len(seq))]
    got = [x for x, _ in zip((x for x, _ in feeder), expected)]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # Validation: the centre view, whatever the epoch.
    validation = ShardedSequence(path, batch_size=8, subset="validation", seed=3, rank=0, size=1, augment=augment)
    stored, views = truth(path), augment.views(validation.indices(0), CLIP, seed=0, epoch=0, training=False)
    first = validation[0][0]
    validation.set_epoch(5)
    np.testing.assert_array_equal(validation[0][0], first)
    for row, index in enumerate(validation.indices(0)):
        np.testing.assert_array_equal(first[row], expected_clip(stored[index], augment, views, row))
    for seq in one + two + [validation]:
        seq.close()


def test_old_checkpoint_records_load_without_augmentation_fields():
    record = {"config": dict(seed=0, validation_ratio=0.3, sample_count=10, fingerprint="f", path="p", file_bytes=1,
                             remainder="pad", batch_size=2, ranks=1, global_batch=2, base_batch=2, precision="float32",
                             engine="horovod", version="0")}
    config = checkpoints.record_config(record)
    assert (config.clip_frames, config.frame_stride, config.crop, config.flip, config.scale) == (
        None, 1, None, False, None)
    changed = dataclasses.replace(config, clip_frames=4, crop=[8, 8], flip=True)
    assert config.differences(changed) == []  # a resume may change the augmentation


def test_train_refuses_a_view_that_does_not_fit_in_one_line(files, tmp_path):
    done = run_cli("train", files["contiguous"], "--epochs", "1", "--clip-frames", "4", "--frame-stride", "3")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "distributed-h5 train: error: clip_frames=4 with frame_stride=3 spans 10 frames, but the file's clips have 8 "
        "(clip shape (8, 3, 16, 16)); store more frames or ask for fewer"]
    # A model file built for the stored clips, fed augmented ones.
    from distributed_h5.models import video_classifier

    model = video_classifier(CLIP, 5, width=4, depth=1)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.save(tmp_path / "stored.keras")
    done = run_cli("train", files["contiguous"], "--model", tmp_path / "stored.keras", "--clip-frames", "4")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"distributed-h5 train: error: --model {tmp_path / 'stored.keras'} takes clips of shape (8, 3, 16, 16), but "
        "the clips it would be fed are (4, 3, 16, 16) (the file's, after --clip-frames/--frame-stride/--crop)"]
