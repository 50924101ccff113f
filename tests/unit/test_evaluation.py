"""evaluate and predict in one process, on real videos converted with --split-file and trained with the CLI."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_h5.augment import Augment
from distributed_h5.reader import BatchReader
from distributed_h5.synthetic import make_synthetic

from ..videos import make_ucf_tree

TRAIN = ("--epochs", 2, "--batch-size", 4, "--width", 4, "--depth", 2, "--verbose", 0, "--tf-threads", 1)


def run_cli(*args, cwd=None):
    environment = dict(os.environ)
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it (tests/conftest.py sets 2, which lets
    # TensorFlow's error-level "oneDNN supports DT_UINT8 only ..." through on CPUs without AVX-512's uint8 kernels)
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=environment)


def fields(line: str) -> dict:
    return dict(part.split("=", 1) for part in line.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """18 real videos (3 classes x 3 groups x 2 clips, 8 frames), group 3 listed as the test side,
    trained 2 epochs on windows of 4 frames with 12 x 12 crops and flips, split from the list."""
    root = tmp_path_factory.mktemp("evaluate")
    paths = make_ucf_tree(root / "UCF", groups=3, clips=2, frames=8, height=24, width=32)
    (root / "testlist.txt").write_text("".join(f"{p}\n" for p in paths if "_g03_" in p))
    converted = run_cli("convert", "UCF", "ucf.h5", "--frames", 8, "--size", 16, 20, "--split-file", "testlist.txt",
                        cwd=root)
    assert converted.returncode == 0, converted.stderr
    trained = run_cli("train", "ucf.h5", *TRAIN, "--clip-frames", 4, "--crop", 12, 12, "--flip", "--split", "file",
                      "--checkpoint-dir", "run", cwd=root)
    assert trained.returncode == 0, trained.stderr
    with open(root / "run" / "training.csv", newline="") as handle:
        final = list(csv.DictReader(handle))[-1]
    return root, final


def test_evaluate_reproduces_the_final_validation_exactly(run):
    root, final = run
    result = run_cli("evaluate", "ucf.h5", "--checkpoint", "run/epoch-0002.keras", "--tf-threads", 1, cwd=root)
    assert result.returncode == 0, result.stderr
    got = fields(result.stdout.strip())
    # The same validation clips (the split file's 6), the same centre view, the same batches: the same numbers.
    assert (got["val_accuracy"], got["val_loss"]) == (final["val_accuracy"], final["val_loss"])
    assert (got["samples"], got["views"], got["split"], got["seed"], got["batch_size"]) == ("6", "1x1", "file", "0", "4")
    assert "val_top5_accuracy" not in got  # 3 classes


def test_multi_view_evaluation_and_its_settings(run):
    from distributed_h5.evaluation import evaluate_model

    root, final = run
    checkpoint = root / "run" / "epoch-0002.keras"
    one = evaluate_model(checkpoint, root / "ucf.h5")
    assert one.metrics["val_accuracy"] == float(final["val_accuracy"])
    many = evaluate_model(checkpoint, root / "ucf.h5", views=(3, 2), batch_size=5)
    assert many.samples == 6 and many.views == (3, 2) and many.settings["batch_size"] == 5
    assert set(many.metrics) == {"val_accuracy", "val_loss"}
    assert np.isfinite(many.metrics["val_loss"]) and many.metrics["val_loss"] != one.metrics["val_loss"]
    other = evaluate_model(checkpoint, root / "ucf.h5", split="random", validation_ratio=0.5)
    assert other.samples == 9 and other.settings["split"] == "random"


def test_predict_writes_every_clip_with_class_names_and_a_confusion_matrix(run):
    root, _ = run
    result = run_cli("predict", "ucf.h5", "--checkpoint", "run/epoch-0002.keras", "--out", "predictions.csv",
                     "--views", 2, 2, "--tf-threads", 1, cwd=root)
    assert result.returncode == 0, result.stderr
    with open(root / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with h5py.File(root / "ucf.h5", "r") as file:
        paths = [p.decode() for p in file["source_paths"][:]]
    assert list(rows[0]) == ["index", "source_path", "predicted", "probability", "true", "subset"]
    assert [row["index"] for row in rows] == [str(i) for i in range(18)]
    assert [row["source_path"] for row in rows] == paths
    assert [row["true"] for row in rows] == [p.split("/")[0] for p in paths]  # class names, not numbers
    assert {row["predicted"] for row in rows} <= {"Blue", "Green", "Red"}
    assert all(1 / 3 <= float(row["probability"]) <= 1 for row in rows)
    # The checkpoint's split (the split file's): group 3 was validation, the rest was trained on.
    assert [row["subset"] for row in rows] == ["validation" if "_g03_" in p else "train" for p in paths]
    got = fields(result.stdout.strip())
    for side, count in (("validation", 6), ("train", 12)):
        accuracy = np.mean([row["predicted"] == row["true"] for row in rows if row["subset"] == side])
        assert (got[f"{side}_accuracy"], got[f"{side}_samples"]) == (repr(float(accuracy)), str(count))
    assert "accuracy" not in got  # no figure that mixes clips the model learnt with clips it did not
    assert (got["split"], got["seed"], got["validation_ratio"]) == ("file", "0", "0.3")
    assert (root / "predictions-confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_views_are_evenly_spread_windows_and_crops(tmp_path):
    from distributed_h5.evaluation import clip_views

    path = make_synthetic(tmp_path / "v.h5", samples=3, frames=8, channels=1, size=(6, 10), classes=2, progress=False)
    with h5py.File(path, "r") as file:
        stored = file["X"][:]
    augment = Augment(clip_frames=4, crop=(4, 4))
    with BatchReader(path, threads=1) as reader:
        x, y = clip_views(reader, np.array([0, 2]), augment, views=(3, 3))
        centre, _ = clip_views(reader, np.array([0, 2]), augment, views=(1, 1))
    assert x.shape == (2, 9, 4, 1, 4, 4) and y.shape == (2, 2)
    # Windows start at 0, 2, 4 of 8 frames; crops at columns 0, 3, 6 of 10, rows centred at 1 of 6.
    for t, start in enumerate((0, 2, 4)):
        for s, left in enumerate((0, 3, 6)):
            np.testing.assert_array_equal(x[:, t * 3 + s], stored[[0, 2], start : start + 4, :, 1:5, left : left + 4])
    np.testing.assert_array_equal(centre[:, 0], stored[[0, 2], 2:6, :, 1:5, 3:7])  # validation's centre view


def test_views_the_model_cannot_take_are_one_line(tmp_path):
    from distributed_h5.evaluation import clip_views

    path = make_synthetic(tmp_path / "v.h5", samples=2, frames=4, channels=1, size=(6, 6), classes=2, progress=False)
    with BatchReader(path, threads=1) as reader:
        with pytest.raises(ValueError, match=r"^views T=3 needs windows shorter than the stored clips, but the model "
                                             r"takes the whole of them \(train with --clip-frames to make them "
                                             r"smaller\); use T=1$"):
            clip_views(reader, np.array([0]), None, views=(3, 1))
        with pytest.raises(ValueError, match=r"views must be two integers >= 1"):
            clip_views(reader, np.array([0]), None, views=(0, 1))
    missing = run_cli("evaluate", path, "--checkpoint", tmp_path / "nope.keras")
    assert missing.returncode == 2
    assert missing.stderr == f"distributed-h5 evaluate: error: --checkpoint {tmp_path / 'nope.keras'}: no such file\n"


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "VIDEO.md"  # the workflow's page, linked from the README


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after ``heading`` in docs/VIDEO.md."""
    section = GUIDE.read_text().split(heading, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_split_workflow_runs_as_written(tmp_path):
    paths = make_ucf_tree(tmp_path / "UCF101", groups=4, clips=3, frames=40, height=48, width=64)
    (tmp_path / "ucfTrainTestlist").mkdir()
    (tmp_path / "ucfTrainTestlist" / "testlist01.txt").write_text("".join(f"{p}\n" for p in paths if "_g04_" in p))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DH5_TF_THREADS="1")
    stdout = []
    for line in readme_block("### Official splits, evaluation and prediction"):
        result = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
        stdout.append(result.stdout)
    assert "converted 36 video(s)" in stdout[1]
    assert "groups        dataset (36,) int64, 12 source videos" in stdout[2]
    assert "subset        dataset (36,) uint8, train 27, validation 9" in stdout[2]
    with open(tmp_path / "runs" / "ucf101" / "training.csv", newline="") as handle:
        final = list(csv.DictReader(handle))[-1]
    one, many = fields(stdout[4].strip()), fields(stdout[5].strip())
    assert (one["val_accuracy"], one["val_loss"], one["views"]) == (final["val_accuracy"], final["val_loss"], "1x1")
    assert many["views"] == "3x3" and many["samples"] == one["samples"] == "9" and many["split"] == "file"
    with open(tmp_path / "runs" / "ucf101" / "predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 36
    assert (tmp_path / "runs" / "ucf101" / "predictions-confusion.png").exists()


def test_predict_validation_accuracy_is_evaluate_s(run):
    root, final = run
    result = run_cli("predict", "ucf.h5", "--checkpoint", "run/epoch-0002.keras", "--out", "one-view.csv",
                     "--tf-threads", 1, cwd=root)
    assert result.returncode == 0, result.stderr
    got = fields(result.stdout.strip())
    # The same 6 clips as evaluate and training's validation, the same centre view: the same accuracy
    # (training's is a float32 metric, rounded here to the sixths it counts).
    assert got["validation_samples"] == "6"
    assert round(float(got["validation_accuracy"]) * 6) == round(float(final["val_accuracy"]) * 6)
    assert abs(float(got["validation_accuracy"]) - float(final["val_accuracy"])) < 1e-6



@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """An untrained 3-class model for (2, 1, 8, 8) clips saved as a plain .keras file (no record)."""
    from distributed_h5.models import video_classifier

    root = tmp_path_factory.mktemp("plain")
    model = video_classifier((2, 1, 8, 8), 3, width=2, depth=1, seed=0)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)  # saved with its state, as train saves: loads without warnings
    model.save(root / "plain.keras")
    return root / "plain.keras"


