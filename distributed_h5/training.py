"""``train_model``: data-parallel training of a compiled Keras model on an HDF5 video file.

Imports Keras; the engine (:mod:`distributed_h5.engines`) is imported when training starts:
Horovod (with TensorFlow) on Keras' TensorFlow backend, JAX on its JAX backend, or none for
one process on TensorFlow.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from . import __version__, checkpoints, engines, keras_internals, randomness, replicas
from .callbacks import (Agreement, Checkpointer, Commit, EpochTiming, GlobalState, LearningRate, SampleKeys,
                        StopAfterEpoch, Timeline)
from .checkpoints import PRECISIONS, Position, RunConfig
from .data.augment import Augment
from .data.checks import positive_int
from .data.outputs import pyplot, save_figure
from .engines import collective as collectives
from .engines.collective import ENGINES
from .feeding import Feeder
from .layers import synchronized_batchnorm
from .sequence import ShardedSequence


@dataclass
class RunSummary:
    """What a ``train_model`` call did, attached to the returned History as ``history.run``."""

    ranks: int
    epochs_run: list[int] = field(default_factory=list)
    resumed_from: Position | None = None
    best: dict | None = None
    monitor: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    # This rank's steps after the run's first ``untimed_steps`` (which trace and compile the
    # step): how many, and their wall time and wait for data, per step (callbacks included).
    timed_steps: int = 0
    step_seconds: float = math.nan
    data_wait_seconds: float = math.nan

    @property
    def data_wait_fraction(self) -> float:
        """The share of the timed steps' wall time spent waiting for data."""
        return self.data_wait_seconds / self.step_seconds if self.timed_steps else math.nan

    def line(self, history) -> str:
        """The one summary line the CLI prints."""
        final = {key: values[-1] for key, values in history.history.items() if values}
        parts = [f"ranks={self.ranks}", f"epochs={len(self.epochs_run)}"]
        if self.resumed_from is not None:
            parts.append(f"resumed_from=epoch:{self.resumed_from.epoch},sample:{self.resumed_from.sample}")
        parts += [f"{key}={value:.4g}" for key, value in sorted(final.items())]
        if self.best:
            parts.append(f"best_epoch={self.best['epoch']} best_{self.monitor}={self.best[self.monitor]:.4g}")
        if self.checkpoints:
            parts.append(f"checkpoint={self.checkpoints[-1]}")
        parts.append(f"elapsed={self.elapsed_seconds:.1f}s")
        return "summary: " + " ".join(parts)


def evaluate(model, sequence: ShardedSequence, collective) -> dict[str, float]:
    """The model's compiled loss and metrics on every rank's validation shard together."""
    model.evaluate(sequence, verbose=0)
    replicas.sum_metric_states(model, collective)
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def _check_arguments(*, epochs, batch_size, keep_checkpoints, warmup_epochs, check_every, precision, learning_rate,
                     monitor, engine, commit_every, steps_per_epoch, untimed_steps):
    positive_int("epochs", epochs)
    positive_int("steps_per_epoch", steps_per_epoch, optional=True)
    if not isinstance(untimed_steps, (int, np.integer)) or isinstance(untimed_steps, bool) or untimed_steps < 0:
        raise ValueError(f"untimed_steps must be an integer >= 0. Received: untimed_steps={untimed_steps!r}")
    positive_int("batch_size", batch_size)
    positive_int("keep_checkpoints", keep_checkpoints)
    positive_int("check_every", check_every)
    positive_int("commit_every", commit_every)
    if not (isinstance(warmup_epochs, (int, float)) and math.isfinite(warmup_epochs) and warmup_epochs >= 0):
        raise ValueError(f"warmup_epochs must be a finite number >= 0. Received: warmup_epochs={warmup_epochs!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"the optimizer's learning rate must be a finite number > 0. Received: {learning_rate!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={precision!r}")
    if monitor is not None and not isinstance(monitor, str):
        raise ValueError(f"monitor must be a metric name such as 'val_loss' or None. Received: {monitor!r}")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}. Received: engine={engine!r}")


