"""train_model's promises in one process: the caller's directories, optimizer and data are
respected, and a failure is one clear error rather than a wrong result."""

from __future__ import annotations

import subprocess

import h5py
import keras
import numpy as np
import pytest

from distributed_h5 import checkpoints
from distributed_h5.callbacks import NonFiniteLoss
from distributed_h5.dataset import DatasetError
from distributed_h5.models import video_classifier
from distributed_h5.synthetic import make_synthetic
from distributed_h5.training import train_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("promises") / "data.h5", samples=24, frames=2, size=(8, 8),
                          classes=2, seed=3, progress=False)


def compiled(rate=1e-3, batchnorm=False, dropout=0.0):
    model = video_classifier((2, 3, 8, 8), 2, width=2, depth=1, dropout=dropout, batchnorm=batchnorm, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def run(model, data, **kwargs):
    kwargs = {"batch_size": 4, "epochs": 1, "verbose": 0, **kwargs}
    return train_model(model, data, **kwargs)


def test_a_fresh_run_into_a_used_directory_is_refused_and_overwrite_sets_the_old_run_aside(tmp_path, data):
    directory = tmp_path / "ckpt"
    run(compiled(), data, checkpoint_dir=directory)
    before = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    assert before == ["best.keras", "epoch-0001.keras", "tensorboard", "training.csv", "training.png"]
    with pytest.raises(ValueError) as refused:
        run(compiled(), data, checkpoint_dir=directory, epochs=2)
    assert str(refused.value) == (
        f"{directory} holds another run (best.keras, epoch-0001.keras, tensorboard, training.csv, ...): resume it "
        "with --resume (resume=True), choose a new --checkpoint-dir, or pass --overwrite (overwrite=True) to start "
        "over with its files moved into a replaced-* folder there")
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == before  # untouched
    history = run(compiled(), data, checkpoint_dir=directory, epochs=2, keep_checkpoints=1, overwrite=True)
    (aside,) = directory.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == before  # the old run, whole
    assert sorted(p.name for p in directory.glob("*.keras")) == ["best.keras", "epoch-0002.keras"]
    assert history.run.checkpoints == [str(directory / "epoch-0002.keras")]  # only files that exist


def test_the_callers_learning_rate_comes_back_unscaled(tmp_path, data):
    """A resume with twice the checkpoint's global batch scales the rate by 2 while training;
    the caller's optimizer holds its own rate again afterwards (it kept 2e-3 before)."""
    directory = tmp_path / "ckpt"
    run(compiled(), data, checkpoint_dir=directory, warmup_epochs=0)
    model = compiled()
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(np.asarray(model.optimizer.learning_rate))))
    run(model, data, checkpoint_dir=directory, resume=True, epochs=2, batch_size=8, warmup_epochs=0,
        callbacks=[record])
    assert seen == [np.float32(2e-3)]
    assert float(np.asarray(model.optimizer.learning_rate)) == np.float32(1e-3)


def test_a_learning_rate_schedule_is_refused_in_one_line_unless_used_as_it_is(data):
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=10, decay_rate=0.9)
    with pytest.raises(ValueError) as refused:
        run(compiled(schedule), data)
    assert str(refused.value) == (
        "the optimizer's learning rate is a LearningRateSchedule, which train_model cannot scale to the global "
        "batch or warm up: pass scale_learning_rate=False (train --no-scale-lr) to use the schedule as it is, or "
        "give the optimizer a constant rate")
    history = run(compiled(schedule), data, scale_learning_rate=False)
    assert history.epoch == [0]


class PoisonMovingVariance(keras.callbacks.Callback):
    """Sets a BatchNorm moving variance to NaN: unused by the training step, so the loss stays finite."""

    def on_train_batch_end(self, batch, logs=None):
        layer = next(layer for layer in self.model.layers if isinstance(layer, keras.layers.BatchNormalization))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, np.nan, "float32"))


def test_non_finite_weights_under_a_finite_loss_stop_before_any_checkpoint(tmp_path, data):
    with pytest.raises(NonFiniteLoss) as stopped:
        run(compiled(batchnorm=True), data, checkpoint_dir=tmp_path / "ckpt", callbacks=[PoisonMovingVariance()])
    assert str(stopped.value).startswith(
        "the weights (with a finite loss) became non-finite (on this rank) in epoch 0, steps 1-4 of this run's epoch")
    assert list((tmp_path / "ckpt").glob("*.keras")) == []


