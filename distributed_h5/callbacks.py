"""The Keras callbacks of ``train_model``, each told what it needs through its constructor.

Imports Keras. None reads another's fields; the order they must run in is written once, in
:func:`distributed_h5.training.build_callbacks`. None overrides ``on_train_batch_end``:
Keras then converts every step's logs to Python numbers, a device-to-host sync per step
that stalls a GPU's pipeline. Per-step work happens in ``on_train_batch_begin``, and the
one check that needs the device (stop signal and non-finite loss) runs every ``every`` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from pathlib import Path

import keras
import numpy as np

from . import checkpoints, keras_internals, replicas
from .checkpoints import EXIT_PREEMPTED, Position
from .engines.collective import average_logs
from .data.sharding import ShardPlan


class Preempted(RuntimeError):
    """Every rank stopped at the same step on a signal, after rank 0 wrote a checkpoint."""

    exit_status = EXIT_PREEMPTED

    def __init__(self, signum: int, at: Position):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {at.epoch} epochs and {at.sample} samples; "
                         "a checkpoint was written: run again with resume to continue")
        self.at = at


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite on some rank; every rank stopped, nothing was saved."""

    exit_status = 1


class Timeline:
    """Where a ``fit`` stands, from the epoch and the steps done in it: the one translation
    from Keras' (epoch, batch) to the run's :class:`Position`, shared by the callbacks."""

    def __init__(self, plan: ShardPlan, first: Position):
        self.plan, self.first = plan, first

    def start_of(self, epoch: int) -> int:
        return self.first.sample if epoch == self.first.epoch else 0

    def position(self, epoch: int, steps_done: int) -> Position:
        return Position(epoch, self.plan.samples_after(self.start_of(epoch), steps_done))

    def samples_seen(self, epoch: int, steps_done: int) -> int:
        return epoch * self.plan.train_count + self.position(epoch, steps_done).sample


def learning_rate(base: float, base_batch: int, global_batch: int, samples_seen: int, warmup_samples: float) -> float:
    """The linear scaling rule with a linear warm-up (Goyal et al. 2017), in samples.

    ``base`` is the rate for a global batch of ``base_batch``; the target is
    ``base * global_batch / base_batch``, reached linearly from ``base`` over
    ``warmup_samples`` samples. A function of samples seen and the global batch only, so a
    resume on another rank count with the same global batch follows the same schedule.

    >>> learning_rate(0.1, 8, 32, samples_seen=50, warmup_samples=100)
    0.25
    """
    target = global_batch / base_batch
    progress = min(1.0, samples_seen / warmup_samples) if warmup_samples > 0 else 1.0
    return base * (1 + (target - 1) * progress)


class LearningRate(keras.callbacks.Callback):
    """Sets the optimizer's rate before every step by :func:`learning_rate`."""

    def __init__(self, base: float, base_batch: int, timeline: Timeline, warmup_epochs: float):
        super().__init__()
        self.base, self.base_batch, self.timeline = base, base_batch, timeline
        self.warmup_samples = warmup_epochs * timeline.plan.train_count

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        seen = self.timeline.samples_seen(self.epoch, batch)
        self.model.optimizer.learning_rate = learning_rate(self.base, self.base_batch, self.timeline.plan.global_batch,
                                                           seen, self.warmup_samples)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))


class EpochTiming(keras.callbacks.Callback):
    """Per epoch: samples per second (all ranks' samples), and ``data_wait_fraction``, the
    share of the epoch this rank's steps spent waiting for their batch (measured by the
    :class:`~distributed_h5.feeding.Feeder`)."""

    def __init__(self, feeder, global_batch: int):
        super().__init__()
        self.feeder, self.global_batch = feeder, global_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._waited = time.perf_counter(), self.feeder.wait_seconds

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            elapsed = time.perf_counter() - self._start
            logs["samples_per_second"] = self.params["steps"] * self.global_batch / elapsed
            logs["data_wait_fraction"] = (self.feeder.wait_seconds - self._waited) / elapsed