def _prepare_directories(rank: int, checkpoint_dir: Path | None, log_dir: Path | None, locked: bool = False,
                         first: bool = True, resume: bool = False, overwrite: bool = False):
    """Rank 0: create and probe the directories it will write, lock the checkpoint
    directory (unless this process holds the lock already: ``locked``), and, on a run's
    ``first`` attempt that does not ``resume``, refuse directories that hold another run's
    files, or set those files aside when ``overwrite``. Returns ``(lock, error)``: the
    one-line error every rank will raise."""
    if rank != 0:
        return None, None
    try:
        for directory in {d for d in (checkpoint_dir, log_dir) if d is not None}:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        return None, f"cannot write to {exc.filename or directory}: {exc.strerror or exc}"
    lock = None
    if checkpoint_dir is not None and not locked:
        lock = checkpoints.DirectoryLock(checkpoint_dir)
        try:
            lock.acquire()
        except (RuntimeError, OSError) as exc:
            return None, str(exc)
    if first and not resume:
        # A run's files are the user's: a fresh run into a directory that holds one would
        # overwrite its logs and best checkpoint and mix its checkpoints with the new run's.
        for directory in dict.fromkeys(d for d in (checkpoint_dir, log_dir) if d is not None):
            found = checkpoints.run_files(directory)
            if found and not overwrite:
                if lock is not None:
                    lock.release()
                return None, (f"{directory} holds another run ({', '.join(p.name for p in found[:4])}"
                              f"{', ...' if len(found) > 4 else ''}): resume it with --resume (resume=True), "
                              "choose a new --checkpoint-dir, or pass --overwrite (overwrite=True) to start over "
                              "with its files moved into a replaced-* folder there")
            if found:
                aside = checkpoints.set_aside(directory, found)
                print(f"distributed_h5: --overwrite: moved the previous run's files in {directory} to {aside}",
                      flush=True)
    return lock, None


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
    overwrite: bool = False,
    keep_checkpoints: int = 2,
    monitor: str | None = "val_loss",
    log_dir: str | os.PathLike | None = None,
    remainder: str = "pad",
    augment: Augment | None = None,
    split: str | None = None,
    threads: int | None = None,
    workers: int = 1,
    prefetch: int = 1,
    allow_unwritten: bool = False,
    verbose: int = 1,
    callbacks: list | None = None,
    stop_signal: int | None = None,
    check_every: int = 8,
    sync_batchnorm: bool = False,
    precision: str | None = None,
    allow_config_change: tuple[str, ...] = (),
    engine: str | None = None,
    elastic: bool = False,
    commit_every: int = 8,
    steps_per_epoch: int | None = None,
    untimed_steps: int = 1,
) -> keras.callbacks.History:
    """Train a compiled Keras ``model`` on the HDF5 file ``path`` across all ranks of the job.

    Run it in every process of the job (``horovodrun``, ``mpirun`` or ``srun``), or in one
    process alone. Each rank trains on its shard of the training subset; gradients are
    averaged by allreduce inside the compiled step. Returns the Keras ``History``, the same
    on every rank (training metrics averaged over ranks, ``val_*`` computed on the whole
    validation subset), with ``history.run`` a :class:`RunSummary`.

    Guarantees: every rank runs the same number of steps; the data order depends only on
    ``seed`` and the epoch, not on the number of ranks; after every epoch, and so at the
    end, the replicas are identical, BatchNorm moving statistics included (averaged over
    ranks), and validation and checkpoints use that model; only rank 0 prints and writes.

    Args:
        model: a compiled Keras model; its optimizer, loss and metrics are kept. Build it
            under the dtype policy of ``precision`` (``keras.config.set_dtype_policy``).
        path: HDF5 file in the package's layout.
        validation_ratio: fraction held out for validation; 0 skips validation (default 0.3).
        batch_size: clips per step on each rank; the global batch is ``batch_size * size``.
        epochs: total epochs, counting those done before a resume (default 10).
        seed: seeds the split and each epoch's order (default 0).
        scale_learning_rate: the optimizer's rate is for a global batch of ``batch_size``;
            scale it linearly to the real global batch after a warm-up (default True).
        warmup_epochs: epochs (in samples) of linear warm-up to the scaled rate (default 3).
        checkpoint_dir: where rank 0 writes checkpoints (see :mod:`distributed_h5.checkpoints`).
        resume: continue from the newest intact checkpoint in ``checkpoint_dir``, if any, on
            any rank count and batch size, from the exact sample where it stopped.
        overwrite: without ``resume``, a ``checkpoint_dir`` or ``log_dir`` that holds another
            run's files is refused (ValueError); with ``overwrite`` those files are moved into a
            ``replaced-*`` folder there and the run starts afresh (default False).
        keep_checkpoints: how many epoch checkpoints to keep, >= 1 (default 2).
        monitor: the logged metric that picks ``best.keras`` (``val_loss``, lower is better;
            names with ``acc`` higher is better), or None (default ``"val_loss"``).
        log_dir: where rank 0 writes ``training.csv``, ``training.png`` and TensorBoard logs
            (default: ``checkpoint_dir``).
        remainder: ``"pad"`` or ``"drop"`` the last partial global batch (default ``"pad"``).
        augment: clip sampling and augmentation, an :class:`~distributed_h5.augment.Augment`
            (``Augment(clip_frames=16, crop=(96, 96), flip=True)``, say): training clips get a view
            drawn from (seed, epoch, index), validation clips the centre view. Build ``model`` for
            ``augment.output_shape(describe(path).clip_shape)``. Recorded in checkpoints; a resume
            may change it (default None: clips as stored).
        split: ``"random"`` (seeded over samples), ``"groups"`` (whole source videos, from the
            file's ``groups`` dataset; the validation share as close to ``validation_ratio``
            as whole groups allow) or ``"file"`` (the file's ``subset``, an official split list;
            ``validation_ratio`` then only turns validation off when 0). Default: ``"groups"``
            when the file has ``groups``, else ``"random"``. Recorded and checked on resume.
        threads: reader threads per batch (default: usable cores, at most 4).
        workers: batches read ahead in parallel by the feeder (default 1; 2 batches ahead each).
        prefetch: batches buffered in ``tf.data`` between the feeder and the step (default 1:
            each batch's hand-off into TensorFlow overlaps the previous step; 0: none).
            ``data_wait_fraction`` is exact either way: the wait is timed where the step takes
            its batch (:class:`~distributed_h5.feeding.Feeder`).
        allow_unwritten: train on a file whose X or Y storage was never written in places
            (they read as the fill value; default False: refused, see :func:`dataset.validate`).
        verbose: Keras progress output on rank 0 (0, 1 or 2).
        callbacks: more Keras callbacks, run on every rank after the package's own.
        stop_signal: a signal (e.g. ``signal.SIGUSR1``) on which every rank stops at the same
            step, rank 0 writes a mid-epoch checkpoint, and :class:`Preempted` is raised.
        check_every: steps between the ranks' agreement on stopping (signal, non-finite
            loss); each check reads the loss from the device (default 8).
        sync_batchnorm: compute BatchNormalization statistics over the global batch (see
            :class:`distributed_h5.layers.SyncBatchNormalization`); layers stay plain.
        precision: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``; checked against
            the model's dtype policy and recorded (default: the model's policy).
        allow_config_change: checkpoint fields a resume may change (``seed``,
            ``validation_ratio``, ``sample_count``, ``fingerprint``).
        elastic: under ``horovodrun --gloo --min-np N --max-np M --host-discovery-script S``
            (Horovod's elastic mode): when a rank is lost every other rank rolls back to the
            last commit and carries on with the ranks that remain, and ranks that join receive
            that state; the data order continues from the committed sample position with the
            new rank count (default False).
        commit_every: elastic: steps between commits in memory (and at every epoch's end); a
            lost rank costs the steps since the last one (default 8).
        engine: ``"horovod"`` or ``"jax"`` (default: the engine that fits Keras' backend;
            see :func:`init_engine`). A checkpoint written under one resumes under the other.
        steps_per_epoch: train at most this many steps of each epoch; each epoch still starts
            at the beginning of its own order, and the rest of it is skipped (a short run, such
            as ``bench scaling``'s; default None: whole epochs).
        untimed_steps: the run's first steps left out of ``history.run``'s step timing
            (``step_seconds``, ``data_wait_seconds``); the first traces and compiles the step
            (default 1).

    Example:
        >>> model = video_classifier((16, 3, 64, 64), classes=4)                 # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        >>> history = train_model(model, "data.h5", batch_size=8, epochs=5)
    """
    started = time.perf_counter()
    if model.optimizer is None or not getattr(model, "compiled", False):
        raise ValueError("model must be compiled (model.compile(optimizer=..., loss=...)) before train_model")
    if scale_learning_rate and keras_internals.has_learning_rate_schedule(model.optimizer):
        raise ValueError("the optimizer's learning rate is a LearningRateSchedule, which train_model cannot scale to "
                         "the global batch or warm up: pass scale_learning_rate=False (train --no-scale-lr) to use "
                         "the schedule as it is, or give the optimizer a constant rate")
    try:
        base_rate = float(np.asarray(model.optimizer.learning_rate))
    except (TypeError, ValueError):
        base_rate = math.nan
    _check_arguments(epochs=epochs, batch_size=batch_size, keep_checkpoints=keep_checkpoints,
                     warmup_epochs=warmup_epochs, check_every=check_every, precision=precision,
                     learning_rate=base_rate, monitor=monitor, engine=engine, commit_every=commit_every,
                     steps_per_epoch=steps_per_epoch, untimed_steps=untimed_steps)
    if (resume or stop_signal is not None) and checkpoint_dir is None:
        raise ValueError("resume and stop_signal need a checkpoint_dir. Received: checkpoint_dir=None")
    policy = model.dtype_policy.name
    if precision is not None and precision != policy:
        raise ValueError(f"precision={precision!r} but the model was built with dtype policy {policy!r}; build it "
                         f"after keras.config.set_dtype_policy({precision!r})")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log_dir = Path(log_dir) if log_dir is not None else checkpoint_dir
    collective = engines.for_training(engine, elastic=elastic)
    options = RunOptions(path=os.fspath(path), epochs=epochs, base_rate=base_rate,
                         scale_learning_rate=scale_learning_rate, warmup_epochs=warmup_epochs,
                         checkpoint_dir=checkpoint_dir, log_dir=log_dir, resume=resume, overwrite=overwrite,
                         keep_checkpoints=keep_checkpoints, monitor=monitor, workers=workers, prefetch=prefetch,
                         verbose=verbose, callbacks=tuple(callbacks or ()), stop_signal=stop_signal,
                         check_every=check_every, precision=policy, allow_config_change=tuple(allow_config_change),
                         commit_every=commit_every, steps_per_epoch=steps_per_epoch, untimed_steps=untimed_steps)

    def attempt(collective, state=None, held=None):
        """Train with the ranks of ``collective``: the whole run, or (elastic) until they change."""
        rank, size = collective.rank, collective.size
        common = dict(batch_size=batch_size, validation_ratio=validation_ratio, seed=seed, rank=rank, size=size,
                      threads=threads, allow_unwritten=allow_unwritten, augment=augment, split=split)
        train = ShardedSequence(path, subset="train", remainder=remainder, **common)
        validation = ShardedSequence(path, subset="validation", **common) if validation_ratio > 0 else None
        held = [] if held is None else held  # the directory lock, while this process holds it
        summary = RunSummary(ranks=size, monitor=monitor)
        try:
            # Rank 0 alone writes; it probes its directories and locks the checkpoint directory
            # before any work, and every rank raises the same one-line error if that failed.
            # (Elastic: whichever process is rank 0 now; a former one lets go first.)
            if held and rank != 0:
                held.pop().release()
            if state is not None and size > 1:
                collective.barrier()
            first = state is None or state.progress is None  # not an elastic re-forming
            lock, error = _prepare_directories(rank, checkpoint_dir, log_dir, locked=bool(held), first=first,
                                               resume=resume, overwrite=overwrite)
            if lock is not None:
                held.append(lock)
            error = collectives_broadcast(collective, error)
            if error:
                raise ValueError(error)  # a user's directory: exit status 2 from the CLI
            with contextlib.ExitStack() as stack:
                stack.enter_context(collectives.activate(collective))
                if scale_learning_rate:  # the caller's optimizer gets its own rate back
                    stack.enter_context(_restored_learning_rate(model.optimizer, base_rate))
                stack.enter_context(replicas.distributed(model, collective))
                if sync_batchnorm:
                    stack.enter_context(synchronized_batchnorm(model))
                if not model.built:
                    model(train[0][0][:1])
                history = _run(model, collective, train, validation, summary, options, state)
            summary.elapsed_seconds = time.perf_counter() - started
            history.run = summary
            return history
        finally:
            if state is None:
                while held:
                    held.pop().release()
            train.close()
            if validation is not None:
                validation.close()

    if not elastic:
        return attempt(collective)
    from .engines import horovod

    if collective.name != "horovod" or not horovod.elastic_launch():
        raise ValueError("elastic training needs the horovod engine launched in elastic mode: horovodrun --gloo "
                         "--min-np N --max-np M --host-discovery-script SCRIPT (launch/horovodrun.sh --elastic)")
    held: list = []
    try:
        history = horovod.elastic_run(
            lambda state: attempt(horovod.HorovodCollective(collective.hvd), state, held))(
            horovod.elastic_state(model))
    finally:
        while held:
            held.pop().release()
    return history


