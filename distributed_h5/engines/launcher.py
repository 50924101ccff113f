"""Where this process stands in the job: the one place rank and size come from.

Imports no TensorFlow, Horovod or MPI: it asks Horovod and mpi4py only when the program has
already imported and initialised them, and otherwise reads the launcher's variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from ..data.sharding import check_rank

# (rank, size, local rank) variables of each launcher, in the order they are trusted. A pair
# counts only when both its rank and size variables are set. SLURM_STEP_NUM_TASKS, not
# SLURM_NTASKS: a batch script has SLURM_PROCID=0 and the job's task count, yet it is one process.
LAUNCHER_VARIABLES = (
    ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),                          # horovodrun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI's mpirun
    ("PMIX_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),                          # srun --mpi=pmix
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),                                     # MPICH's hydra
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),                       # any srun step
)


def launcher_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int, str] | None:
    """``(rank, size, local_rank, rank_variable)`` that the launcher announced in ``environ``
    (default ``os.environ``), or ``None`` when no launcher did."""
    environ = os.environ if environ is None else environ
    for rank_name, size_name, local_name in LAUNCHER_VARIABLES:
        if rank_name in environ and size_name in environ:
            try:
                rank, size = int(environ[rank_name]), int(environ[size_name])
                local = int(environ.get(local_name, 0))
            except ValueError as exc:
                raise ValueError(f"{rank_name}, {size_name} and {local_name} must be integers. Received: "
                                 f"{environ[rank_name]!r}, {environ[size_name]!r}, {environ.get(local_name)!r}") from exc
            check_rank(rank, size)
            return rank, size, local, rank_name
    return None


def _initialised_engine(environ: Mapping[str, str] | None) -> tuple[str, int, int, int] | None:
    """``(name, rank, size, local_rank)`` of Horovod or MPI when the program has initialised one."""
    hvd = sys.modules.get("horovod.tensorflow")
    if hvd is not None and hvd.is_initialized():
        return "Horovod", hvd.rank(), hvd.size(), hvd.local_rank()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        comm = mpi.COMM_WORLD
        # MPI has no local rank without a collective call; the launcher's is the same number.
        launched = launcher_world(environ)
        return "MPI", comm.Get_rank(), comm.Get_size(), launched[2] if launched else 0
    return None


def _check_agreement(engine: str, size: int, environ: Mapping[str, str] | None) -> None:
    launched = launcher_world(environ)
    if launched and size == 1 < launched[1]:
        raise RuntimeError(
            f"the launcher started {launched[1]} tasks ({launched[3]}) but {engine} sees one process, so every task "
            f"would act as rank 0 of 1: launch with `srun --mpi=pmix` (not pmi2 or none), mpirun or horovodrun")


def world(rank: int | None = None, size: int | None = None, *, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's ``(rank, size)``.

    Explicit values win (that is how tests simulate 8 ranks in one process). Otherwise, in
    order: Horovod's, if ``horovod.tensorflow`` is imported and initialised; MPI's, if
    ``mpi4py.MPI`` is imported and initialised; the launcher's variables (``LAUNCHER_VARIABLES``,
    read from ``environ``, default ``os.environ``); else ``(0, 1)``.

    Raises RuntimeError when the launcher started several tasks but Horovod or MPI sees one
    process (``srun`` without ``--mpi=pmix``): each would otherwise believe it is rank 0 of 1.

    Example:
        >>> world(environ={"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"})
        (1, 2)
    """
    if rank is None and size is None:
        engine = _initialised_engine(environ)
        if engine is not None:
            _check_agreement(engine[0], engine[2], environ)
            return engine[1], engine[2]
        launched = launcher_world(environ)
        return (launched[0], launched[1]) if launched else (0, 1)
    if rank is None or size is None:
        raise ValueError(f"pass both rank and size, or neither. Received: rank={rank!r}, size={size!r}")
    check_rank(rank, size)
    return int(rank), int(size)


def local_rank(*, environ: Mapping[str, str] | None = None) -> int:
    """This process's rank among those on its node (to pick its GPU): Horovod's when it is
    initialised, else the launcher's, else 0."""
    engine = _initialised_engine(environ)
    if engine is not None and engine[0] == "Horovod":
        return engine[3]
    launched = launcher_world(environ)
    return launched[2] if launched else 0


def mpi_comm(*, environ: Mapping[str, str] | None = None):
    """``mpi4py``'s ``COMM_WORLD`` when the launcher started several tasks, else ``None``
    without importing MPI (so a single process needs neither mpi4py nor an MPI library).

    Raises RuntimeError when mpi4py is missing, when srun started several tasks without MPI's
    wire-up (``--mpi=none``), or when MPI sees one process where the launcher started several.
    """
    launched = launcher_world(environ)
    if launched is None or launched[1] == 1:
        return None
    if launched[3] == "SLURM_PROCID":
        # Plain srun (--mpi=none): MPI_Init would abort each task, or make each a job of one.
        raise RuntimeError(
            f"the launcher started {launched[1]} tasks (SLURM_PROCID) without MPI's wire-up (no PMIX_RANK), so every "
            "task would act as rank 0 of 1: launch with `srun --mpi=pmix` (not pmi2 or none), mpirun or horovodrun")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"the launcher started {launched[1]} tasks but mpi4py is not importable: {exc}") from exc
    _check_agreement("MPI", MPI.COMM_WORLD.Get_size(), environ)
    return MPI.COMM_WORLD
