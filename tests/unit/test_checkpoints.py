"""Checkpoints and the run's position: names, records, the configuration check, the lock,
the learning-rate schedule in samples, and the CLI's one-line answers around them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from distributed_h5 import checkpoints
from distributed_h5.callbacks import Timeline, learning_rate
from distributed_h5.checkpoints import ConfigMismatch, DirectoryLock, Position, RunConfig
from distributed_h5.collective import Single, average_logs
from distributed_h5.sharding import ShardPlan
from distributed_h5.synthetic import make_synthetic


def config(**changes) -> RunConfig:
    fields = dict(seed=0, validation_ratio=0.3, sample_count=101, fingerprint="abc", path="/data/a.h5",
                  file_bytes=1000, remainder="pad", batch_size=4, ranks=2, global_batch=8, base_batch=4,
                  precision="float32", engine="horovod", version="0.3.0")
    return RunConfig(**{**fields, **changes})


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="ones")])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_learning_rate_is_linear_scaling_with_warmup_in_samples():
    assert learning_rate(0.1, 8, 32, samples_seen=0, warmup_samples=100) == pytest.approx(0.1)
    assert learning_rate(0.1, 8, 32, samples_seen=50, warmup_samples=100) == pytest.approx(0.25)
    assert learning_rate(0.1, 8, 32, samples_seen=500, warmup_samples=100) == pytest.approx(0.4)
    assert learning_rate(0.1, 8, 32, samples_seen=0, warmup_samples=0) == pytest.approx(0.4)
    # The rank count does not enter: 2 x 4 and 1 x 8 are both a global batch of 8.
    assert learning_rate(0.1, 4, 8, samples_seen=35, warmup_samples=70) == pytest.approx(0.15)


def test_timeline_counts_samples_from_a_mid_epoch_start():
    plan = ShardPlan(101, validation_ratio=0.3, seed=0, rank=0, size=2, batch_size=4)  # 70 train, G = 8
    timeline = Timeline(plan, Position(1, 32))
    assert timeline.position(1, 0) == Position(1, 32)
    assert timeline.position(1, 2) == Position(1, 48)
    assert timeline.position(1, 5) == Position(1, 70)  # the padded last batch ends at the epoch's end
    assert timeline.position(2, 3) == Position(2, 24)
    assert timeline.samples_seen(1, 2) == 70 + 48


def test_average_logs_on_one_process_keeps_the_values():
    logs = {"loss": 1.5, "accuracy": np.float32(0.25), "confusion": [1, 2]}
    assert average_logs(logs, Single()) == {"loss": 1.5, "accuracy": 0.25, "confusion": [1, 2]}


def test_config_check_names_each_field_old_and_new_and_the_override():
    checkpoints.check_config(config(), config(ranks=4, batch_size=2))  # rank count and batch may change
    with pytest.raises(ConfigMismatch) as caught:
        checkpoints.check_config(config(), config(seed=1, validation_ratio=0.2), where="from epoch-0002.keras")
    assert str(caught.value) == (
        "cannot resume from epoch-0002.keras: the run configuration differs from the checkpoint's (seed: 0 -> 1; "
        "validation_ratio: 0.3 -> 0.2), which would change the train/validation split or the data. Use the "
        "checkpoint's values, start a fresh checkpoint directory, or pass --allow-config-change seed "
        "--allow-config-change validation_ratio to resume anyway.")
    checkpoints.check_config(config(), config(seed=1), allowed=("seed",))
    with pytest.raises(ValueError, match=r"allow_config_change takes \['seed', 'validation_ratio', 'sample_count', "
                                         r"'fingerprint', 'split'\]. Received: \['batch'\]"):
        checkpoints.check_config(config(), config(), allowed=("batch",))


def test_fingerprint_ignores_the_path_and_sees_the_labels(tmp_path):
    a = make_synthetic(tmp_path / "a.h5", samples=12, frames=2, size=(8, 8), classes=3, seed=1, progress=False)
    copy = tmp_path / "copy.h5"
    copy.write_bytes(a.read_bytes())
    other = make_synthetic(tmp_path / "b.h5", samples=12, frames=2, size=(8, 8), classes=3, seed=2, progress=False)
    assert checkpoints.fingerprint(a, 12) == checkpoints.fingerprint(copy, 12)
    assert checkpoints.fingerprint(a, 12) != checkpoints.fingerprint(other, 12)
    assert checkpoints.fingerprint(a, 12) != checkpoints.fingerprint(a, 11)


def test_fingerprint_sees_the_clips_not_only_their_shape(tmp_path):
    import h5py

    a = make_synthetic(tmp_path / "a.h5", samples=12, frames=2, size=(8, 8), classes=3, seed=1, progress=False)
    other = tmp_path / "other.h5"  # same labels, same shape and dtype, other clips
    with h5py.File(a, "r") as source, h5py.File(other, "w") as file:
        file.create_dataset("X", data=255 - source["X"][:], chunks=(1, 2, 3, 8, 8))
        file.create_dataset("Y", data=source["Y"][:])
        file.attrs["sample_count"] = 12
    assert checkpoints.fingerprint(a, 12) != checkpoints.fingerprint(other, 12)
    moved = tmp_path / "elsewhere" / "a.h5"  # a copy elsewhere (a node-local staged copy)
    moved.parent.mkdir()
    moved.write_bytes(a.read_bytes())
    assert checkpoints.fingerprint(moved, 12) == checkpoints.fingerprint(a, 12)
    repacked = tmp_path / "repacked.h5"  # the same values, stored otherwise: the same data
    with h5py.File(a, "r") as source, h5py.File(repacked, "w") as file:
        file.create_dataset("X", data=source["X"][:], chunks=(4, 2, 3, 8, 8), compression="gzip")
        file.create_dataset("Y", data=source["Y"][:])
        file.attrs["sample_count"] = 12
    assert checkpoints.fingerprint(repacked, 12) == checkpoints.fingerprint(a, 12)
    with h5py.File(moved, "r+") as file:  # one probed clip (the last in use) changed by one pixel
        file["X"][11, 1, 2, 7, 7] ^= 1
    assert checkpoints.fingerprint(moved, 12) != checkpoints.fingerprint(a, 12)


def test_names_sort_by_position_and_prune_keeps_the_newest(tmp_path):
    for position in (Position(2), Position(1, 32), Position(1), Position(10)):
        (tmp_path / checkpoints.name_for(position)).write_bytes(b"")
    (tmp_path / "best.keras").write_bytes(b"")
    assert [(p, path.name) for p, path in checkpoints.list_checkpoints(tmp_path)] == [
        (Position(1), "epoch-0001.keras"), (Position(1, 32), "epoch-0001-sample-000000032.keras"),
        (Position(2), "epoch-0002.keras"), (Position(10), "epoch-0010.keras")]
    checkpoints.prune(tmp_path, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "epoch-0002.keras", "epoch-0010.keras"]


def test_save_writes_a_plain_keras_file_with_a_record_and_a_corrupt_newest_falls_back(tmp_path):
    model = tiny_model()
    path = checkpoints.save(model, tmp_path / "epoch-0001.keras", Position(1), config(), metrics={"loss": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.keras"]  # no partial file left
    record = json.loads(zipfile.ZipFile(path).read("distributed_h5.json"))
    assert record["position"] == {"epoch": 1, "sample": 0} and record["config"]["seed"] == 0
    assert record["metrics"] == {"loss": 0.5}
    np.testing.assert_array_equal(keras.models.load_model(path).get_weights()[0], np.ones((2, 1)))
    (tmp_path / "epoch-0002.keras").write_bytes(b"not a zip")
    said = []
    position, found, _ = checkpoints.newest_intact(tmp_path, log=said.append)
    assert (position, found.name) == (Position(1), "epoch-0001.keras")
    assert said == ["distributed_h5: skipping unreadable checkpoint epoch-0002.keras: "
                    f"{tmp_path / 'epoch-0002.keras'}: not a readable .keras checkpoint (File is not a zip file)"]
    assert checkpoints.describe(path).splitlines()[:3] == [
        f"checkpoint    {path}", "position      epoch 1 complete + 0 samples of the next", "metrics       loss=0.5"]


def test_a_held_lock_is_refused_with_its_holder(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(RuntimeError) as caught:
            DirectoryLock(tmp_path).acquire()
    assert str(caught.value) == (f"checkpoint directory {tmp_path} is in use by host {socket.gethostname()} pid "
                                 f"{os.getpid()}; wait for that job to end or use another --checkpoint-dir")
    with DirectoryLock(tmp_path):  # released with its holder
        pass


# --- the CLI around checkpoints: one line, never a traceback -----------------------------------------------


def run_cli(*args, timeout=300):
    environment = dict(os.environ)
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("ckpt") / "data.h5", samples=24, frames=2, size=(8, 8), classes=2,
                          seed=3, progress=False)


def train_args(data, checkpoint_dir, *more):
    return ("train", data, "--epochs", 1, "--batch-size", 4, "--width", 2, "--tf-threads", 1,
            "--checkpoint-dir", checkpoint_dir, *more)


def test_resume_with_another_seed_is_refused_in_one_line_unless_allowed(tmp_path, data):
    checkpoint_dir = tmp_path / "ckpt"
    assert run_cli(*train_args(data, checkpoint_dir)).returncode == 0
    refused = run_cli(*train_args(data, checkpoint_dir, "--resume", "--seed", 1))
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"distributed-h5 train: error: cannot resume from {checkpoint_dir / 'epoch-0001.keras'}: the run "
        "configuration differs from the checkpoint's (seed: 0 -> 1), which would change the train/validation "
        "split or the data. Use the checkpoint's values, start a fresh checkpoint directory, or pass "
        "--allow-config-change seed to resume anyway."]
    allowed = run_cli(*train_args(data, checkpoint_dir, "--resume", "--seed", 1, "--epochs", 2,
                                  "--allow-config-change", "seed"))
    assert allowed.returncode == 0, allowed.stderr
    record = json.loads(zipfile.ZipFile(checkpoint_dir / "epoch-0002.keras").read("distributed_h5.json"))
    assert (record["position"], record["config"]["seed"]) == ({"epoch": 2, "sample": 0}, 1)
    described = run_cli("inspect-checkpoint", checkpoint_dir / "epoch-0002.keras")
    assert described.returncode == 0 and "position      epoch 2 complete + 0 samples of the next" in described.stdout
    assert run_cli("inspect", checkpoint_dir / "epoch-0002.keras").stdout == described.stdout
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    assert run_cli("inspect", broken).stderr.splitlines() == [
        f"distributed-h5 inspect: error: {broken}: not a readable .keras checkpoint (File is not a zip file)"]


def test_a_checkpoint_dir_in_use_or_unwritable_is_one_line(tmp_path, data):
    with DirectoryLock(tmp_path / "busy"):
        busy = run_cli(*train_args(data, tmp_path / "busy"))
    assert busy.returncode == 2  # a user's directory: the exit status of a user mistake
    assert busy.stderr.splitlines() == [
        f"distributed-h5 train: error: checkpoint directory {tmp_path / 'busy'} is in use by host "
        f"{socket.gethostname()} pid {os.getpid()}; wait for that job to end or use another --checkpoint-dir"]
    (tmp_path / "file").write_text("")
    unwritable = run_cli(*train_args(data, tmp_path / "file" / "ckpt"))
    assert unwritable.returncode == 2
    assert unwritable.stderr.splitlines() == [
        f"distributed-h5 train: error: cannot write to {tmp_path / 'file' / 'ckpt'}: Not a directory"]
    assert run_cli(*train_args(data, tmp_path / "c", "--keep-checkpoints", 0)).stderr.splitlines() == [
        "distributed-h5 train: error: argument --keep-checkpoints: must be an integer >= 1, got 0 "
        "(see distributed-h5 train --help)"]