@contextlib.contextmanager
def _restored_learning_rate(optimizer, rate: float):
    """Within the block the rate is the callbacks' to set; at its end it is ``rate`` again,
    so a second ``train_model`` on the same model scales the caller's rate, not a scaled one."""
    try:
        yield
    finally:
        optimizer.learning_rate = rate


def collectives_broadcast(collective, value):
    """``value`` as rank 0 has it, on every rank (rank 0's decisions: errors, resume points)."""
    return collective.broadcast_object(value) if collective.size > 1 else value


def _resume_point(host: replicas.HostModel, collective, checkpoint_dir, config: RunConfig, allowed, resume: bool):
    """Rank 0 reads the newest intact checkpoint, checks its configuration and loads it into
    its local model; every rank learns ``(position, base_batch, best, error)``, and then
    holds rank 0's weights and optimizer state."""
    decision = (Position(0), config.base_batch, None, None)
    if resume and collective.rank == 0:
        (checkpoint_dir / checkpoints.PREEMPTED_MARKER).unlink(missing_ok=True)
        found = checkpoints.newest_intact(checkpoint_dir)
        if found is not None:
            position, newest, record = found
            saved = checkpoints.record_config(record)
            try:
                checkpoints.check_config(saved, config, allowed, where=f"from {newest}")
                with host.local() as model:
                    model.optimizer.build(model.trainable_variables)
                    model.load_weights(newest)
                base_batch = saved.base_batch if saved is not None else config.base_batch
                decision = (position, base_batch, record.get("best"), None)
            except ValueError as exc:
                decision = (Position(0), config.base_batch, None, str(exc))
    position, base_batch, best, error = collectives_broadcast(collective, decision)
    if error:
        raise checkpoints.ConfigMismatch(error)
    host.share()
    return position, base_batch, best