class Agreement(keras.callbacks.Callback):
    """Every ``every`` steps (and at each epoch's end) all ranks agree, with one
    max-allreduce, whether to stop: a non-finite loss on any rank stops every rank with
    :class:`NonFiniteLoss` and nothing written; a stop signal (SLURM's warning before the
    time limit, say) received by any rank stops every rank at the same step, after
    ``on_stop(position)`` (rank 0's mid-epoch checkpoint), with :class:`Preempted`.

    Ranks receive a signal at different steps, and stopping at different steps would
    leave an allreduce hanging, hence the agreement.
    """

    NONE, SIGNAL, NON_FINITE_WEIGHTS, NON_FINITE = 0, 1, 2, 3  # the max across ranks is the decision

    def __init__(self, collective, timeline: Timeline, every: int, stop_signal: int | None, on_stop=None):
        super().__init__()
        self.collective, self.timeline, self.every = collective, timeline, every
        self.stop_signal, self.on_stop = stop_signal, on_stop
        self.received = False

    def on_train_begin(self, logs=None):
        if self.stop_signal is not None:
            self.previous = signal.signal(self.stop_signal, self._receive)

    def on_train_end(self, logs=None):
        self._restore()

    def _restore(self):
        if self.stop_signal is not None and hasattr(self, "previous"):
            signal.signal(self.stop_signal, self.previous)
            del self.previous

    def _receive(self, signum, frame):
        self.received = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.checked_at = epoch, 0

    def on_train_batch_begin(self, batch, logs=None):
        if batch and batch % self.every == 0:
            self._check(batch)

    def on_epoch_end(self, epoch, logs=None):
        self._check(self.params["steps"], loss=(logs or {}).get("loss"), weights=True)

    def _check(self, steps_done: int, loss=None, weights: bool = False) -> None:
        if loss is None:  # the epoch's running mean: once non-finite it stays so
            loss = keras_internals.loss_tracker(self.model).result()
        mine = self.SIGNAL if self.received else self.NONE
        if not math.isfinite(float(np.asarray(loss))):
            mine = self.NON_FINITE
        elif (weights or self.received) and not replicas.finite_state(self.model):
            # A finite loss does not make finite weights (oneDNN's ReLU turns NaN into 0): before
            # anything is validated or saved (epoch end, a stop checkpoint) the weights are checked.
            mine = self.NON_FINITE_WEIGHTS
        decision = self.collective.max(mine)
        first = self.checked_at
        self.checked_at = steps_done
        if decision in (self.NON_FINITE, self.NON_FINITE_WEIGHTS):
            self._restore()
            plan = self.timeline.plan
            batches = plan.batches(self.epoch, self.timeline.start_of(self.epoch))[first:steps_done]
            what = "loss" if decision == self.NON_FINITE else "weights (with a finite loss)"
            raise NonFiniteLoss(
                f"the {what} became non-finite ({'on this rank' if mine == decision else 'on another rank'}) in epoch "
                f"{self.epoch}, steps {first + 1}-{steps_done} of this run's epoch (checked every {self.every}; "
                f"this rank's samples there: {np.concatenate(batches)[:16].tolist() if batches else []}...); "
                "no checkpoint was written. Check the data for NaN/Inf and the learning rate.")
        if decision == self.SIGNAL:
            at = self.timeline.position(self.epoch, steps_done)
            if at.sample >= self.timeline.plan.train_count:  # its last step: a whole epoch, resumed at the next
                at = Position(self.epoch + 1)
            if self.on_stop is not None:
                self.on_stop(at)
            self._restore()
            raise Preempted(self.stop_signal, at)


class GlobalState(keras.callbacks.Callback):
    """Make the epoch global, on every rank: training logs averaged over ranks, moving
    statistics (BatchNorm) averaged so the replicas are identical, then validation on every
    rank's shard with metric states summed, so ``val_*`` is one process's value on the
    whole validation subset of exactly the model that is checkpointed."""

    def __init__(self, collective, validate=None, monitor: str | None = None):
        super().__init__()
        self.collective, self.validate = collective, validate
        self.monitor = monitor  # must be among the epoch's logs (checked once, on every rank alike)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(average_logs(logs, self.collective))
        replicas.average_moving_state(self.model, self.collective)
        if self.validate is not None:
            logs.update({f"val_{k}": v for k, v in self.validate(self.model).items()})
        if self.monitor is not None and self.monitor not in logs:
            raise ValueError(f"monitor {self.monitor!r} is not a logged metric; the epoch's logs have "
                             f"{sorted(k for k in logs if np.ndim(logs[k]) == 0)}. Pick one (--monitor) or none")
        self.monitor = None


