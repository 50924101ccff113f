"""``train_model``: data-parallel training of a compiled Keras model on an HDF5 video file."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from . import horovod as hvd_adapter
from .feeding import Feeder
from .sequence import ShardedSequence

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.keras$")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal after checkpointing; run again with resume
# Written by rank 0 beside the checkpoint when it stopped on a signal, removed when a run
# resumes: job scripts requeue on it (exit statuses are unreliable once a launcher kills
# the ranks that have not exited yet).
PREEMPTED_MARKER = "PREEMPTED"


class ResumePoint(NamedTuple):
    """Where training stands: ``epoch`` epochs complete, plus ``step`` steps of the next."""

    epoch: int
    step: int = 0


class Preempted(RuntimeError):
    """Every rank stopped at the same step on a signal, after rank 0 wrote a checkpoint."""

    exit_status = EXIT_PREEMPTED

    def __init__(self, signum: int, at: ResumePoint):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {at.epoch} epochs and {at.step} steps; "
                         "a checkpoint was written: run again with resume to continue")
        self.at = at


class _ScaleLearningRate(keras.callbacks.Callback):
    """Learning rate ``base * size``, reached by a linear warm-up from ``base`` (Goyal et al. 2017).

    The global batch is ``size`` times one rank's, so the rate scales with it; the warm-up
    avoids the early instability of a large rate. The rate is a function of (epoch, step),
    so a resumed run follows the same schedule.
    """

    def __init__(self, base: float, size: int, warmup_epochs: float, steps_per_epoch: int, resume_at: ResumePoint):
        super().__init__()
        self.base, self.size = base, size
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.steps_per_epoch, self.resume_at = steps_per_epoch, resume_at
        self.first_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        offset = self.resume_at.step if epoch == self.resume_at.epoch else 0
        self.first_step = epoch * self.steps_per_epoch + offset

    def on_train_batch_begin(self, batch, logs=None):
        step = self.first_step + batch
        progress = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        self.model.optimizer.learning_rate = self.base * (1 + (self.size - 1) * progress)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class _GlobalMetrics(keras.callbacks.Callback):
    """Make epoch logs global: training metrics averaged over ranks, validation on all shards.

    Runs on every rank, before any callback that reads the logs. Validation shards are
    unpadded, and metric states (sums and counts) are summed across ranks, so the
    validation metrics equal one process's on the whole validation subset.
    """

    def __init__(self, hvd, validation: ShardedSequence | None):
        super().__init__()
        self.hvd, self.validation = hvd, validation

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(hvd_adapter.average_logs(logs, self.hvd))
        if self.validation is not None:
            logs.update({f"val_{k}": float(v) for k, v in evaluate(self.model, self.validation, self.hvd).items()})


class _EpochTiming(keras.callbacks.Callback):
    """Per epoch: samples per second (all ranks' samples), and ``data_wait_fraction``, the
    share of the epoch this rank's training steps spent waiting for their batch (measured
    by the :class:`Feeder`). Averaged over ranks like every log, printed by rank 0."""

    def __init__(self, batch_size: int, size: int):
        super().__init__()
        self.samples_per_step = batch_size * size
        self.feeder = None  # set by train_model for each fit

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._waited = time.perf_counter(), self.feeder.wait_seconds

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            elapsed = time.perf_counter() - self._start
            logs["samples_per_second"] = self.params["steps"] * self.samples_per_step / elapsed
            logs["data_wait_fraction"] = (self.feeder.wait_seconds - self._waited) / elapsed


class _StopAfterEpoch(keras.callbacks.Callback):
    """End ``fit`` after its first epoch (a resumed partial epoch has fewer batches)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


class _Checkpoint(keras.callbacks.Callback):
    """Rank 0 only: after each epoch, save model and optimizer state atomically, keep the newest few."""

    def __init__(self, directory: Path, keep: int):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.model, self.directory, ResumePoint(epoch + 1))
        for _, old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)


class _StopOnSignal(keras.callbacks.Callback):
    """On ``signum`` (SLURM's warning before the time limit, say), stop every rank at the
    same step, have rank 0 checkpoint, and raise :class:`Preempted` on every rank.

    Ranks receive the signal at different steps, so after every step they agree with a
    max-allreduce of a flag; stopping at different steps would leave an allreduce hanging.
    """

    def __init__(self, hvd, signum: int, directory: Path, resume_at: ResumePoint):
        super().__init__()
        self.hvd, self.signum, self.directory, self.resume_at = hvd, signum, directory, resume_at
        self.received = False

    def on_train_begin(self, logs=None):
        self.previous = signal.signal(self.signum, self._receive)

    def on_train_end(self, logs=None):
        signal.signal(self.signum, self.previous)

    def _receive(self, signum, frame):
        self.received = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.offset = self.resume_at.step if epoch == self.resume_at.epoch else 0

    def on_train_batch_end(self, batch, logs=None):
        flag = np.array([int(self.received)], dtype=np.int32)
        if not self.hvd.allreduce(flag, op=self.hvd.Max, name="distributed_h5.stop").numpy()[0]:
            return
        at = ResumePoint(self.epoch, self.offset + batch + 1)
        if self.hvd.rank() == 0:  # rank 0 alone writes
            save_checkpoint(self.model, self.directory, at)
            (self.directory / PREEMPTED_MARKER).write_text(f"{at.epoch} {at.step}\n")
        # A barrier, so no rank exits (and no launcher kills rank 0) before the checkpoint is on disk.
        self.hvd.allreduce(np.zeros(1, dtype=np.int32), name="distributed_h5.checkpointed")
        signal.signal(self.signum, self.previous)
        raise Preempted(self.signum, at)