@dataclass(frozen=True)
class RunOptions:
    """What ``train_model`` was asked for, checked: everything a run needs besides the model,
    the collective and the data."""

    path: str
    epochs: int
    base_rate: float  # the optimizer's rate as the caller gave it
    scale_learning_rate: bool
    warmup_epochs: float
    checkpoint_dir: Path | None
    log_dir: Path | None
    resume: bool
    overwrite: bool
    keep_checkpoints: int
    monitor: str | None
    workers: int
    prefetch: int
    verbose: int
    callbacks: tuple
    stop_signal: int | None
    check_every: int
    precision: str
    allow_config_change: tuple
    commit_every: int
    steps_per_epoch: int | None = None  # a cap on each epoch's steps (a short run)
    untimed_steps: int = 1  # left out of the summary's step timing


@dataclass
class _Run:
    """One attempt's parts, as the steps of :func:`_run` make them."""

    model: keras.Model
    collective: object
    options: RunOptions
    train: ShardedSequence
    validation: ShardedSequence | None
    summary: RunSummary
    state: object = None  # elastic: Horovod's State, committed in memory
    host: replicas.HostModel | None = None
    config: RunConfig | None = None
    position: Position = Position(0)
    base_batch: int = 0
    best: dict | None = None
    timeline: Timeline | None = None
    feeder: Feeder | None = None
    keyed: randomness.SampleKeyed | None = None
    checkpointer: Checkpointer | None = None
    clock: _StepClock | None = None

    @property
    def plan(self):
        return self.train.plan


