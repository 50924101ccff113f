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


@pytest.mark.parametrize("args, line", [
    (["train", "f.h5", "--epochs", "0"],
     "distributed-h5 train: error: argument --epochs: must be an integer >= 1, got 0 (see distributed-h5 train --help)"),
    (["make-synthetic", "out.h5", "--samples", "many"],
     "distributed-h5 make-synthetic: error: argument --samples: must be an integer >= 1, got 'many' "
     "(see distributed-h5 make-synthetic --help)"),
    (["inspect"], "distributed-h5 inspect: error: the following arguments are required: file "
                  "(see distributed-h5 inspect --help)"),
    (["convert", "src", "out.h5", "--frames", "8", "--size", "4", "4", "--fit", "stretch"],
     "distributed-h5 convert: error: argument --fit: invalid choice: 'stretch' (choose from 'crop', 'pad') "
     "(see distributed-h5 convert --help)"),
    ([], "distributed-h5: error: the following arguments are required: command (see distributed-h5 --help)"),
])
def test_usage_mistakes_are_one_line_with_status_2(args, line):
    result = run_cli(*args)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")


def test_missing_input_file_is_one_line(tmp_path):
    result = run_cli("inspect", tmp_path / "nope.h5")
    assert (result.returncode, result.stderr) == (2, f"distributed-h5 inspect: error: {tmp_path}/nope.h5: no such file\n")


def test_version():
    from distributed_h5 import __version__

    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"distributed-h5 {__version__}\n")


def test_doctor_one_line_per_check_and_required_checks(tmp_path):
    from distributed_h5.doctor import CHECKS

    result = run_cli("doctor", "--require", "tensorflow,keras,horovod,gloo,mpi,locking", "--dir", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("distributed_h5 ")
    assert [line.split()[0] for line in lines[1:]] == list(CHECKS)
    found = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    import tensorflow as tf

    assert found["tensorflow"] == ["ok", f"{tf.__version__} (built with CUDA: {'yes' if tf.test.is_built_with_cuda() else 'no'})"]
    assert found["locking"][0] == "ok" and found["locking"][1].startswith(f"works in {tmp_path};")
    assert found["horovod"][1].startswith("0.28.1 with TensorFlow; controllers: gloo, mpi; NCCL: ")
    assert result.stderr == ""  # no TensorFlow start-up noise

    # A check that fails and was required: exit status 1, and the last line says which.
    missing = run_cli("doctor", "--require", "locking", "--dir", tmp_path / "absent")
    assert missing.returncode == 1
    assert missing.stdout.splitlines()[-1] == "missing what was required: locking"
    assert [line for line in missing.stdout.splitlines() if line.startswith("locking")][0].startswith(
        f"locking     no  not checked: cannot write in {tmp_path}/absent (No such file or directory)")

    unknown = run_cli("doctor", "--require", "horovod,cuda")
    assert (unknown.returncode, unknown.stderr) == (
        2, f"distributed-h5 doctor: error: --require takes names from {','.join(CHECKS)}. Received: cuda\n")


def test_no_tensorflow_noise_unless_asked_for(tmp_path):
    from distributed_h5.quiet import NOISE
    from distributed_h5.synthetic import make_synthetic

    path = make_synthetic(tmp_path / "tiny.h5", samples=24, frames=4, size=(12, 12), classes=2, progress=False)
    args = ("train", path, "--epochs", 1, "--batch-size", 4, "--width", 4, "--depth", 1, "--verbose", 0)
    quiet = run_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("summary: ranks=1 epochs=1 ")
    loud = run_cli(*args, env={"DH5_TF_LOG": "1"})  # the opt-in brings TensorFlow's own logs back
    assert loud.returncode == 0, loud.stderr
    assert "All log messages before absl::InitializeLog() is called" in loud.stderr
    assert sum(marker in loud.stderr for marker in NOISE) >= 2  # which others appear depends on the CPU
