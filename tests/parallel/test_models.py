"""Real video models on real Horovod ranks: BatchNorm replicas and validation, synchronised
BatchNorm, R(2+1)D-18, and mixed precision (bf16, fp16 with loss scaling)."""

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_h5 import sharding
from distributed_h5.reader import BatchReader
from distributed_h5.synthetic import make_synthetic

from .conftest import report, train, weights

CONTROLLERS = ["gloo", "mpi"]


def evaluate_alone(file, weights_, model_kind="bn"):
    """Rank 0's final model evaluated by this one process on the whole validation subset."""
    from distributed_h5.models import video_classifier

    model = video_classifier((4, 3, 12, 12), 3, width=4, depth=2, dropout=0.0, batchnorm=model_kind == "bn")
    model.set_weights(weights_)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    validation = sharding.split(101, 0.3, seed=0).validation
    with BatchReader(file) as reader:
        x, y = reader.read(validation)
    return model.evaluate(x, y, batch_size=31, verbose=0, return_dict=True)


@pytest.fixture(scope="module")
def bn_runs(small_file, tmp_path_factory):
    """``run(name)``: the BatchNorm model's runs that several tests compare, each once per module,
    2 epochs each: "one" (1 rank x 8), "gloo" and "mpi" (2 ranks x 4 under that controller, rank
    1 initialised differently), "layer" (SyncBatchNormalization layers, 2 x 4) and "flag"
    (plain layers with --sync-bn, 2 x 4, checkpoints in ``flag/checkpoints``)."""
    runs = {}
    root = tmp_path_factory.mktemp("bn")
    arguments = {"one": (1, "gloo", "--model", "bn", "--batch-size", 8),
                 "gloo": (2, "gloo", "--model", "bn", "--init-seed", "rank"),
                 "mpi": (2, "mpi", "--model", "bn", "--init-seed", "rank"),
                 "layer": (2, "gloo", "--model", "syncbn", "--batch-size", 4),
                 "flag": (2, "gloo", "--model", "bn", "--sync-bn", "--batch-size", 4,
                          "--checkpoint-dir", root / "flag" / "checkpoints")}

    def run(name: str) -> Path:
        if name not in runs:
            ranks, controller, *args = arguments[name]
            train(ranks, controller, small_file, root / name, *args, "--epochs", 2)
            runs[name] = root / name
        return runs[name]

    return run


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_batchnorm_replicas_identical_and_validation_exact(bn_runs, small_file, controller):
    """Each rank's BatchNorm sees only its batches; the moving statistics are averaged after
    every epoch, so the replicas end bit-identical (moving mean and variance included) and
    val_* is rank 0's final model evaluated on the whole validation subset."""
    out = bn_runs(controller)
    first, second = weights(out, 0), weights(out, 1)
    assert len(first) == 4 + 4 * 4 + 2  # 4 conv kernels (no bias before BN), 4 BN x (gamma, beta, mean, variance), dense
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    history = report(out, 0)["history"]
    assert history == report(out, 1)["history"]
    expected = evaluate_alone(small_file, first)
    assert history["val_loss"][-1] == pytest.approx(expected["loss"], rel=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(expected["accuracy"], abs=1e-7)


def test_sync_batchnorm_two_ranks_equal_one_rank_with_twice_the_batch(bn_runs):
    """With synchronised BN, 2 ranks x 4 train exactly as 1 rank x 8 (SGD): weights and
    moving statistics. Both the layer class and sync_batchnorm=True on plain layers."""
    one = weights(bn_runs("one"), 0)
    for run in ("layer", "flag"):
        for a, b in zip(weights(bn_runs(run), 0), one):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # The flag keeps plain layers, so the checkpoint names only Keras' own BatchNormalization.
    config = json.loads(zipfile.ZipFile(bn_runs("flag") / "checkpoints" / "epoch-0002.keras").read("config.json"))
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    assert "BatchNormalization" in classes and "SyncBatchNormalization" not in classes


def test_plain_batchnorm_differs_from_one_rank_with_twice_the_batch(bn_runs):
    """The control: unsynchronised BN on 2 x 4 is not 1 x 8 (per-rank batch statistics). Rank
    0's initialisation (seed 0, broadcast to rank 1) is the one rank's, so only BN differs."""
    kernel_one, kernel_two = weights(bn_runs("one"), 0)[0], weights(bn_runs("gloo"), 0)[0]
    assert not np.allclose(kernel_one, kernel_two, rtol=1e-4, atol=1e-5)


def test_r2plus1d_18_trains_on_two_ranks(tmp_path, small_file):
    """At the worker's default rate (0.05) its BatchNorm moving variances went NaN on 4 clips per
    rank while the loss stayed finite, and this test passed until train_model checked every
    weight (af4ea3d); at 0.01 every weight and moving statistic stays finite."""
    out = tmp_path / "run"
    train(2, "gloo", small_file, out, "--model", "r2plus1d_18", "--epochs", 1, "--batch-size", 4,
          "--learning-rate", 0.01)
    for a, b in zip(weights(out, 0), weights(out, 1)):
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(a).all()
    facts = report(out, 0)
    assert facts["iterations"] == 9  # ceil(70 / 8) steps
    assert np.isfinite(facts["history"]["loss"][0])


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("learn") / "learn.h5", samples=384, frames=4, size=(16, 16),
                          classes=3, seed=3, progress=False)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_learns_with_identical_replicas(tmp_path, learnable, precision):
    out = tmp_path / "run"
    train(2, "gloo", learnable, out, "--precision", precision, "--optimizer", "adam", "--learning-rate", 0.01,
          "--width", 8, "--epochs", 4, "--batch-size", 8)
    for a, b in zip(weights(out, 0), weights(out, 1)):
        np.testing.assert_array_equal(a, b)
    facts = report(out, 0)
    assert facts["policy"] == precision
    assert facts["history"]["val_accuracy"][-1] >= 0.7  # chance is 1/3
    if precision == "mixed_float16":
        assert facts["loss_scale"] == report(out, 1)["loss_scale"]


def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path, small_file):
    """One clip of huge (but fp16-finite) values reaches rank 1 in the first step: its scaled
    gradients overflow, the averaged gradients are non-finite on both ranks, both skip that
    step and halve the loss scale, and the replicas stay identical."""
    data = tmp_path / "float.h5"
    with h5py.File(small_file, "r", locking=False) as source, h5py.File(data, "w") as target:
        x = source["X"][...].astype(np.float32) / 255
        first = sharding.ShardPlan(101, rank=1, size=2, batch_size=4).batches(0)[0][0]
        x[first] = 3000.0
        target["X"], target["Y"] = x, source["Y"][...]
        target.attrs["sample_count"] = 101
    out = tmp_path / "run"
    train(2, "gloo", data, out, "--precision", "mixed_float16", "--epochs", 1, "--batch-size", 4,
          "--validation-ratio", 0.3)
    rank0, rank1 = report(out, 0), report(out, 1)
    assert rank0["iterations"] == rank1["iterations"] == 9 - 1  # 9 steps, the first skipped
    assert rank0["loss_scale"] == rank1["loss_scale"] == 2.0**15 / 2
    for a, b in zip(weights(out, 0), weights(out, 1)):
        np.testing.assert_array_equal(a, b)