def _run(model, collective, train, validation, summary, options: RunOptions, state=None) -> keras.callbacks.History:
    """One attempt with the ranks of ``collective``: the steps of a run, in order."""
    run = _Run(model, collective, options, train, validation, summary, state)
    run.config = _run_config(run)
    run.host = replicas.HostModel(model, collective)
    _decide_start(run)
    if run.position.epoch >= options.epochs:
        return _history_of(state) if state is not None else keras.callbacks.History()
    plan = run.plan
    run.timeline = Timeline(plan, run.position)
    # The JAX engine's step runs over the global batch: its rows are every rank's batch.
    run.keyed = randomness.SampleKeyed(model, plan.seed, plan.global_batch if collective.global_step
                                       else plan.batch_size, in_model=collective.global_step)
    run.feeder = Feeder(plan, train.reader(), run.position.epoch, run.position.sample, workers=options.workers,
                        prefetch=options.prefetch, augment=train.augment)
    history = _fit(run, build_callbacks(run))
    _summarise(run, history)
    return history


def _run_config(run: _Run) -> RunConfig:
    """What the checkpoints record of this run (and a resume checks)."""
    plan, options = run.plan, run.options
    fingerprint = ""
    if run.collective.rank == 0 and options.checkpoint_dir:  # rank 0 alone writes and checks it
        fingerprint = checkpoints.fingerprint(options.path, plan.sample_count)
    config = RunConfig(
        seed=plan.seed, validation_ratio=plan.validation_ratio, sample_count=plan.sample_count,
        fingerprint=fingerprint, path=os.path.abspath(options.path), file_bytes=run.train.info.file_bytes,
        remainder=plan.remainder, batch_size=plan.batch_size, ranks=plan.size, global_batch=plan.global_batch,
        base_batch=plan.batch_size, precision=options.precision, engine=run.collective.name, version=__version__,
        split=plan.split, **_augment_fields(run.train.augment))
    checkpoints.check_config(None, config, options.allow_config_change)  # validates the field names
    return config


