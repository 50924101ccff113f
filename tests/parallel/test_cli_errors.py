"""Under horovodrun, a user mistake is the same one line from every rank and a non-zero exit, not a hang."""

import sys

import h5py
import numpy as np

from .conftest import launch


def test_every_rank_reports_a_bad_file_in_one_line_and_the_job_fails(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=np.zeros((4, 2, 1, 8, 8), dtype="u1"))
        file.create_dataset("Y", data=np.eye(2, dtype="u1")[[0, 1, 0, 1]])
        file.attrs["sample_count"] = 9
    result = launch(2, "gloo", sys.executable, "-m", "distributed_h5.cli", "train", path, "--epochs", 1,
                    check=False, timeout=180)
    assert result.returncode != 0
    line = f"distributed-h5 train: error: {path}: attribute 'sample_count' is 9, expected an integer in [1, 4]"
    output = (result.stdout + result.stderr).splitlines()
    for rank in (0, 1):  # horovodrun prefixes each rank's lines with [rank]<stream>:
        said = [text for text in output if text.startswith(f"[{rank}]<stderr>:")]
        # A rank still waiting when the launcher ends the job is told "Terminated"; it has said its line by then.
        assert said in ([f"[{rank}]<stderr>:{line}"], [f"[{rank}]<stderr>:{line}", f"[{rank}]<stderr>:Terminated"])
        assert [text for text in output if text.startswith(f"[{rank}]<stdout>:")] == []
