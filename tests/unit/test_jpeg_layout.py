"""JPEG clips through the data layer: make-synthetic and convert write them, describe and
inspect check them, the reader decodes them (windows: only their frames), and training and
evaluate read the same decoded pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from distributed_h5.data import jpeg
from distributed_h5.data.dataset import DatasetError, describe
from distributed_h5.data.reader import BatchReader
from distributed_h5.data.synthetic import make_synthetic

from ..videos import make_tree, write_rawframes


def run_cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    common = dict(samples=40, frames=6, size=(24, 32), classes=3, seed=5, progress=False)
    return (make_synthetic(root / "raw.h5", **common),
            make_synthetic(root / "jpeg.h5", codec="jpeg", quality=95, **common))


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_the_reader_decodes_jpeg_clips_and_windows_only_their_frames(files):
    raw, encoded = files
    info = describe(encoded, clips=True)
    assert (info.codec, info.clip_shape, info.dtype, info.compression, info.sample_count) == (
        "jpeg", (6, 3, 24, 32), np.dtype(np.uint8), "jpeg", 40)
    indices = np.array([0, 3, 4, 5, 17, 39])
    with BatchReader(encoded, threads=2) as reader, BatchReader(raw) as stored, jpeg.JpegClips(encoded) as clips:
        assert reader.method == "jpeg"
        x, y = reader.read(indices)
        np.testing.assert_array_equal(x, clips.read(indices))  # the decoder's pixels, whatever the threads
        x_raw, y_raw = stored.read(indices)
        np.testing.assert_array_equal(y, y_raw)  # the labels are the raw file's
        assert psnr(x, x_raw) > 30  # JPEG q95 of noise with a moving square
        starts = np.array([0, 1, 2, 3, 0, 2])
        windows, _ = reader.read_windows(indices, starts, frames=2, stride=2)
        for row, start in enumerate(starts):
            np.testing.assert_array_equal(windows[row], x[row, start : start + 4 : 2])


def test_a_corrupt_frame_is_named_where_it_is_read(files, tmp_path):
    _, encoded = files
    broken = tmp_path / "broken.h5"
    broken.write_bytes(encoded.read_bytes())
    with h5py.File(broken, "r") as file:  # clip 2 is not among the clips probed at open
        base, offsets = file["X"]["bytes"].id.get_offset(), file["X"]["offsets"][:]
    key = 2 * 6 + 4  # frame 4 of clip 2
    with open(broken, "r+b") as handle:
        handle.seek(base + int(offsets[key]))
        handle.write(b"\x00" * int(offsets[key + 1] - offsets[key]))
    describe(broken, clips=True)  # the probed clips decode
    with BatchReader(broken) as reader:
        with pytest.raises(DatasetError) as failed:
            reader.read(np.array([1, 2, 3]))
    assert str(failed.value).startswith(f"{broken}: clip 2 frame 4 of 'X' does not decode as JPEG (corrupt?)")


def test_make_synthetic_and_inspect_say_what_is_stored(files):
    _, encoded = files
    with h5py.File(encoded, "r") as file:
        stored = int(file["X"]["bytes"].size)
    shown = run_cli("inspect", encoded)
    assert shown.returncode == 0, shown.stderr
    assert (f"codec         jpeg, quality 95, subsampling 444: {stored / 40:,.0f} bytes per clip on average, "
            f"1/{6 * 3 * 24 * 32 * 40 / stored:.1f} of raw (13,824 bytes)") in shown.stdout.splitlines()
    refused = run_cli("make-synthetic", encoded.with_name("x.h5"), "--samples", 4, "--codec", "jpeg",
                      "--compression", "gzip")
    assert (refused.returncode, refused.stderr) == (2, "distributed-h5 make-synthetic: error: codec='jpeg' stores JPEG "
                                                    "frames, which compression='gzip' cannot apply to; use "
                                                    "compression='none'\n")


def test_convert_writes_jpeg_frames_close_to_the_raw_conversion(tmp_path):
    make_tree(tmp_path / "videos")
    args = ("convert", tmp_path / "videos", "--frames", 4, "--size", 24, 32)
    assert run_cli(*args[:2], tmp_path / "raw.h5", *args[2:]).returncode == 0
    done = run_cli(*args[:2], tmp_path / "jpeg.h5", *args[2:], "--codec", "jpeg", "--part-videos", 3)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "raw.h5", "r") as raw, h5py.File(tmp_path / "jpeg.h5", "r") as encoded:
        for name in ("Y", "source_paths", "groups", "frame_counts"):
            np.testing.assert_array_equal(raw[name][:], encoded[name][:])
        assert dict(encoded["X"].attrs.items())["quality"] == 90
    count = describe(tmp_path / "raw.h5").sample_count
    with BatchReader(tmp_path / "raw.h5") as raw, BatchReader(tmp_path / "jpeg.h5") as encoded:
        assert encoded.method == "jpeg"
        everything = np.arange(count)
        assert psnr(encoded.read(everything)[0], raw.read(everything)[0]) > 35  # flat colours and a bar


def test_training_and_evaluate_read_the_same_decoded_pixels(files, tmp_path):
    _, encoded = files
    trained = run_cli("train", encoded, "--epochs", 1, "--batch-size", 4, "--width", 2, "--depth", 1,
                      "--tf-threads", 1, "--checkpoint-dir", tmp_path / "ckpt", "--verbose", 0)
    assert trained.returncode == 0, trained.stderr
    record = json.loads(zipfile.ZipFile(tmp_path / "ckpt" / "epoch-0001.keras").read("distributed_h5.json"))
    scored = run_cli("evaluate", encoded, "--checkpoint", tmp_path / "ckpt" / "epoch-0001.keras", "--tf-threads", 1)
    assert scored.returncode == 0, scored.stderr
    values = dict(part.split("=") for part in scored.stdout.split())
    assert float(values["val_loss"]) == pytest.approx(record["metrics"]["val_loss"], rel=1e-6)
    assert float(values["val_accuracy"]) == record["metrics"]["val_accuracy"]


def test_rawframes_folders_convert_and_jpeg_frames_that_fit_are_copied_as_they_are(tmp_path):
    from distributed_h5.data.convert import convert

    write_rawframes(tmp_path / "frames")
    summary = convert(tmp_path / "frames", tmp_path / "copied.h5", frames=4, size=(24, 32), codec="jpeg",
                      progress=False)
    assert (summary.converted, summary.failed, summary.unlisted) == (4, [], [])
    convert(tmp_path / "frames", tmp_path / "raw.h5", frames=4, size=(24, 32), progress=False)
    convert(tmp_path / "frames", tmp_path / "scaled.h5", frames=4, size=(12, 16), codec="jpeg", progress=False)
    with h5py.File(tmp_path / "copied.h5", "r") as file:
        assert [p.decode() for p in file["source_paths"][:]] == ["a/video0", "a/video1", "b/video0", "b/video1"]
        assert file["frame_counts"][:].tolist() == [12] * 4
        x = file["X"]
        offsets = x["offsets"][:]
        for t, frame in enumerate((1, 5, 8, 12)):  # sample_positions(12, 4): frames 0, 4, 7, 11
            stored = x["bytes"][int(offsets[t]) : int(offsets[t + 1])].tobytes()
            assert stored == (tmp_path / "frames" / "a" / "video0" / f"img_{frame:05d}.jpg").read_bytes()
    everything = np.arange(4)
    with BatchReader(tmp_path / "copied.h5") as copied, BatchReader(tmp_path / "raw.h5") as raw, \
            BatchReader(tmp_path / "scaled.h5") as scaled:
        np.testing.assert_array_equal(copied.read(everything)[0], raw.read(everything)[0])  # the same decode
        assert scaled.read(everything)[0].shape == (4, 4, 3, 12, 16)  # decoded, fitted, encoded again