def _decide_start(run: _Run) -> None:
    """Where training starts: an elastic re-forming's last commit, else the resume point
    (rank 0's decision, on every rank), then the position after a completed epoch."""
    state = run.state
    if state is not None and state.progress is not None:
        # Elastic, after the ranks changed: every rank holds rank 0's last commit (state.sync).
        position, base_batch, best = Position(*state.progress["position"]), *(
            state.progress[key] for key in ("base_batch", "best"))
    else:
        options = run.options
        position, base_batch, best = _resume_point(run.host, run.collective, options.checkpoint_dir, run.config,
                                                   options.allow_config_change, options.resume)
        if state is not None:  # the first commit: what a rank lost before the next one rolls back to
            state.progress = dict(position=[position.epoch, position.sample], base_batch=base_batch, best=best,
                                  epochs=[])
            state.save()
    run.config = RunConfig(**{**run.config.__dict__, "base_batch": base_batch})
    if position != Position(0):
        run.summary.resumed_from = position
    if position.sample >= run.plan.train_count:
        position = Position(position.epoch + 1)
    run.position, run.base_batch, run.best = position, base_batch, best
    run.summary.best = best


def build_callbacks(run: _Run) -> list:
    """The run's callbacks, the package's first, then the caller's.

    The order matters, and is decided here only:

    1. The step clock, EpochTiming, SampleKeys and LearningRate first: they only read the
       Timeline and the Feeder.
    2. Agreement before GlobalState: a non-finite epoch stops before it is validated or saved.
    3. GlobalState before everything that reads epoch logs (Checkpointer, CSVLogger,
       TensorBoard, Commit, the caller's callbacks): it makes them global and the replicas identical.
    4. Commit last of the package's: the epoch's logs and checkpoint are final.
    """
    model, collective, options, plan = run.model, run.collective, run.options, run.plan
    rank, host, validation = collective.rank, run.host, run.validation

    def validate(_):
        with host.local() as local:
            return evaluate(local, validation, collective)

    def stop_checkpoint(at: Position) -> None:
        replicas.average_moving_state(model, collective)
        if rank == 0:  # rank 0 alone writes
            with host.local() as local:
                path = checkpoints.save(local, options.checkpoint_dir / checkpoints.name_for(at), at, run.config,
                                        best=run.checkpointer.best if run.checkpointer else run.best,
                                        monitor=options.monitor)
            run.summary.checkpoints.append(str(path))
            (options.checkpoint_dir / checkpoints.PREEMPTED_MARKER).write_text(f"{at.epoch} {at.sample}\n")
        # A barrier, so no rank exits (and no launcher kills rank 0) before the checkpoint is on disk.
        collective.barrier()

    run.clock = _StepClock(run.feeder, options.untimed_steps)
    callbacks = [run.clock, EpochTiming(run.feeder, plan.global_batch)]
    if run.keyed.active:
        callbacks.append(SampleKeys(run.keyed, run.timeline, ranks=plan.size if collective.global_step else 1))
    if options.scale_learning_rate:
        callbacks.append(LearningRate(options.base_rate, run.base_batch, run.timeline, options.warmup_epochs))
    callbacks.append(Agreement(collective, run.timeline, options.check_every, options.stop_signal,
                               stop_checkpoint if options.stop_signal is not None else None))
    # The monitored metric is checked on every rank at the first epoch's end (a typo would
    # silently write no best checkpoint); a val_* one means nothing without validation.
    monitor = options.monitor if options.checkpoint_dir is not None and (
        validation is not None or not str(options.monitor).startswith("val_")) else None
    callbacks.append(GlobalState(collective, validate if validation is not None else None, monitor))
    if rank == 0:  # rank 0 alone writes: the others hold identical weights and the same global logs
        if options.checkpoint_dir is not None:
            run.checkpointer = Checkpointer(options.checkpoint_dir, options.keep_checkpoints, run.config,
                                            options.monitor, run.best, host.local)
            callbacks.append(run.checkpointer)
        if options.log_dir is not None:
            csv_path = options.log_dir / "training.csv"
            if run.position == Position(0):
                csv_path.unlink(missing_ok=True)
            callbacks.append(keras.callbacks.CSVLogger(str(csv_path), append=True))
            callbacks.append(keras.callbacks.TensorBoard(str(options.log_dir / "tensorboard")))
    if run.state is not None:
        callbacks.append(Commit(run.state, run.timeline, options.commit_every,
                                lambda: run.checkpointer.best if run.checkpointer else run.best))
    return callbacks + list(options.callbacks)


