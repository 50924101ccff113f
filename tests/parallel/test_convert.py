"""distributed-h5 convert under mpirun -np 2: the same file as one process, then trainable."""

import os
import subprocess
import sys

import h5py
import numpy as np

from ..videos import make_tree
from .conftest import horovodrun_env, report, train


def convert(root, out, *launcher):
    # Parts of 4 videos, so each of 2 ranks converts several of the 4 parts.
    command = [*launcher, sys.executable, "-m", "distributed_h5.cli", "convert", root, out, "--frames", "8",
               "--size", "24", "32", "--part-videos", "4"]
    return subprocess.run(list(map(str, command)), env=horovodrun_env(), capture_output=True, text=True, timeout=600)


def test_two_ranks_write_the_same_file_as_one_and_it_trains(tmp_path):
    root = tmp_path / "videos"
    kinds = make_tree(root)
    one = convert(root, tmp_path / "one.h5")
    mpirun = ["mpirun", "-np", "2", "--oversubscribe", "-x", "PATH"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    two = convert(root, tmp_path / "two.h5", *mpirun)
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
