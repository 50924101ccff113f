"""distributed-h5 convert in one process, on real video files written with PyAV."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from distributed_h5 import describe
from distributed_h5.convert import decode, list_videos

from ..videos import COLOURS, frame_image, make_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, make_tree(root)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True, text=True)


def test_listing_is_sorted_by_class_then_path(tree):
    root, kinds = tree
    videos, names, _ = list_videos(root)
    assert names == ["blue", "green", "red"]
    assert [v.path for v in videos] == sorted(kinds, key=lambda p: (p.split("/")[0], p))
    assert [v.label for v in videos] == [names.index(v.path.split("/")[0]) for v in videos]


def test_decode_samples_uniformly_and_keeps_pixels(tree):
    root, _ = tree
    clip = decode(root / "green" / "green_1.mp4", frames=6, size=(48, 64))
    assert clip.frames.shape == (6, 3, 48, 64) and clip.frame_count == 30 and clip.frame_rate == 24.0
    picks = np.linspace(0, 29, 6).round().astype(int)
    for frame, t in zip(clip.frames, picks):
        expected = frame_image(COLOURS["green"], t).transpose(2, 0, 1).astype(int)
        assert np.abs(frame.astype(int) - expected).mean() < 6  # within codec tolerance


def test_decode_crops_and_pads_keeping_the_aspect_ratio(tree):
    root, _ = tree
    cropped = decode(root / "red" / "red_0.mp4", frames=2, size=(24, 24), fit="crop").frames
    padded = decode(root / "red" / "red_0.mp4", frames=2, size=(24, 24), fit="pad").frames
    assert cropped.shape == padded.shape == (2, 3, 24, 24)
    # 64x48 padded into 24x24 is 32x18 wide... scaled to 24x18: 3 black rows top and bottom.
    assert padded[:, :, :3].max() == 0 and padded[:, :, -3:].max() == 0 and padded[:, :, 3:21].max() > 0
    assert cropped.min(axis=(0, 2, 3)).tolist() != [0, 0, 0]


def test_short_and_gray_videos(tree):
    root, _ = tree
    short = decode(root / "green" / "green_short.mp4", frames=16, size=(12, 16))
    assert short.frame_count == 10
    np.testing.assert_array_equal(short.frames[10:], np.repeat(short.frames[9:10], 6, axis=0))
    gray = decode(root / "red" / "red_gray.mkv", frames=4, size=(12, 16), channels=3)
    assert gray.frames.shape == (4, 3, 12, 16)
    np.testing.assert_array_equal(gray.frames[:, 0], gray.frames[:, 1])  # gray in every channel


def test_convert_one_process(tree, tmp_path):
    root, kinds = tree
    out = tmp_path / "videos.h5"
    result = run_cli("convert", root, out, "--frames", 8, "--size", 24, 32)
    assert result.returncode == 0, result.stderr
    assert "converted 14 video(s)" in result.stdout
    assert "1 video(s) not converted:\n  blue/blue_corrupt.mp4: cannot be decoded" in result.stdout
    info = describe(out)
    assert (info.sample_count, info.clip_shape, info.classes) == (14, (8, 3, 24, 32), 3)
    with h5py.File(out, "r") as file:
        paths = [p.decode() if isinstance(p, bytes) else p for p in file["source_paths"][:]]
        assert paths == [p for p in sorted(kinds, key=lambda p: (p.split("/")[0], p)) if kinds[p] != "corrupt"]
        assert list(file.attrs["class_names"]) == ["blue", "green", "red"]
        labels = file["Y"][:].argmax(1)
        assert labels.tolist() == [["blue", "green", "red"].index(p.split("/")[0]) for p in paths]
        assert file["frame_counts"][:].tolist() == [10 if kinds[p] == "short" else 30 for p in paths]
        x = file["X"][:]
    # The class colour survives: each clip's mean is its class colour with the white bar
    # (8 of 64 columns) mixed in, within codec and scaling error.
    for clip, path in zip(x, paths):
        colour = np.array(COLOURS[path.split("/")[0]])
        if kinds[path] != "gray":
            assert np.abs(clip.mean(axis=(0, 2, 3)) - (colour * 7 / 8 + 255 / 8)).max() < 10, path
    inspect = run_cli("inspect", out)
    assert inspect.returncode == 0 and "class counts  blue: 4, green: 5, red: 5" in inspect.stdout
    assert not list(tmp_path.glob("videos.h5.parts-*"))  # parts removed after the join


def test_skip_short_and_strict(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "strict.h5"
    result = run_cli("convert", root, out, "--frames", 16, "--size", 12, 16, "--short", "skip", "--strict")
    assert result.returncode == 1
    assert "green/green_short.mp4: 10 frames, fewer than 16" in result.stdout
    assert describe(out).sample_count == 13


class Interrupted(BaseException):
    """Not an Exception, so nothing on the way catches it, as with KeyboardInterrupt."""


def test_resume_keeps_completed_parts(tree, tmp_path, monkeypatch):
    root, _ = tree
    import distributed_h5.convert as convert_module

    out = tmp_path / "resumed.h5"
    calls, interrupt = [], True
    real_decode = convert_module.decode

    def failing_decode(path, **kwargs):
        calls.append(str(path))
        if len(calls) == 6 and interrupt:
            raise Interrupted  # like Ctrl-C or a kill, in the second part
        return real_decode(path, **kwargs)

    monkeypatch.setattr(convert_module, "decode", failing_decode)
    try:
        convert_module.convert(root, out, frames=4, size=(12, 16), part_videos=4, progress=False)
    except Interrupted:
        pass
    else:
        pytest.fail("the interruption did not reach the caller")
    assert not out.exists()  # no half-written output that looks valid
    parts = list(tmp_path.glob("resumed.h5.parts-*/part-*.h5"))
    assert [p.name for p in parts] == ["part-000000.h5"]
    calls.clear()
    interrupt = False
    summary = convert_module.convert(root, out, frames=4, size=(12, 16), part_videos=4, progress=False, resume=True)
    assert summary.converted == 14 and len(calls) == 15 - 4  # the first part was not decoded again
    assert describe(out).sample_count == 14


def test_csv_input(tree, tmp_path):
    root, _ = tree
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nred/red_1.mp4,warm\nblue/blue_2.mp4,cold\ngreen/green_0.mp4,cold\n")
    out = tmp_path / "csv.h5"
    result = run_cli("convert", root, out, "--frames", 4, "--size", 12, 16, "--classes-from", table)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as file:
        assert list(file.attrs["class_names"]) == ["cold", "warm"]
        assert file["Y"][:].argmax(1).tolist() == [1, 0, 0]
