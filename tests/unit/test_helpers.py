"""The helpers each decision has one of (issue 21 section 2): positive-integer checks, the
atomic write, the plot policy, the plan of a file, model loading and the model factory."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest

from distributed_h5.data import sharding
from distributed_h5.data.checks import positive_int, positive_pair
from distributed_h5.data.outputs import atomic_write, pyplot, save_figure


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_takes_integers_from_one(value):
    positive_int("batch_size", value)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_positive_int_refuses_the_rest_in_one_line(value):
    with pytest.raises(ValueError) as raised:
        positive_int("batch_size", value)
    assert str(raised.value) == f"batch_size must be an integer >= 1. Received: batch_size={value!r}"


def test_positive_int_optional_takes_none_and_says_so():
    positive_int("clip_frames", None, optional=True)
    with pytest.raises(ValueError, match=r"^clip_frames must be an integer >= 1 or None. Received: clip_frames=0$"):
        positive_int("clip_frames", 0, optional=True)


def test_the_callers_share_its_words():
    with pytest.raises(ValueError, match=r"^batch_size must be an integer >= 1. Received: batch_size=0$"):
        sharding.shard(10, batch_size=0)
    with pytest.raises(ValueError, match=r"^size must be an integer >= 1. Received: size=0$"):
        sharding.check_rank(0, 0)


@pytest.mark.parametrize("value", [(64, 48), [64, 48], np.array([64, 48]), (np.int64(64), 48.0)])
def test_positive_pair_returns_two_ints(value):
    pair = positive_pair("size", value, meaning="rows, cols")
    assert pair == (64, 48) and all(type(v) is int for v in pair)


@pytest.mark.parametrize("value", [(64, 0), (64,), (64, 48, 3), (64, 2.5), ("a", 1), 64, None])
def test_positive_pair_refuses_the_rest_in_one_line(value):
    with pytest.raises(ValueError) as raised:
        positive_pair("size", value, meaning="rows, cols")
    assert str(raised.value) == f"size must be two integers >= 1 (rows, cols). Received: size={value!r}"


def test_positive_pair_optional_takes_none_and_says_so():
    assert positive_pair("crop", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^crop must be two integers >= 1 or None. Received: crop=\(0, 4\)$"):
        positive_pair("crop", (0, 4), optional=True)


def test_the_pair_callers_share_its_words(tmp_path):
    from distributed_h5.data.augment import Augment
    from distributed_h5.data.synthetic import make_synthetic

    with pytest.raises(ValueError, match=r"^scale must be two integers >= 1 or None. Received: scale=\(8,\)$"):
        Augment(scale=(8,))
    with pytest.raises(ValueError, match=r"^size must be two integers >= 1 \(rows, cols\). Received: size=\(8, 0\)$"):
        make_synthetic(tmp_path / "d.h5", samples=2, size=(8, 0))


def test_atomic_write_renames_a_complete_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".partial-") and partial.name.endswith("out.txt")
        partial.write_text("new")
        assert target.read_text() == "old"  # replaced only when complete
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_keeps_the_old_file_and_no_partial_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(target) as partial:
            partial.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_write(tmp_path / "out.txt") as partial:
        partial.write_text("x")
    assert events == ["fsync", "replace"]


def test_atomic_write_not_durable_renames_without_fsync(tmp_path, monkeypatch):
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    target = tmp_path / ".progress-0"
    with atomic_write(target, partial=tmp_path / ".progress-0.tmp", durable=False) as partial:
        assert partial == tmp_path / ".progress-0.tmp"
        partial.write_text("3")
    assert events == ["replace"]
    assert target.read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".progress-0"]


def test_pyplot_without_matplotlib_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(RuntimeError) as raised:
        pyplot(Path("runs/training.png"))
    assert str(raised.value) == ("runs/training.png: writing it needs matplotlib, which is not installed: pip install "
                                 "'distributed_h5[bench]' (make install installs it)")


def test_pyplot_draws_without_a_display(tmp_path):
    pytest.importorskip("matplotlib")
    plt = pyplot(tmp_path / "x.png")
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
    figure, _ = plt.subplots()
    plt.close(figure)


def test_save_figure_writes_whole_and_closes(tmp_path):
    pytest.importorskip("matplotlib")
    plt = pyplot(tmp_path / "curves.png")
    figure, _ = plt.subplots()
    save_figure(figure, tmp_path / "curves.png", dpi=50)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    assert figure.number not in plt.get_fignums()


def test_save_figure_closes_and_leaves_nothing_when_it_fails(tmp_path):
    pytest.importorskip("matplotlib")
    plt = pyplot(tmp_path / "curves.png")
    figure, _ = plt.subplots()
    with pytest.raises(ValueError, match="Format 'nope' is not supported"):
        save_figure(figure, tmp_path / "curves.png", format="nope")
    assert list(tmp_path.iterdir()) == []
    assert figure.number not in plt.get_fignums()


def test_file_plan_is_the_plan_sequence_and_evaluation_use(files):
    from distributed_h5.evaluation import _plan
    from distributed_h5.sequence import ShardedSequence, file_plan

    path = files["clip-chunks"]
    plan = file_plan(path, 197, split=None, validation_ratio=0.25, seed=3, batch_size=4, rank=1, size=2)
    assert plan.split == "random"  # the file has no groups
    sequence = ShardedSequence(path, batch_size=4, validation_ratio=0.25, seed=3, rank=1, size=2)
    assert sequence.plan == plan and sequence.split == "random"
    settings = dict(split=None, validation_ratio=0.25, seed=3, batch_size=4)
    assert _plan(path, sequence.info, settings, 1, 2) == plan and settings["split"] == "random"
    sequence.close()


def test_load_keras_model_refuses_in_one_line(tmp_path):
    from distributed_h5.models import build_model, load_keras_model

    text = tmp_path / "notes.keras"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"^--model .*notes.keras: not a .keras model file \(Keras 3 saves"):
        load_keras_model(text, option="--model")
    model = build_model("video", (2, 3, 8, 8), 3, width=2, depth=1, seed=0)
    model.save(tmp_path / "compiled.keras")
    loaded = load_keras_model(tmp_path / "compiled.keras", option="--checkpoint", compiled=True)
    assert loaded.optimizer is not None and loaded.output_shape == (None, 3)
    import keras

    bare = keras.Model.from_config(model.get_config())  # never compiled
    bare.save(tmp_path / "bare.keras")
    load_keras_model(tmp_path / "bare.keras", option="--checkpoint")  # loads: compiled=False asks nothing more
    with pytest.raises(ValueError, match=r"^--model .*bare.keras: the model is not compiled; save it after"):
        load_keras_model(tmp_path / "bare.keras", option="--model", compiled=True)


@pytest.mark.parametrize("name, optimizer", [("video", "adam"), ("r2plus1d_18", "sgd")])
def test_build_model_compiles_as_train_does(name, optimizer):
    from distributed_h5.models import build_model

    model = build_model(name, (4, 3, 16, 16), 5, width=2, depth=1, seed=0, optimizer=optimizer, learning_rate=0.01)
    assert model.output_shape == (None, 5)
    assert type(model.optimizer).__name__.lower() == optimizer
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(0.01)
    assert model.loss == "categorical_crossentropy"
    if optimizer == "sgd":
        assert model.optimizer.momentum == 0.9


def test_build_model_refuses_unknown_names():
    from distributed_h5.models import build_model

    with pytest.raises(ValueError, match=r"^model must be one of \('video', 'r2plus1d_18'\). Received: 'resnet'$"):
        build_model("resnet", (4, 3, 16, 16), 5)
    with pytest.raises(ValueError, match=r"^optimizer must be one of \('adam', 'sgd'\). Received: optimizer='rmsprop'$"):
        build_model("video", (4, 3, 16, 16), 5, optimizer="rmsprop")


def test_atomic_write_takes_the_callers_temporary_name(tmp_path):
    target = tmp_path / "big.h5"
    with atomic_write(target, partial=tmp_path / "big.h5.partial") as partial:
        assert partial == tmp_path / "big.h5.partial"
        partial.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5"]


def test_the_models_check_their_sizes_with_it():
    from distributed_h5.models import r2plus1d_18, video_classifier

    with pytest.raises(ValueError, match=r"^depth must be an integer >= 1. Received: depth=0$"):
        video_classifier((2, 3, 8, 8), 2, depth=0)
    with pytest.raises(ValueError, match=r"^width must be an integer >= 1. Received: width=0$"):
        r2plus1d_18((2, 3, 8, 8), 2, width=0)
