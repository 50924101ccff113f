"""The training glue in one process: Agreement, GlobalState, Checkpointer, Commit, the resume
decision, the directory checks and HostModel, with simulated ranks (tests/unit/fake_collective.py).

Each simulated rank runs in its own thread with its own tiny Keras model (a Dense layer, built
in the main thread before the ranks start), and the callbacks are driven by calling their
hooks as ``fit`` would, without ``fit``. Keras keeps its name scopes and name counters per
thread, and TensorFlow's eager ops are thread-safe, so no lock-step is needed; no model is
shared between ranks. Signal handlers can only be installed in the main thread: the signal
path is tested there on one rank, and on several ranks by calling the handler directly.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import zipfile

import keras
import numpy as np
import pytest

from distributed_h5 import checkpoints, replicas, training
from distributed_h5.callbacks import (EXIT_PREEMPTED, Agreement, Checkpointer, Commit, GlobalState, NonFiniteLoss,
                                      Preempted, Timeline)
from distributed_h5.checkpoints import ConfigMismatch, Position, RunConfig
from distributed_h5.data.sharding import ShardPlan
from distributed_h5.engines.collective import Collective, Single

from .fake_collective import CollectiveMismatch, CollectiveTimeout, run_ranks

# 100 samples, 80 of them for training: 10 steps of a global batch of 2 ranks x 4.
STEPS = 10


def plan_of(rank: int, size: int = 2) -> ShardPlan:
    return ShardPlan(100, validation_ratio=0.2, seed=0, rank=rank, size=size, batch_size=4)


def dense_model(value: float = 0.0, batchnorm: bool = False) -> keras.Model:
    """Dense(2) on 3 inputs, every weight ``value``; compiled with SGD and MSE."""
    constant = keras.initializers.Constant(value)
    layers = [keras.Input((3,)), keras.layers.Dense(2, kernel_initializer=constant, bias_initializer=constant)]
    model = keras.Sequential(layers + ([keras.layers.BatchNormalization()] if batchnorm else []))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def attach(callback, model, steps: int = STEPS):
    callback.set_model(model)
    callback.set_params({"epochs": 3, "steps": steps, "verbose": 0})
    return callback


def run_config(**changes) -> RunConfig:
    fields = dict(seed=0, validation_ratio=0.2, sample_count=100, fingerprint="f", path="/data/a.h5", file_bytes=1,
                  remainder="pad", batch_size=4, ranks=2, global_batch=8, base_batch=4, precision="float32",
                  engine="horovod", version="0.1.0")
    return RunConfig(**{**fields, **changes})


def calls(collective) -> list[str]:
    return [call for call, _ in collective.calls]


# --- the fake collective itself ------------------------------------------------------------


def test_the_fake_collective_has_everything_the_protocol_declares():
    declared = {name for name in vars(Collective) if not name.startswith("_")} | set(Collective.__annotations__)
    fake = run_ranks(1, lambda collective: collective)[0]
    assert sorted(name for name in declared if not hasattr(fake, name)) == []


def test_every_engine_has_every_method_the_protocol_declares():
    """The engines answer every call training makes (HostModel's broadcast_arrays and place,
    replicas' release included), not only what each engine's own path happens to call."""
    from distributed_h5.engines.horovod import HorovodCollective
    from distributed_h5.engines.jax import JaxCollective

    methods = {name for name, value in vars(Collective).items() if callable(value) and not name.startswith("_")}
    assert {"broadcast_arrays", "place", "release", "average_gradients"} <= methods
    for engine in (Single, HorovodCollective, JaxCollective):
        assert sorted(name for name in methods if not callable(getattr(engine, name, None))) == [], engine.__name__
        assert isinstance(engine.name, str) and isinstance(engine.global_step, bool)


def test_the_fake_collective_answers_as_an_engine_and_fails_where_a_job_would_hang():
    def every_call(collective):
        rank = collective.rank
        return (collective.sum([np.array([rank, 1], dtype=np.int64)])[0].tolist(),
                collective.mean([np.array(2.0 * rank)])[0].tolist(),
                collective.max(rank == 1),
                collective.broadcast_object({"from": rank}),
                collective.broadcast_arrays([np.full(2, rank)], root=2)[0].tolist())

    assert run_ranks(3, every_call) == [([3, 3], 2.0, 1, {"from": 0}, [2, 2])] * 3

    def mismatched(collective):
        return collective.barrier() if collective.rank == 0 else collective.max(0)

    with pytest.raises(CollectiveMismatch, match=r"call 1 differs between ranks: rank 0 barrier, rank 1 max"):
        run_ranks(2, mismatched)
    with pytest.raises(CollectiveTimeout,
                       match=r"rank 0: barrier \(collective call 1\) waited 0.2 s for rank\(s\) \[1\]"):
        run_ranks(2, lambda collective: collective.barrier() if collective.rank == 0 else None, timeout=0.2)

    def one_fails(collective):
        if collective.rank == 1:
            raise KeyError("rank 1's own error")
        collective.barrier()  # released at once: rank 1 left

    with pytest.raises(KeyError, match="rank 1's own error") as raised:
        run_ranks(3, one_fails)
    assert raised.value.__notes__ == ["(raised on simulated rank 1 of 3)"]


# --- Agreement -------------------------------------------------------------------------------


def samples_there(plan: ShardPlan, epoch: int, steps: slice) -> str:
    return f"{np.concatenate(plan.batches(epoch)[steps])[:16].tolist()}..."


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_check():
    """Rank 1's loss becomes NaN in step 6 of epoch 1; checks every 4 steps: the check before
    step 9 (batch 8) stops both ranks, each naming where the NaN was."""
    models = [dense_model() for _ in range(2)]

    def rank_main(collective):
        rank = collective.rank
        agreement = attach(Agreement(collective, Timeline(plan_of(rank), Position(0)), 4, None), models[rank])
        agreement.on_epoch_begin(1)
        for batch in range(STEPS):
            try:
                agreement.on_train_batch_begin(batch)
            except NonFiniteLoss as error:
                return batch, str(error), collective.calls
            models[rank]._loss_tracker.update_state(float("nan") if (rank, batch) == (1, 5) else 0.5)  # the step
        return None

    results = run_ranks(2, rank_main)
    for rank, (batch, message, made) in enumerate(results):
        where = "on this rank" if rank == 1 else "on another rank"
        assert batch == 8
        assert message == (f"the loss became non-finite ({where}) in epoch 1, steps 5-8 of this run's epoch (checked "
                           f"every 4; this rank's samples there: {samples_there(plan_of(rank), 1, slice(4, 8))}); "
                           "no checkpoint was written. Check the data for NaN/Inf and the learning rate.")
        assert made == [("max", Agreement.NONE), ("max", Agreement.NON_FINITE if rank == 1 else Agreement.NONE)]
    assert NonFiniteLoss.exit_status == 1


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step_after_on_stop():
    """SIGUSR1 reaches rank 1 before step 6 of epoch 1 (the handler is called as the signal
    would call it); both ranks stop at the check before step 9, at sample 64 of epoch 1."""
    models = [dense_model() for _ in range(2)]
    stops = [[], []]

    def rank_main(collective):
        rank = collective.rank
        agreement = attach(Agreement(collective, Timeline(plan_of(rank), Position(0)), 4, signal.SIGUSR1,
                                     on_stop=stops[rank].append), models[rank])
        agreement.on_epoch_begin(1)
        for batch in range(STEPS):
            if (rank, batch) == (1, 5):
                agreement._receive(signal.SIGUSR1, None)
            try:
                agreement.on_train_batch_begin(batch)
            except Preempted as stopped:
                return batch, stopped.at, str(stopped), stopped.exit_status, collective.calls
        return None

    for rank, (batch, at, message, status, made) in enumerate(run_ranks(2, rank_main)):
        assert (batch, at, status) == (8, Position(1, 64), EXIT_PREEMPTED)
        assert message == ("stopped by SIGUSR1 after 1 epochs and 64 samples; a checkpoint was written: run again "
                           "with resume to continue")
        assert made == [("max", Agreement.NONE), ("max", Agreement.SIGNAL if rank == 1 else Agreement.NONE)]
    assert stops == [[Position(1, 64)], [Position(1, 64)]]  # on_stop once per rank, before Preempted


def test_the_stop_signal_handler_is_installed_for_the_run_and_restored(monkeypatch):
    """One rank, in the main thread (where Python delivers signals): a real SIGUSR1."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        model, stops = dense_model(), []
        agreement = attach(Agreement(Single(), Timeline(plan_of(0, size=1), Position(0)), 2, signal.SIGUSR1,
                                     on_stop=stops.append), model)
        agreement.on_train_begin()
        agreement.on_epoch_begin(0)
        agreement.on_train_batch_begin(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        agreement.on_train_batch_begin(1)  # no check before step 2: the run goes on
        assert agreement.received and stops == []
        with pytest.raises(Preempted, match=r"^stopped by SIGUSR1 after 0 epochs and 8 samples;"):
            agreement.on_train_batch_begin(2)
        assert stops == [Position(0, 8)]
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN  # the caller's handler is back
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("loss_on_rank_0", [0.5, float("inf")])
def test_non_finite_weights_stop_every_rank_at_the_epoch_end_and_a_non_finite_loss_is_named_first(loss_on_rank_0):
    """Rank 1's weights become NaN with a finite loss (oneDNN's ReLU turns NaN into 0): the
    epoch-end check, which looks at the weights, stops both ranks. If rank 0's loss is
    non-finite too, the loss is what every rank names."""
    models = [dense_model() for _ in range(2)]
    models[1].layers[0].kernel.assign(np.full((3, 2), np.nan))

    def rank_main(collective):
        rank = collective.rank
        agreement = attach(Agreement(collective, Timeline(plan_of(rank), Position(0)), 4, None), models[rank])
        agreement.on_epoch_begin(0)
        with pytest.raises(NonFiniteLoss) as raised:
            agreement.on_epoch_end(0, {"loss": loss_on_rank_0 if rank == 0 else 0.5})
        return str(raised.value)

    messages = run_ranks(2, rank_main)
    loss_first = not np.isfinite(loss_on_rank_0)
    for rank, message in enumerate(messages):
        what = "loss" if loss_first else "weights (with a finite loss)"
        where = "on this rank" if rank == (0 if loss_first else 1) else "on another rank"
        assert message.startswith(f"the {what} became non-finite ({where}) in epoch 0, steps 1-10 of this run's "
                                  f"epoch (checked every 4; this rank's samples there: "
                                  f"{samples_there(plan_of(rank), 0, slice(0, 10))}); no checkpoint was written.")


# --- GlobalState, and the replicas' reductions it uses ---------------------------------------------


def test_global_state_averages_logs_in_sorted_key_order_then_moving_statistics_then_validates():
    models = [dense_model(batchnorm=True) for _ in range(3)]
    for rank, model in enumerate(models):
        model.layers[1].moving_mean.assign(np.full(2, float(rank)))  # this rank's batch statistics
    validated = [None] * 3

    def validate(model):
        rank = int(threading.current_thread().name.removeprefix("rank"))  # run_ranks names the threads
        validated[rank] = (model, model.layers[1].moving_mean.numpy().tolist())
        return {"loss": 0.75, "accuracy": 0.5}  # global already (metric states summed)

    def rank_main(collective):
        rank = collective.rank
        state = attach(GlobalState(collective, validate, monitor="val_loss"), models[rank])
        logs = {"loss": float(rank), "accuracy": 0.5 * rank, "learning_rate": 0.25, "confusion": np.eye(2) * rank}
        state.on_epoch_end(0, logs)
        return logs, collective.calls, state.monitor

    for rank, (logs, made, monitor) in enumerate(run_ranks(3, rank_main)):
        np.testing.assert_array_equal(logs.pop("confusion"), np.eye(2) * rank)  # not a scalar: this rank's own
        assert logs == {"accuracy": 0.5, "learning_rate": 0.25, "loss": 1.0, "val_loss": 0.75, "val_accuracy": 0.5}
        assert [call for call, _ in made] == ["mean", "mean"]  # the logs, then the moving statistics
        np.testing.assert_array_equal(made[0][1][0], [0.5 * rank, 0.25, float(rank)])  # accuracy, learning_rate, loss
        assert validated[rank] == (models[rank], [1.0, 1.0])  # validation saw the averaged statistics
        assert monitor is None  # checked once
        np.testing.assert_array_equal(models[rank].layers[1].moving_mean.numpy(), [1.0, 1.0])


def test_an_unknown_monitor_is_one_value_error_on_every_rank():
    models = [dense_model() for _ in range(2)]

    def rank_main(collective):
        state = attach(GlobalState(collective, lambda model: {"loss": 0.5, "accuracy": 1.0}, monitor="val_acc"),
                       models[collective.rank])
        with pytest.raises(ValueError) as raised:
            state.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
        return str(raised.value)

    assert run_ranks(2, rank_main) == [
        "monitor 'val_acc' is not a logged metric; the epoch's logs have ['accuracy', 'loss', 'val_accuracy', "
        "'val_loss']. Pick one (--monitor) or none"] * 2


def test_sum_metric_states_gives_every_rank_the_metric_over_all_ranks_data():
    models = [dense_model() for _ in range(2)]
    models[0]._loss_tracker.update_state(1.0, sample_weight=2.0)  # rank 0: 2 samples of loss 1
    models[1]._loss_tracker.update_state(4.0, sample_weight=6.0)  # rank 1: 6 samples of loss 4

    def rank_main(collective):
        replicas.sum_metric_states(models[collective.rank], collective)
        return float(models[collective.rank]._loss_tracker.result()), calls(collective)

    assert run_ranks(2, rank_main) == [(3.25, ["sum"])] * 2  # (2 * 1 + 6 * 4) / 8


# --- Checkpointer (rank 0 alone writes: no collective) -----------------------------------------------


def saved(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("loss", "min"), ("val_accuracy", "max"),
                                           ("val_auc", "max")])
def test_checkpointer_mode_follows_the_monitor(tmp_path, monitor, mode):
    checkpointer = Checkpointer(tmp_path, 1, None, monitor, best={"epoch": 1, str(monitor): 0.5})
    assert checkpointer.mode == mode
    assert (checkpointer.improved(0.25), checkpointer.improved(0.75)) == ((True, False) if mode == "min" else
                                                                          (False, True))
    assert Checkpointer(tmp_path, 1, None, None, None).mode == "min"  # no monitor: no best.keras (unused)


@pytest.mark.parametrize("monitor, values, best_epoch", [
    ("val_loss", [0.5, 0.25, float("nan"), 0.375], 2),  # lower is better; NaN is never best
    ("val_accuracy", [0.5, 0.25, 0.75, 0.75], 3),  # higher is better; a tie is no improvement
])
def test_checkpointer_keeps_the_newest_n_and_the_best(tmp_path, monitor, values, best_epoch):
    model = dense_model()
    config = run_config()
    checkpointer = attach(Checkpointer(tmp_path, 2, config, monitor, best=None), model)
    written = []
    for epoch, value in enumerate(values):
        model.layers[0].kernel.assign(np.full((3, 2), float(epoch + 1)))  # the weights tell the epoch
        checkpointer.on_epoch_end(epoch, {"loss": 1.0, monitor: value, "confusion": np.eye(2)})
        written.append(saved(tmp_path))
    assert written == [["best.keras", "epoch-0001.keras"],
                       ["best.keras", "epoch-0001.keras", "epoch-0002.keras"],
                       ["best.keras", "epoch-0002.keras", "epoch-0003.keras"],
                       ["best.keras", "epoch-0003.keras", "epoch-0004.keras"]]
    assert [p.name for p in checkpointer.paths] == [f"epoch-{e:04d}.keras" for e in (1, 2, 3, 4)]
    best = {"epoch": best_epoch, "loss": 1.0, monitor: values[best_epoch - 1]}
    assert checkpointer.best == best
    record = checkpoints.read_record(tmp_path / "best.keras")
    assert (record["position"], record["best"], record["monitor"], record["config"]) == (
        {"epoch": best_epoch, "sample": 0}, best, monitor, config.__dict__)
    last = checkpoints.read_record(tmp_path / "epoch-0004.keras")
    assert (last["position"], last["best"], last["metrics"]) == ({"epoch": 4, "sample": 0}, best,
                                                                {"loss": 1.0, monitor: values[3]})
    restored = dense_model()
    restored.load_weights(tmp_path / "best.keras")
    np.testing.assert_array_equal(restored.layers[0].kernel.numpy(), np.full((3, 2), float(best_epoch)))


def test_checkpointer_saves_the_model_its_local_context_gives(tmp_path):
    """A process-local copy (the JAX engine's twin) is what is saved, not the distributed model."""
    import contextlib

    model, local = dense_model(1.0), dense_model(5.0)
    checkpointer = attach(Checkpointer(tmp_path, 1, None, None, None, local=lambda: contextlib.nullcontext(local)),
                          model)
    checkpointer.on_epoch_end(0, {"loss": 1.0})
    assert saved(tmp_path) == ["epoch-0001.keras"]  # no monitor: no best.keras
    restored = dense_model()
    restored.load_weights(tmp_path / "epoch-0001.keras")
    np.testing.assert_array_equal(restored.layers[0].kernel.numpy(), np.full((3, 2), 5.0))


# --- Commit (elastic: the state is Horovod's in a real run) ------------------------------------------


class FakeState:
    """Horovod's elastic State as Commit uses it: ``progress``, and ``commit()`` (recorded)."""

    def __init__(self, position):
        self.progress = dict(position=list(position), base_batch=4, best=None, epochs=[])
        self.commits: list[dict] = []

    def commit(self):
        self.commits.append(copy.deepcopy(self.progress))


def test_commit_every_n_steps_and_at_each_epoch_end_from_a_resumed_position():
    """Resumed at sample 16 of epoch 1 (8 steps left of 8 samples), committing every 3 steps;
    then epoch 2 in full (10 steps). The same positions on every rank."""
    committed = []
    for rank in (0, 1):
        state, best = FakeState([1, 16]), [None]
        commit = attach(Commit(state, Timeline(plan_of(rank), Position(1, 16)), 3, lambda: best[0]), dense_model())
        for epoch, steps in ((1, 8), (2, 10)):
            commit.on_epoch_begin(epoch)
            for batch in range(steps):
                commit.on_train_batch_begin(batch)
            best[0] = {"epoch": epoch + 1, "val_loss": 0.5}
            commit.on_epoch_end(epoch, {"loss": float(epoch), "confusion": np.eye(2)})
        committed.append(state.commits)
    assert committed[0] == committed[1]
    epoch_1 = [1, {"loss": 1.0}]
    best_2 = {"epoch": 2, "val_loss": 0.5}
    assert [(c["position"], c["best"], c["epochs"]) for c in committed[0]] == [
        ([1, 40], None, []), ([1, 64], None, []), ([2, 0], best_2, [epoch_1]),
        ([2, 24], best_2, [epoch_1]), ([2, 48], best_2, [epoch_1]), ([2, 72], best_2, [epoch_1]),
        ([3, 0], {"epoch": 3, "val_loss": 0.5}, [epoch_1, [2, {"loss": 2.0}]])]


# --- the resume decision -------------------------------------------------------------------------------


@pytest.fixture
def resumable(tmp_path):
    """A checkpoint directory: epoch 1 (weights 1), epoch 2 + 16 samples (weights 2, 7 optimizer
    steps, saved with a base batch of 8), a corrupt epoch-0003.keras, and the PREEMPTED marker."""
    directory = tmp_path / "checkpoints"
    saved_config = run_config(base_batch=8)
    for position, value in ((Position(1), 1.0), (Position(2, 16), 2.0)):
        model = dense_model(value)
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(7 * position.epoch // 2)
        checkpoints.save(model, directory / checkpoints.name_for(position), position, saved_config,
                         best={"epoch": position.epoch, "val_loss": 1 / value}, monitor="val_loss")
    (directory / "epoch-0003.keras").write_bytes(b"cut short by a full disk")
    (directory / checkpoints.PREEMPTED_MARKER).write_text("2 16\n")
    return directory


def resume_on_ranks(size, directory, config, allowed=(), resume=True):
    """``training._resume_point`` on ``size`` ranks, each with its own model (weights 10 + rank)."""
    models = [dense_model(10.0 + rank) for rank in range(size)]

    def rank_main(collective):
        model = models[collective.rank]
        decision = training._resume_point(replicas.HostModel(model, collective), collective, directory, config,
                                          allowed, resume)
        return decision, model.layers[0].kernel.numpy().tolist(), int(model.optimizer.iterations.numpy())

    return run_ranks(size, rank_main)


def test_rank_0_reads_the_newest_intact_checkpoint_and_every_rank_resumes_from_it(resumable, monkeypatch, capsys):
    readers = []
    newest_intact = checkpoints.newest_intact

    def recorded(directory, *args, **kwargs):
        readers.append(threading.current_thread().name)
        return newest_intact(directory, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "newest_intact", recorded)
    results = resume_on_ranks(3, resumable, run_config())
    assert readers == ["rank0"]
    assert results == [((Position(2, 16), 8, {"epoch": 2, "val_loss": 0.5}), [[2.0, 2.0]] * 3, 7)] * 3
    assert not (resumable / checkpoints.PREEMPTED_MARKER).exists()  # the resuming run removes it
    assert capsys.readouterr().out.count("distributed_h5: skipping unreadable checkpoint epoch-0003.keras: ") == 1


def test_a_config_mismatch_is_the_same_error_on_every_rank_and_allowed_fields_resume(resumable):
    with pytest.raises(ConfigMismatch) as raised:
        resume_on_ranks(2, resumable, run_config(seed=1))
    assert str(raised.value) == (
        f"cannot resume from {resumable / 'epoch-0002-sample-000000016.keras'}: the run configuration differs from "
        "the checkpoint's (seed: 0 -> 1), which would change the train/validation split or the data. Use the "
        "checkpoint's values, start a fresh checkpoint directory, or pass --allow-config-change seed to resume "
        "anyway.")

    messages = [None, None]

    def every_rank(collective):
        try:
            training._resume_point(replicas.HostModel(dense_model(), collective), collective, resumable,
                                   run_config(seed=1), (), True)
        except ConfigMismatch as error:
            messages[collective.rank] = str(error)
        return calls(collective)

    assert run_ranks(2, every_rank) == [["broadcast_object(root=0)"]] * 2  # no rank shares weights after it
    assert messages[0] == messages[1] == str(raised.value)
    (position, base_batch, _), *_ = resume_on_ranks(2, resumable, run_config(seed=1), allowed=("seed",))[0]
    assert (position, base_batch) == (Position(2, 16), 8)


def test_without_resume_every_rank_starts_at_zero_from_rank_0s_weights(resumable, tmp_path):
    start = ((Position(0), 4, None), [[10.0, 10.0]] * 3, 0)
    assert resume_on_ranks(2, resumable, run_config(), resume=False) == [start] * 2
    assert (resumable / checkpoints.PREEMPTED_MARKER).exists()  # not resuming: the marker is not ours
    assert resume_on_ranks(2, tmp_path / "empty", run_config()) == [start] * 2


# --- _prepare_directories (rank 0) -------------------------------------------------------------------


def test_a_directory_holding_another_run_is_refused_with_the_exact_message(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    for name in ("epoch-0001.keras", "best.keras", "training.csv"):
        (directory / name).write_text(name)
    lock, error = training._prepare_directories(0, directory, directory)
    assert lock is None
    assert error == (f"{directory} holds another run (best.keras, epoch-0001.keras, training.csv): resume it with "
                     "--resume (resume=True), choose a new --checkpoint-dir, or pass --overwrite (overwrite=True) to "
                     "start over with its files moved into a replaced-* folder there")
    with checkpoints.DirectoryLock(directory):  # refused, the directory lock was let go
        pass
    for name in ("epoch-0002.keras", "epoch-0003.keras", "PREEMPTED"):
        (directory / name).write_text(name)
    _, error = training._prepare_directories(0, directory, None)
    assert error.startswith(f"{directory} holds another run (PREEMPTED, best.keras, epoch-0001.keras, "
                            "epoch-0002.keras, ...): ")


def test_overwrite_moves_the_previous_runs_files_aside_and_locks(tmp_path, capsys):
    directory = tmp_path / "run"
    directory.mkdir()
    for name in ("epoch-0001.keras", "best.keras", "notes.txt"):
        (directory / name).write_text(name)
    lock, error = training._prepare_directories(0, directory, None, overwrite=True)
    try:
        assert error is None
        aside = [p for p in directory.iterdir() if p.name.startswith("replaced-")]
        assert len(aside) == 1
        assert sorted(os.listdir(aside[0])) == ["best.keras", "epoch-0001.keras"]
        assert sorted(os.listdir(directory)) == sorted([".lock", aside[0].name, "notes.txt"])  # not a run's: stays
        assert capsys.readouterr().out == (f"distributed_h5: --overwrite: moved the previous run's files in "
                                           f"{directory} to {aside[0]}\n")
        with pytest.raises(RuntimeError, match=rf"^checkpoint directory {directory} is in use by host \S+ pid "
                                               rf"{os.getpid()}; wait for that job"):
            checkpoints.DirectoryLock(directory).acquire()
    finally:
        lock.release()


def test_a_resume_and_an_elastic_reforming_attempt_are_not_refused(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "epoch-0001.keras").write_text("")
    for kwargs in (dict(resume=True), dict(first=False)):
        lock, error = training._prepare_directories(0, directory, tmp_path / "logs", **kwargs)
        assert (error, lock is not None) == (None, True), kwargs
        lock.release()
        assert sorted(os.listdir(directory)) == [".lock", "epoch-0001.keras"]  # untouched
    lock, error = training._prepare_directories(0, directory, None, locked=True, first=False)
    assert (lock, error) == (None, None)  # this process holds the lock already (a re-forming attempt)


def test_only_rank_0_prepares_and_an_unwritable_directory_is_one_line(tmp_path):
    assert training._prepare_directories(1, tmp_path / "new", tmp_path / "logs") == (None, None)
    assert not (tmp_path / "new").exists() and not (tmp_path / "logs").exists()
    (tmp_path / "file").write_text("")
    lock, error = training._prepare_directories(0, tmp_path / "file" / "run", None)
    assert (lock, error) == (None, f"cannot write to {tmp_path / 'file' / 'run'}: Not a directory")


# --- HostModel -------------------------------------------------------------------------------------------


def test_share_gives_every_rank_rank_0s_weights_and_optimizer_state():
    models = [dense_model(float(rank + 1), batchnorm=True) for rank in range(3)]
    models[0].optimizer.build(models[0].trainable_variables)
    models[0].optimizer.iterations.assign(5)
    models[0].layers[1].moving_variance.assign([3.0, 4.0])

    def rank_main(collective):
        model = models[collective.rank]
        host = replicas.HostModel(model, collective)
        with host.local() as local:
            assert local is model  # per-process replicas: the model itself
        host.share()
        return [w.tolist() for w in model.get_weights()], int(model.optimizer.iterations.numpy()), calls(collective)

    expected = [[[1.0] * 2] * 3, [1.0] * 2, [1.0] * 2, [0.0] * 2, [0.0] * 2, [3.0, 4.0]]  # kernel, bias, BN
    assert run_ranks(3, rank_main) == [(expected, 5, ["broadcast_variables(root=0)"])] * 3


def test_moving_statistics_are_averaged_only_where_ranks_differ():
    models = [dense_model(batchnorm=True) for _ in range(2)]
    models[1].layers[1].moving_mean.assign([2.0, 4.0])

    def rank_main(collective):
        count = replicas.average_moving_state(models[collective.rank], collective)
        return count, models[collective.rank].layers[1].moving_mean.numpy().tolist()

    assert run_ranks(2, rank_main) == [(2, [1.0, 2.0])] * 2  # moving mean and variance
    assert replicas.average_moving_state(models[0], Single()) == 2  # one process: nothing to average


def test_collective_calls_happen_in_the_same_order_on_every_rank_or_fail():
    """What the fake checks in every test above: a rank that skips a call fails, not hangs."""
    models = [dense_model() for _ in range(2)]

    def rank_main(collective):
        state = attach(GlobalState(collective), models[collective.rank])
        if collective.rank == 0:  # a bug: rank 0 alone reduces an extra log
            collective.max(0)
        state.on_epoch_end(0, {"loss": 1.0})

    with pytest.raises(CollectiveMismatch, match=r"collective call 1 differs between ranks: rank 0 max, rank 1 mean"):
        run_ranks(2, rank_main)


def test_checkpoints_written_here_are_plain_keras_archives(tmp_path):
    """best.keras and the epoch checkpoints load with plain keras and hold the record."""
    model = dense_model(3.0)
    attach(Checkpointer(tmp_path, 1, run_config(), "loss", None), model).on_epoch_end(0, {"loss": 0.5})
    for name in ("best.keras", "epoch-0001.keras"):
        assert checkpoints.RECORD in zipfile.ZipFile(tmp_path / name).namelist()
        np.testing.assert_array_equal(keras.models.load_model(tmp_path / name).layers[0].kernel.numpy(),
                                      np.full((3, 2), 3.0))
