"""runtime.world and local_rank: which launcher's variables decide rank and size, with explicit environments."""

import os
import subprocess
import sys

import pytest

from distributed_h5.runtime import launcher_world, local_rank, mpi_comm, world

SRUN_PMIX_RANK1 = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
                   "PMIX_RANK": "1"}


@pytest.mark.parametrize("environ, expected", [
    ({}, (0, 1)),
    ({"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1"}, (3, 4)),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3"}, (2, 3)),
    (SRUN_PMIX_RANK1, (1, 4)),
    ({"PMI_RANK": "5", "PMI_SIZE": "6"}, (5, 6)),
    ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3"}, (2, 3)),
    # horovodrun inside an allocation: Horovod's variables win over the job's.
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, (1, 2)),
    # mpirun inside an allocation: Open MPI's win over SLURM's batch step.
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (1, 2)),
    # The batch script itself is one process, whatever the job's task count.
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}, (0, 1)),
    # A rank without a size is not a launch.
    ({"PMIX_RANK": "1"}, (0, 1)),
])
def test_world_from_the_launchers_variables(environ, expected):
    assert world(environ=environ) == expected


def test_explicit_rank_and_size_win():
    assert world(2, 8, environ=SRUN_PMIX_RANK1) == (2, 8)
    with pytest.raises(ValueError, match="pass both rank and size"):
        world(rank=1, environ={})


@pytest.mark.parametrize("environ, expected", [
    ({}, 0),
    ({"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1"}, 1),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}, 3),
    (SRUN_PMIX_RANK1, 1),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, 0),
])
def test_local_rank(environ, expected):
    assert local_rank(environ=environ) == expected


def test_launcher_world_names_its_source_and_rejects_nonsense():
    assert launcher_world(SRUN_PMIX_RANK1) == (1, 4, 1, "PMIX_RANK")
    with pytest.raises(ValueError, match="SLURM_PROCID, SLURM_STEP_NUM_TASKS and SLURM_LOCALID must be integers"):
        launcher_world({"SLURM_PROCID": "one", "SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(ValueError, match="rank"):
        launcher_world({"HOROVOD_RANK": "4", "HOROVOD_SIZE": "4"})


def test_mpi_comm_stays_out_of_mpi_for_one_task():
    assert mpi_comm(environ={}) is None
    assert mpi_comm(environ={"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_convert_refuses_when_mpi_sees_one_of_several_tasks(tmp_path):
    """What `srun` without --mpi=pmix looks like: SLURM says 2 tasks, MPI initialises alone.
    In a subprocess, so that MPI is never initialised in the test process."""
    environ = {**os.environ, "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}
    (tmp_path / "src").mkdir()
    result = subprocess.run([sys.executable, "-m", "distributed_h5.cli", "convert", tmp_path / "src", tmp_path / "out.h5",
                             "--frames", "8", "--size", "24", "32"], env=environ, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr == (
        "distributed-h5 convert: error: the launcher started 2 tasks (SLURM_PROCID) without MPI's wire-up (no PMIX_RANK), so "
        "every task would act as rank 0 of 1: launch with `srun --mpi=pmix` (not pmi2 or none), mpirun or horovodrun\n")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