def small_file(path, **attributes):
    """12 clips of (2, 1, 8, 8), 3 classes (k % 3), with ``attributes`` as root attributes or, for
    ``source_paths``, a dataset."""
    path = make_synthetic(path, samples=12, frames=2, channels=1, size=(8, 8), classes=3, progress=False)
    with h5py.File(path, "a") as file:
        file["Y"][...] = np.eye(3, dtype=file["Y"].dtype)[np.arange(12) % 3]
        for name, value in attributes.items():
            if name == "source_paths":
                file.create_dataset(name, data=np.array(value, dtype=h5py.string_dtype()))
            else:
                file.attrs[name] = np.array(value, dtype=h5py.string_dtype())
    return path


def test_predictions_csv_neutralises_spreadsheet_formulas(tmp_path):
    from distributed_h5.evaluation import Predictions, write_predictions

    names = ["=cmd|' /C calc'!A0", "+SUM(A1)", "@x", "-1", "\tx", "cat"]
    predictions = Predictions(np.array([0, 5, 3]), np.array([0.5, 0.25, 1.0], dtype=np.float32), np.array([1, 2, 4]),
                              names, ["=HYPERLINK(\"http://x\")", "ok.mp4", "-a.mp4"], np.array([1, 0, 0], np.uint8))
    csv_path, png = write_predictions(predictions, tmp_path / "p.csv")
    assert csv_path.read_bytes().decode("utf-8") == (
        "index,source_path,predicted,probability,true,subset\r\n"
        "0,\"'=HYPERLINK(\"\"http://x\"\")\",'=cmd|' /C calc'!A0,0.500000,'+SUM(A1),validation\r\n"
        "1,ok.mp4,cat,0.250000,'@x,train\r\n"
        "2,'-a.mp4,'-1,1.000000,'\tx,train\r\n")
    assert png.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p-confusion.png", "p.csv"]