def test_an_unknown_monitor_is_refused_at_the_first_epochs_end(tmp_path, data):
    with pytest.raises(ValueError) as refused:
        run(compiled(), data, checkpoint_dir=tmp_path / "ckpt", monitor="val_acc")
    assert str(refused.value) == (
        "monitor 'val_acc' is not a logged metric; the epoch's logs have ['accuracy', 'data_wait_fraction', "
        "'learning_rate', 'loss', 'samples_per_second', 'val_accuracy', 'val_loss']. Pick one (--monitor) or none")
    assert list((tmp_path / "ckpt").glob("*.keras")) == []


def test_a_corrupt_chunk_outside_the_probed_clips_is_the_readers_one_line(tmp_path):
    """The feeder's thread meets the bad chunk mid-epoch; train_model raises the reader's
    DatasetError, not TensorFlow's wrapping of it."""
    path = make_synthetic(tmp_path / "gzip.h5", samples=24, frames=2, size=(8, 8), classes=2, seed=3,
                          chunks="clip", compression="gzip", progress=False)
    with h5py.File(path, "r") as file:
        info = file["X"].id.get_chunk_info_by_coord((5, 0, 0, 0, 0))
    with open(path, "r+b") as handle:  # clip 5 is not among the clips read at open
        handle.seek(info.byte_offset)
        handle.write(b"\xff" * info.size)
    with pytest.raises(DatasetError) as failed:
        run(compiled(), path, validation_ratio=0)
    assert str(failed.value) == (f"{path}: chunk 5 of 'X' does not inflate (corrupt?): Error -3 while decompressing "
                                 "data: incorrect header check")


def test_a_full_disk_names_the_checkpoint(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        with pytest.raises(OSError) as failed:
            checkpoints.save(compiled(), mount / "epoch-0001.keras", checkpoints.Position(1), None)
        assert str(failed.value) == f"[Errno 28] cannot write checkpoint {mount / 'epoch-0001.keras'}: " \
                                    "No space left on device"
        assert [p.name for p in mount.iterdir()] == []  # no partial file left
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_dropout_resumed_ends_where_an_uninterrupted_run_does(tmp_path, data):
    """The default model's dropout (0.3): 2 epochs, then a resume to 3, equal 3 epochs straight
    (the masks are a function of seed, epoch and sample; Keras' seed state is in no checkpoint)."""
    straight = compiled(dropout=0.3)
    run(straight, data, epochs=3, warmup_epochs=0, scale_learning_rate=False)
    resumed = compiled(dropout=0.3)
    run(resumed, data, epochs=2, checkpoint_dir=tmp_path / "ckpt", warmup_epochs=0, scale_learning_rate=False)
    again = compiled(dropout=0.3)
    run(again, data, epochs=3, checkpoint_dir=tmp_path / "ckpt", resume=True, warmup_epochs=0,
        scale_learning_rate=False)
    for a, b in zip(straight.get_weights(), again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_stop_signal_met_at_an_epochs_end_records_the_whole_epoch():
    """A signal that arrives after the epoch's last check stops at its end: the position is the
    next epoch's start (the resume runs no empty partial epoch and counts the epochs on)."""
    import signal

    from distributed_h5.callbacks import Agreement, Preempted, Timeline
    from distributed_h5.checkpoints import Position
    from distributed_h5.engines import Single
    from distributed_h5.sharding import ShardPlan

    plan = ShardPlan(96, validation_ratio=0.3, seed=0, batch_size=2)  # 67 training samples, 34 steps
    seen = []
    agreement = Agreement(Single(), Timeline(plan, Position(0)), 8, signal.SIGUSR1, seen.append)
    agreement.set_model(compiled())
    agreement.set_params({"steps": 34})
    agreement.on_epoch_begin(2)
    agreement.received = True
    with pytest.raises(Preempted) as stopped:
        agreement.on_epoch_end(2, {"loss": 1.0})
    assert (stopped.value.at, seen) == (Position(3), [Position(3)])
    assert str(stopped.value) == ("stopped by SIGUSR1 after 3 epochs and 0 samples; a checkpoint was written: run "
                                  "again with resume to continue")
