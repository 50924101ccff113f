"""Where this process stands in the job: the one place rank and size come from."""

from __future__ import annotations

import sys

from .sharding import check_rank


def world(rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """This process's ``(rank, size)``.

    Explicit values win (that is how tests simulate 8 ranks in one process). Otherwise
    Horovod's, if ``horovod.tensorflow`` is imported and initialised; otherwise ``(0, 1)``.
    """
    if rank is None and size is None:
        hvd = sys.modules.get("horovod.tensorflow")
        if hvd is not None and hvd.is_initialized():
            return hvd.rank(), hvd.size()
        return 0, 1
    if rank is None or size is None:
        raise ValueError(f"pass both rank and size, or neither. Received: rank={rank!r}, size={size!r}")
    check_rank(rank, size)
    return int(rank), int(size)