def _fit(run: _Run, callbacks: list) -> keras.callbacks.History:
    """``model.fit`` from the run's position to its last epoch: the interrupted epoch first, in
    a fit of its own (it has fewer steps), then the full epochs; random layers keyed by sample."""
    model, feeder, options, position = run.model, run.feeder, run.options, run.position

    def fit(first_epoch: int, only_one: bool = False) -> keras.callbacks.History:
        # shuffle=False: the order is already shuffled by (seed, epoch), identically on every rank.
        steps = feeder.steps(first_epoch)
        if options.steps_per_epoch is not None:
            steps = min(steps, options.steps_per_epoch)
        try:
            return model.fit(feeder.source(), epochs=options.epochs, initial_epoch=first_epoch, shuffle=False,
                             steps_per_epoch=steps,
                             callbacks=callbacks + ([StopAfterEpoch()] if only_one else []),
                             verbose=options.verbose if run.collective.rank == 0 else 0)
        except Exception as exc:
            # A read that failed in the feeder's thread reaches fit as a framework error
            # (tf.data's, with the traceback in its text): raise the reader's own one-line error.
            if feeder.error is not None and feeder.error is not exc:
                raise feeder.error from exc
            raise

    histories = []
    first_full_epoch = position.epoch
    with run.keyed:
        if position.sample:
            if feeder.steps(position.epoch):
                histories.append(fit(position.epoch, only_one=True))
            first_full_epoch += 1
            feeder.restart_at(first_full_epoch)
        if options.steps_per_epoch is None:
            if first_full_epoch < options.epochs:
                histories.append(fit(first_full_epoch))
        else:
            # The feeder reads each epoch's order to its end; a capped epoch is a fit of its
            # own, and the next one restarts the feeder at the next epoch's beginning.
            for epoch in range(first_full_epoch, options.epochs):
                feeder.restart_at(epoch)
                histories.append(fit(epoch, only_one=True))
    return _merge(histories) if run.state is None else _history_of(run.state)