def list_checkpoints(directory: Path) -> list[tuple[ResumePoint, Path]]:
    """``(resume point, path)`` of every complete checkpoint in ``directory``, oldest first."""
    if directory is None or not directory.is_dir():
        return []
    found = [(ResumePoint(int(m.group(1)), int(m.group(2) or 0)), directory / name)
             for name in os.listdir(directory) if (m := CHECKPOINT_PATTERN.match(name))]
    return sorted(found)


def save_checkpoint(model, directory: Path, at: ResumePoint) -> Path:
    """Write ``epoch-NNNN.keras`` (or ``epoch-NNNN-step-SSSSSS.keras`` mid-epoch), with weights
    and optimizer state, under a temporary name, then rename it: a kill mid-write leaves the
    previous checkpoint intact and no partial file that looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{at.epoch:04d}" + (f"-step-{at.step:06d}" if at.step else "")
    final = directory / f"{name}.keras"
    partial = directory / f".partial-{os.getpid()}-{final.name}"
    try:
        with hvd_adapter.plain_optimizer(model):  # loadable without this package
            model.save(partial)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final


def evaluate(model, sequence: ShardedSequence, hvd) -> dict[str, float]:
    """The model's compiled loss and metrics on every rank's validation shard together."""
    model.evaluate(sequence, verbose=0)
    hvd_adapter.sum_metric_states(model, hvd)
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def train_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    validation_ratio: float = 0.3,
    batch_size: int = 32,
    epochs: int = 10,
    seed: int = 0,
    scale_learning_rate: bool = True,
    warmup_epochs: float = 3,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    keep_checkpoints: int = 2,
    log_dir: str | os.PathLike | None = None,
    remainder: str = "pad",
    threads: int | None = None,
    workers: int = 1,
    verbose: int = 1,
    callbacks: list | None = None,
    stop_signal: int | None = None,
) -> keras.callbacks.History:
    """Train a compiled Keras ``model`` on the HDF5 file ``path`` across all Horovod ranks.

    Run it in every process of the job (``horovodrun``, ``mpirun`` or ``srun``), or in one
    process alone. Each rank trains on its shard of the training subset; gradients are
    averaged by allreduce inside the compiled step, so replicas stay identical. Returns the
    Keras ``History``, the same on every rank: training metrics averaged over ranks, and
    ``val_*`` metrics computed on the whole validation subset.

    Guarantees: every rank runs the same number of steps; the data order depends only on
    ``seed`` and the epoch, not on the number of ranks; only rank 0 prints and writes.

    Args:
        model: a compiled Keras model; its optimizer, loss and metrics are kept.
        path: HDF5 file in the package's layout.
        validation_ratio: fraction held out for validation; 0 skips validation (default 0.3).
        batch_size: clips per step on each rank; the global batch is ``batch_size * size``.
        epochs: total epochs, counting those done before a resume (default 10).
        seed: seeds the split and each epoch's order (default 0).
        scale_learning_rate: multiply the learning rate by the number of ranks (default True).
        warmup_epochs: epochs of linear warm-up to the scaled rate (default 3; 0 for none).
        checkpoint_dir: where rank 0 writes ``epoch-NNNN.keras`` after each epoch (default: none).
        resume: continue from the newest checkpoint in ``checkpoint_dir``, if any.
        keep_checkpoints: how many checkpoints to keep (default 2).
        log_dir: where rank 0 writes ``training.csv`` and TensorBoard logs (default: none).
        remainder: ``"pad"`` or ``"drop"`` the last partial global batch (default ``"pad"``).
        threads: reader threads per batch (default: usable cores, at most 4).
        workers: batches read ahead in parallel by the feeder (default 1; 2 batches ahead each).
        verbose: Keras progress output on rank 0 (0, 1 or 2).
        callbacks: more Keras callbacks, run on every rank after the package's own.
        stop_signal: a signal (e.g. ``signal.SIGUSR1``) on which every rank stops at the same
            step, rank 0 writes a mid-epoch checkpoint, and :class:`Preempted` is raised; a
            run with ``resume=True`` then continues from that very step. Needs ``checkpoint_dir``.

    Example:
        >>> model = video_classifier((16, 3, 64, 64), classes=4)                 # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        >>> history = train_model(model, "data.h5", batch_size=8, epochs=5)
    """
    if model.optimizer is None or not getattr(model, "compiled", False):
        raise ValueError("model must be compiled (model.compile(optimizer=..., loss=...)) before train_model")
    if (resume or stop_signal is not None) and checkpoint_dir is None:
        raise ValueError("resume and stop_signal need a checkpoint_dir. Received: checkpoint_dir=None")
    hvd = hvd_adapter.init()
    rank, size = hvd.rank(), hvd.size()
    common = dict(batch_size=batch_size, validation_ratio=validation_ratio, seed=seed, rank=rank, size=size,
                  threads=threads)
    train = ShardedSequence(path, subset="train", remainder=remainder, **common)
    validation = ShardedSequence(path, subset="validation", **common) if validation_ratio > 0 else None
    steps_per_epoch = len(train)

    try:
        hvd_adapter.distribute_optimizer(model, hvd)
        if not model.built:
            model(train[0][0][:1])
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        base_rate = float(model.optimizer.learning_rate)  # before a checkpoint can overwrite it with a scaled rate
        # Rank 0 decides where to resume and tells the others; only it reads the checkpoint,
        # and the broadcast below gives every rank its weights and optimizer state.
        resume_at = ResumePoint(0)
        if resume and rank == 0:
            (checkpoint_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
            found = list_checkpoints(checkpoint_dir)
            if found:
                resume_at, newest = found[-1]
                model.optimizer.build(model.trainable_variables)
                model.load_weights(newest)
        resume_at = ResumePoint(*hvd_adapter.broadcast_object(tuple(resume_at), hvd))
        if resume_at.step >= steps_per_epoch:  # stopped after an epoch's last step
            resume_at = ResumePoint(resume_at.epoch + 1)
        hvd_adapter.broadcast_state(model, hvd)
        if resume_at.epoch >= epochs:
            return keras.callbacks.History()

        timing = _EpochTiming(batch_size, size)
        run_callbacks = [timing]
        if scale_learning_rate:
            run_callbacks.append(_ScaleLearningRate(base_rate, size, warmup_epochs, steps_per_epoch, resume_at))
        if stop_signal is not None:
            run_callbacks.append(_StopOnSignal(hvd, stop_signal, checkpoint_dir, resume_at))
        run_callbacks.append(_GlobalMetrics(hvd, validation))
        # Rank 0 alone writes: the others hold identical weights and the same global logs.
        if rank == 0:
            if checkpoint_dir is not None:
                run_callbacks.append(_Checkpoint(checkpoint_dir, keep_checkpoints))
            if log_dir is not None:
                csv_path = Path(log_dir) / "training.csv"
                csv_path.parent.mkdir(parents=True, exist_ok=True)
                if resume_at == ResumePoint(0):
                    csv_path.unlink(missing_ok=True)
                run_callbacks.append(keras.callbacks.CSVLogger(str(csv_path), append=True))
                run_callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, "tensorboard")))
        run_callbacks += list(callbacks or [])

        def fit(first_epoch: int, start_step: int = 0, only_one: bool = False) -> keras.callbacks.History:
            # The feeder yields epoch after epoch in the sequence's order from (first_epoch,
            # start_step): the data order never depends on when Keras calls back.
            timing.feeder = Feeder(train, first_epoch, start_step, workers=workers)
            # shuffle=False: the order is already shuffled by (seed, epoch), identically on every rank.
            return model.fit(timing.feeder.dataset(), epochs=epochs, initial_epoch=first_epoch, shuffle=False,
                             steps_per_epoch=steps_per_epoch - start_step,
                             callbacks=run_callbacks + ([_StopAfterEpoch()] if only_one else []),
                             verbose=verbose if rank == 0 else 0)

        histories = []
        if resume_at.step:  # finish the interrupted epoch from the step it stopped at, in a fit of its own
            histories.append(fit(resume_at.epoch, resume_at.step, only_one=True))
        first_full_epoch = resume_at.epoch + (1 if resume_at.step else 0)
        if first_full_epoch < epochs:
            histories.append(fit(first_full_epoch))
        return _merge(histories)
    finally:
        hvd_adapter.undistribute_optimizer(model)  # the caller gets its own optimizer back
        train.close()
        if validation is not None:
            validation.close()


def _merge(histories: list[keras.callbacks.History]) -> keras.callbacks.History:
    """One History from the fit of a resumed partial epoch and the fit of the epochs after it."""
    merged = histories[-1]
    for earlier in histories[:-1]:
        for key, values in earlier.history.items():
            merged.history[key] = values + merged.history.get(key, [])
        merged.epoch = earlier.epoch + merged.epoch
    return merged
