"""The command line: ordinary mistakes give one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from distributed_h5 import DatasetError, describe


def run_cli(*args, env=None, timeout=300):
    environment = dict(os.environ, **(env or {}))
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: the CLI itself keeps TensorFlow quiet
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=timeout)


def bad_labels(path):
    """12 clips whose Y rows 3, 7 and 8 are not one-hot."""
    y = np.eye(3, dtype="u1")[np.arange(12) % 3]
    y[3] = 0
    y[7] = [1, 1, 0]
    y[8] = [0, 2, 0]
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=np.zeros((12, 2, 1, 8, 8), dtype="u1"))
        file.create_dataset("Y", data=y)
        file.attrs["sample_count"] = 12
    return path


def test_labels_are_validated_at_open_and_reported_by_row(tmp_path):
    path = bad_labels(tmp_path / "labels.h5")
    assert describe(path).sample_count == 12  # the layout alone is fine
    with pytest.raises(DatasetError) as caught:
        describe(path, labels=True)
    assert str(caught.value) == (f"{path}: row 3 of 'Y' is [0, 0, 0], expected one-hot (a single 1, the rest 0); "
                                 "3 bad row(s) of the 12 in use: 3, 7, 8")


def test_train_reports_bad_labels_in_one_line_before_building_a_model(tmp_path):
    path = bad_labels(tmp_path / "labels.h5")
    result = run_cli("train", path, "--epochs", 1, "--batch-size", 2, "--checkpoint-dir", tmp_path / "ckpt")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"distributed-h5 train: error: {path}: row 3 of 'Y' is [0, 0, 0], expected one-hot (a single 1, the rest 0); "
        "3 bad row(s) of the 12 in use: 3, 7, 8")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ckpt").exists()  # stopped before anything was built or written