def scalar_logs(logs) -> dict[str, float]:
    """An epoch's logs as plain floats, the scalars only (what a checkpoint and a commit record)."""
    return {key: float(value) for key, value in (logs or {}).items() if np.ndim(value) == 0}


class Checkpointer(keras.callbacks.Callback):
    """Rank 0 only: after each epoch, the epoch checkpoint (the newest ``keep`` kept), and
    ``best.keras`` when ``monitor`` improved. Reads the global logs, so it runs after
    :class:`GlobalState`."""

    def __init__(self, directory: Path, keep: int, config, monitor: str | None, best: dict | None, local=None):
        super().__init__()
        self.local = local  # a context manager giving the model to save (a process-local copy); default: the model
        self.directory, self.keep, self.config, self.monitor = Path(directory), keep, config, monitor
        self.best = best  # {"epoch": E, monitor: value, ...} of the best so far (restored on resume)
        self.mode = "max" if monitor and ("acc" in monitor or monitor.endswith("auc")) else "min"
        self.paths: list[Path] = []

    def improved(self, value: float) -> bool:
        if self.best is None or self.monitor not in self.best:
            return True
        return value > self.best[self.monitor] if self.mode == "max" else value < self.best[self.monitor]

    def on_epoch_end(self, epoch, logs=None):
        logs = scalar_logs(logs)
        with self.local() if self.local is not None else contextlib.nullcontext(self.model) as model:
            self._save(model, epoch, logs)

    def _save(self, model, epoch, logs):
        if self.monitor and self.monitor in logs and math.isfinite(logs[self.monitor]) and self.improved(
                logs[self.monitor]):
            self.best = {"epoch": epoch + 1, **logs}
            checkpoints.save(model, self.directory / checkpoints.BEST, Position(epoch + 1), self.config,
                             metrics=logs, best=self.best, monitor=self.monitor)
        path = checkpoints.save(model, self.directory / checkpoints.name_for(Position(epoch + 1)),
                                Position(epoch + 1), self.config, metrics=logs, best=self.best, monitor=self.monitor)
        self.paths.append(path)
        checkpoints.prune(self.directory, self.keep)


class SampleKeys(keras.callbacks.Callback):
    """Before every step, the keys of the step's rows, so that random layers draw each clip's
    noise from (seed, epoch, sample): see :class:`~distributed_h5.randomness.SampleKeyed`.
    The rows are this rank's batch, or with ``ranks`` (a step over the global batch, JAX)
    every rank's batch in rank order, as the global batch holds them."""

    def __init__(self, keyed, timeline: Timeline, ranks: int = 1):
        super().__init__()
        self.keyed, self.timeline = keyed, timeline
        plan = timeline.plan
        self.plans = [plan] if ranks == 1 else [dataclasses.replace(plan, rank=rank) for rank in range(ranks)]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        start = self.timeline.start_of(epoch)
        self.batches = [np.concatenate(rows) for rows in zip(*(plan.batches(epoch, start) for plan in self.plans))]

    def on_train_batch_begin(self, batch, logs=None):
        # Under JAX, reading self.model puts the step's state back into the model's variables,
        # so that the next step takes the keys assigned here (Keras' Callback.model does that).
        self.model  # noqa: B018
        self.keyed.set_rows(self.epoch, self.batches[batch])


class Commit(keras.callbacks.Callback):
    """Elastic: commit the weights, optimizer state and sample position in memory every
    ``every`` steps and at each epoch's end (with the epoch's global logs), on every rank at
    the same steps. A commit also checks whether hosts joined or left, and if so raises
    Horovod's ``HostsUpdatedInterrupt`` on every rank, so the ranks re-form from that commit."""

    def __init__(self, state, timeline: Timeline, every: int, best):
        super().__init__()
        self.state, self.timeline, self.every, self.best = state, timeline, every, best

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if batch and batch % self.every == 0:
            self._commit(self.timeline.position(self.epoch, batch))

    def on_epoch_end(self, epoch, logs=None):
        logs = scalar_logs(logs)
        self.state.progress["epochs"].append([epoch, logs])
        self._commit(Position(epoch + 1))

    def _commit(self, at: Position) -> None:
        self.state.progress.update(position=[at.epoch, at.sample], best=self.best())
        self.state.commit()


class StopAfterEpoch(keras.callbacks.Callback):
    """End ``fit`` after its first epoch (a resumed partial epoch has fewer batches)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True
