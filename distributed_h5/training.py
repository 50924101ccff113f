"""``train_model``: data-parallel training of a compiled Keras model on an HDF5 video file."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import keras

from . import horovod as hvd_adapter
from .sequence import EpochSetter, ShardedSequence

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d{4,})\.keras$")


class _ScaleLearningRate(keras.callbacks.Callback):
    """Learning rate ``base * size``, reached by a linear warm-up from ``base`` (Goyal et al. 2017).

    The global batch is ``size`` times one rank's, so the rate scales with it; the warm-up
    avoids the early instability of a large rate. The rate is a function of (epoch, step),
    so a resumed run follows the same schedule.
    """

    def __init__(self, base: float, size: int, warmup_epochs: float, steps_per_epoch: int):
        super().__init__()
        self.base, self.size = base, size
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch
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


class _Throughput(keras.callbacks.Callback):
    """Samples per second over the whole run, counting every rank's samples."""

    def __init__(self, samples_per_epoch: int):
        super().__init__()
        self.samples_per_epoch = samples_per_epoch
        self.epochs = 0
        self.seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._start
        self.epochs += 1
        if logs is not None:
            logs["samples_per_second"] = self.samples_per_epoch / (time.perf_counter() - self._start)


class _Checkpoint(keras.callbacks.Callback):
    """Rank 0 only: after each epoch, save model and optimizer state atomically, keep the newest few."""

    def __init__(self, directory: Path, keep: int):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.model, self.directory, epoch + 1)
        for old in list_checkpoints(self.directory)[: -self.keep]:
            old[1].unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(epochs_completed, path)`` of every complete checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / name) for name in os.listdir(directory)
             if (m := CHECKPOINT_PATTERN.match(name))]
    return sorted(found)


def save_checkpoint(model, directory: Path, epochs_completed: int) -> Path:
    """Write ``epoch-NNNN.keras`` (weights and optimizer state) under a temporary name, then
    rename it, so a kill mid-write leaves the previous checkpoint intact and no partial file
    that looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"epoch-{epochs_completed:04d}.keras"
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
    use_multiprocessing: bool = False,
    verbose: int = 1,
    callbacks: list | None = None,
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
        threads, workers, use_multiprocessing: reading parallelism, see :class:`ShardedSequence`.
        verbose: Keras progress output on rank 0 (0, 1 or 2).
        callbacks: more Keras callbacks, run on every rank after the package's own.

    Example:
        >>> model = video_classifier((16, 3, 64, 64), classes=4)                 # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        >>> history = train_model(model, "data.h5", batch_size=8, epochs=5)
    """
    if model.optimizer is None or not getattr(model, "compiled", False):
        raise ValueError("model must be compiled (model.compile(optimizer=..., loss=...)) before train_model")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir. Received: checkpoint_dir=None")
    hvd = hvd_adapter.init()
    rank, size = hvd.rank(), hvd.size()
    common = dict(batch_size=batch_size, validation_ratio=validation_ratio, seed=seed, rank=rank, size=size,
                  threads=threads, workers=workers, use_multiprocessing=use_multiprocessing)
    train = ShardedSequence(path, subset="train", remainder=remainder, **common)
    validation = ShardedSequence(path, subset="validation", **common) if validation_ratio > 0 else None

    hvd_adapter.distribute_optimizer(model, hvd)
    if not model.built:
        model(train[0][0][:1])
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    base_rate = float(model.optimizer.learning_rate)  # before a checkpoint can overwrite it with a scaled rate
    # Rank 0 decides where to resume and tells the others; only it reads the checkpoint,
    # and the broadcast below gives every rank its weights and optimizer state.
    initial_epoch = 0
    if resume and rank == 0:
        found = list_checkpoints(checkpoint_dir)
        if found:
            initial_epoch, newest = found[-1]
            model.optimizer.build(model.trainable_variables)
            model.load_weights(newest)
    initial_epoch = hvd_adapter.broadcast_object(initial_epoch, hvd)
    hvd_adapter.broadcast_state(model, hvd)
    if initial_epoch >= epochs:
        return keras.callbacks.History()

    run_callbacks = [EpochSetter(train), _Throughput(len(train) * batch_size * size)]
    if scale_learning_rate:
        run_callbacks.append(_ScaleLearningRate(base_rate, size, warmup_epochs, len(train)))
    run_callbacks.append(_GlobalMetrics(hvd, validation))
    # Rank 0 alone writes: the others hold identical weights and the same global logs.
    if rank == 0:
        if checkpoint_dir is not None:
            run_callbacks.append(_Checkpoint(checkpoint_dir, keep_checkpoints))
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            run_callbacks.append(keras.callbacks.CSVLogger(os.path.join(log_dir, "training.csv"), append=resume))
            run_callbacks.append(keras.callbacks.TensorBoard(os.path.join(log_dir, "tensorboard")))
    run_callbacks += list(callbacks or [])
    try:
        # shuffle=False: the sequence already holds each epoch's order. Keras would otherwise
        # permute the batches with Python's unseeded global random, differently on every rank.
        return model.fit(train, epochs=epochs, initial_epoch=initial_epoch, callbacks=run_callbacks, shuffle=False,
                         verbose=verbose if rank == 0 else 0)
    finally:
        hvd_adapter.undistribute_optimizer(model)  # the caller gets its own optimizer back
        train.close()
        if validation is not None:
            validation.close()