def _summarise(run: _Run, history) -> None:
    """The summary's epochs, best and checkpoints; rank 0 plots the curves."""
    run.summary.epochs_run = list(history.epoch)
    clock = run.clock
    if clock is not None and clock.timed_steps:
        run.summary.timed_steps = clock.timed_steps
        run.summary.step_seconds = clock.seconds / clock.timed_steps
        run.summary.data_wait_seconds = clock.waited / clock.timed_steps
    if run.checkpointer is not None:
        run.summary.best = run.checkpointer.best
        run.summary.checkpoints += [str(p) for p in run.checkpointer.paths if p.exists()]  # pruned ones are gone
    if run.collective.rank == 0 and run.options.log_dir is not None:
        _plot(run.options.log_dir / "training.csv", run.options.log_dir / "training.png")


class _StepClock(keras.callbacks.Callback):
    """This rank's wall time and wait for data over its steps after the first ``untimed``:
    from the end of the last untimed step to the end of each ``fit``, every callback's work
    included (a device's queued work is done by then: ``fit`` reads the logs at its end)."""

    def __init__(self, feeder, untimed: int):
        super().__init__()
        self.feeder, self.untimed = feeder, untimed
        self.steps_done = self.timed_steps = 0
        self.seconds = self.waited = 0.0
        self._mark = None  # (time, the feeder's wait) where the current timed stretch began

    def _start(self) -> None:
        self._mark = (time.perf_counter(), self.feeder.wait_seconds)

    def on_train_begin(self, logs=None):
        if self.steps_done >= self.untimed:  # a later fit of the run (a resumed or capped epoch)
            self._start()

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        if self.steps_done > self.untimed:
            self.timed_steps += 1
        elif self.steps_done == self.untimed:
            self._start()

    def on_train_end(self, logs=None):
        if self._mark is not None:
            started, waited = self._mark
            self.seconds += time.perf_counter() - started
            self.waited += self.feeder.wait_seconds - waited
            self._mark = None


def _augment_fields(augment: Augment | None) -> dict:
    """The run configuration's record of the augmentation (JSON-friendly: lists, not tuples)."""
    augment = augment or Augment()
    return dict(clip_frames=augment.clip_frames, frame_stride=augment.frame_stride,
                crop=list(augment.crop) if augment.crop else None, flip=bool(augment.flip),
                scale=list(augment.scale) if augment.scale else None)


def _plot(csv_path: Path, png_path: Path) -> None:
    """Rank 0: the training curves from ``training.csv`` as a PNG (loss and accuracy per epoch)."""
    import csv

    plt = pyplot(png_path)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(row["epoch"]) + 1 for row in rows]
    panels = [[k for k in ("loss", "val_loss") if k in rows[0]],
              [k for k in rows[0] if "acc" in k]]
    panels = [keys for keys in panels if keys]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, keys in zip(axes[0], panels):
        for key in keys:
            axis.plot(epochs, [float(row[key]) for row in rows], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    save_figure(figure, png_path, format="png")


def _history_of(state) -> keras.callbacks.History:
    """Elastic: one History of every committed epoch, across the changes of ranks."""
    history = keras.callbacks.History()
    history.epoch = [epoch for epoch, _ in state.progress["epochs"]]
    history.history = {}
    for _, logs in state.progress["epochs"]:
        for key, value in logs.items():
            history.history.setdefault(key, []).append(value)
    return history


def _merge(histories: list[keras.callbacks.History]) -> keras.callbacks.History:
    """One History from the fit of a resumed partial epoch and the fit of the epochs after it."""
    if not histories:
        return keras.callbacks.History()
    merged = histories[-1]
    for earlier in histories[:-1]:
        for key, values in earlier.history.items():
            merged.history[key] = values + merged.history.get(key, [])
        merged.epoch = earlier.epoch + merged.epoch
    return merged