def test_predict_writes_class_names_that_are_not_utf8_and_formulas_as_text(plain, tmp_path):
    """Names come from the data file: bytes that are not UTF-8 are written as \\xNN escapes, formulas as text."""
    path = small_file(tmp_path / "d.h5", class_names=[b"caf\xe9", "=cmd|' /C calc'!A0", "dog"],
                      source_paths=[f"-clip{k}.mp4" for k in range(12)])
    result = run_cli("predict", path, "--checkpoint", plain, "--out", tmp_path / "p.csv", "--tf-threads", 1)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["true"] for row in rows] == ["caf\\xe9", "'=cmd|' /C calc'!A0", "dog"] * 4
    assert [row["source_path"] for row in rows] == [f"'-clip{k}.mp4" for k in range(12)]
    got = fields(result.stdout.strip())
    assert (got["validation_samples"], got["train_samples"], got["split"], got["seed"]) == ("4", "8", "random", "0")
    assert [row["subset"] for row in rows].count("validation") == 4


@pytest.mark.parametrize("case", ["class_names", "source_paths"])
def test_predict_refuses_inconsistent_metadata_in_one_line_before_any_work(plain, tmp_path, case):
    if case == "class_names":
        path = small_file(tmp_path / "d.h5", class_names=["cat", "dog"])
        message = f"{path}: attribute 'class_names' has 2 name(s) but 'Y' has 3 columns; expected one name per class"
    else:
        path = small_file(tmp_path / "d.h5", source_paths=[f"clip{k}.mp4" for k in range(10)])
        message = (f"{path}: dataset 'source_paths' has 10 entries but 12 clips are in use (sample_count); expected "
                   "one source path per row of X")
    result = run_cli("predict", path, "--checkpoint", plain, "--out", tmp_path / "p.csv", "--tf-threads", 1)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"distributed-h5 predict: error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]  # no CSV, no .partial-p.csv


