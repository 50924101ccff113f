"""distributed-h5 convert under mpirun -np 2: the same file as one process (raw clips, and
JPEG frames from videos and from rawframes folders), then trainable."""

import os
import subprocess
import sys

import h5py
import numpy as np

from ..videos import make_tree, write_rawframes
from .conftest import horovodrun_env, report, train


def convert(root, out, *launcher, options=()):
    # Parts of 4 videos, so each of 2 ranks converts several of the 4 parts.
    command = [*launcher, sys.executable, "-m", "distributed_h5.cli", "convert", root, out, "--frames", "8",
               "--size", "24", "32", "--part-videos", "4", *options]
    return subprocess.run(list(map(str, command)), env=horovodrun_env(), capture_output=True, text=True, timeout=600)


MPIRUN = ["mpirun", "-np", "2", "--oversubscribe", "-x", "PATH"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def contents(path) -> dict:
    """Every dataset of an HDF5 file (groups walked), as arrays, and every attribute."""
    found = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            found[name] = item[()]
        found[f"{name}@"] = dict(item.attrs)
    with h5py.File(path, "r") as file:
        file.visititems(visit)
        found["@"] = dict(file.attrs)
    return found


def assert_same_file(a, b):
    first, second = contents(a), contents(b)
    assert sorted(first) == sorted(second)
    for name in first:
        if name.endswith("@"):
            assert sorted(first[name]) == sorted(second[name]), name
            for key in first[name]:
                np.testing.assert_array_equal(first[name][key], second[name][key], err_msg=f"{name}{key}")
        else:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_two_ranks_write_the_same_file_as_one_and_it_trains(tmp_path):
    root = tmp_path / "videos"
    kinds = make_tree(root)
    one = convert(root, tmp_path / "one.h5")
    two = convert(root, tmp_path / "two.h5", *MPIRUN)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("converted 14 video(s)") == 1  # rank 0 reports for the job
    assert "  blue/blue_corrupt.mp4: cannot be decoded" in two.stdout
    assert "converting on 2 rank(s): 100%" in two.stderr and "15/15" in two.stderr  # rank 0 counts both ranks
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "two.h5", "r") as b:
        for name in ("X", "Y", "source_paths", "frame_counts", "frame_rates", "groups"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        assert a.attrs["sample_count"] == b.attrs["sample_count"] == 14
        assert len(a["source_paths"]) == sum(kind != "corrupt" for kind in kinds.values())

    # The converted file trains through train_model on 2 ranks.
    train(2, "gloo", tmp_path / "two.h5", tmp_path / "trained", "--epochs", 1, "--batch-size", 2,
          "--validation-ratio", 0.25)
    assert report(tmp_path / "trained", 0)["epochs"] == [0]


def test_two_ranks_write_the_same_jpeg_file_as_one_from_videos_and_from_rawframes(tmp_path):
    """--codec jpeg: from mp4s (decoded, fitted, encoded) and from mmaction2 rawframes folders
    (JPEG bytes that already fit, copied as they are), 2 ranks give the file of one: every
    dataset and every attribute equal."""
    make_tree(tmp_path / "videos")
    write_rawframes(tmp_path / "frames")
    for source in ("videos", "frames"):
        one, two = tmp_path / f"{source}-one.h5", tmp_path / f"{source}-two.h5"
        for out, launcher in ((one, ()), (two, MPIRUN)):
            result = convert(tmp_path / source, out, *launcher, options=("--codec", "jpeg"))
            assert result.returncode == 0, result.stderr[-3000:]
        assert_same_file(one, two)
        with h5py.File(one, "r") as file:
            assert file["X"].attrs["codec"] == "jpeg" and file.attrs["sample_count"] == {"videos": 14, "frames": 4}[source]