def checkpoint_without(plain, tmp_path, field):
    """``plain`` with a distributed_h5.json record whose config lacks ``field``."""
    import dataclasses
    import json
    import shutil
    import zipfile

    from distributed_h5.checkpoints import RECORD, RunConfig

    config = RunConfig(seed=0, validation_ratio=0.25, sample_count=12, fingerprint="0", path="d.h5", file_bytes=0,
                       remainder="pad", batch_size=4, ranks=1, global_batch=4, base_batch=4, precision="float32",
                       engine="horovod", version="0")
    record = {"format": 1, "position": {"epoch": 1, "sample": 0},
              "config": {k: v for k, v in dataclasses.asdict(config).items() if k != field}}
    path = tmp_path / "old.keras"
    shutil.copy(plain, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(RECORD, json.dumps(record))
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_checkpoint_record_without_a_field_is_one_line(plain, tmp_path, command):
    path = small_file(tmp_path / "d.h5")
    checkpoint = checkpoint_without(plain, tmp_path, "engine")
    out = ("--out", tmp_path / "p.csv") if command == "predict" else ()
    result = run_cli(command, path, "--checkpoint", checkpoint, *out, "--tf-threads", 1)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 {command}: error: --checkpoint {checkpoint}: its record (distributed_h5.json) lacks engine in "
        "'config'; expected a checkpoint written by distributed-h5 train\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "old.keras"]


@pytest.mark.parametrize("classes", [5, 2])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_file_with_another_class_count_is_one_line(plain, tmp_path, command, classes):
    path = make_synthetic(tmp_path / f"{classes}.h5", samples=12, frames=2, channels=1, size=(8, 8), classes=classes,
                          progress=False)
    out = ("--out", tmp_path / "p.csv") if command == "predict" else ()
    result = run_cli(command, path, "--checkpoint", plain, *out, "--tf-threads", 1)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 {command}: error: the model predicts 3 classes but {path} has {classes} (the columns of 'Y'); "
        "score it on a file with the classes it was trained on\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{classes}.h5"]  # no CSV, no .partial


def test_a_full_disk_under_predict_s_output_is_one_line_naming_it_and_leaves_nothing(plain, tmp_path):
    path = small_file(tmp_path / "d.h5")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(small / "filler", "wb", buffering=0) as filler:  # the disk full, yet new empty files can be made
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        result = run_cli("predict", path, "--checkpoint", plain, "--out", small / "p.csv", "--tf-threads", 1)
        left = sorted(p.name for p in small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 predict: error: {small / 'p.csv'}: cannot be written (No space left on device)\n"))
    assert left == ["filler"]
