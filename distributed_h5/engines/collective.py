"""The collective operations training needs, behind one small interface. Imports no framework.

``train_model``, the callbacks and the checkpoints talk to the other ranks only through a
:class:`Collective`. An engine implements it: :class:`distributed_h5.engines.horovod.HorovodCollective`
(TensorFlow backend) and :class:`distributed_h5.engines.jax.JaxCollective` (JAX backend, whose
compiled step already computes over the global batch: ``global_step = True``, so its in-graph
calls are the identity). :class:`Single` is the one-process case, and tests use it (or a fake
of their own) to check the glue without launching ranks.

Two kinds of calls:

* **host calls** (``sum``, ``mean``, ``max``, ``broadcast_object``, ``barrier``) take and return
  numpy arrays or Python objects, outside the compiled step, and must be made in the same
  order on every rank;
* **in-graph calls** (``average_gradients``, ``sum_in_step``) run inside the compiled train
  step, on every rank in the same step.

While ``train_model`` runs, :func:`active` returns its collective, so that layers such as
:class:`distributed_h5.layers.SyncBatchNormalization` can reduce inside the step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import numpy as np

# The engines, and the Keras backend each runs on (KERAS_BACKEND).
BACKENDS = {"horovod": "tensorflow", "jax": "jax"}
ENGINES = tuple(BACKENDS)


class Collective(Protocol):
    """What an engine provides. ``rank``, ``size`` and ``local_rank`` are ints."""

    name: str
    rank: int
    size: int
    local_rank: int
    global_step: bool  # the compiled step computes over the global batch (no gradient hook, no moving-state averaging)

    def average_gradients(self, grads: list) -> list: ...  # in-graph, one grouped reduction
    def sum_in_step(self, tensor): ...  # in-graph sum across ranks (differentiable)
    def broadcast_variables(self, variables: list, root: int = 0) -> None: ...
    def broadcast_object(self, value: Any, root: int = 0) -> Any: ...
    def broadcast_arrays(self, arrays: list[np.ndarray], root: int = 0) -> list[np.ndarray]: ...
    def place(self, variables: list, values: list[np.ndarray]) -> None: ...  # assign values the same on every rank
    def sum(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...
    def mean(self, arrays: list[np.ndarray]) -> list[np.ndarray]: ...
    def max(self, value: int) -> int: ...
    def barrier(self) -> None: ...
    # After the last step, this process alone: ``variables`` are local to this process again
    # (what a global_step engine laid out across processes); a no-op for the others.
    def release(self, variables: list) -> None: ...


class Single:
    """The collective of a job with one process: every reduction is the identity."""

    name = "single"
    rank, size, local_rank = 0, 1, 0
    global_step = False

    def average_gradients(self, grads):
        return list(grads)

    def sum_in_step(self, tensor):
        return tensor

    def broadcast_variables(self, variables, root=0):
        pass

    def broadcast_object(self, value, root=0):
        return value

    def broadcast_arrays(self, arrays, root=0):
        return [np.asarray(a) for a in arrays]

    def place(self, variables, values):
        for variable, value in zip(variables, values):
            variable.assign(value)

    def sum(self, arrays):
        return [np.asarray(a) for a in arrays]

    def mean(self, arrays):
        return [np.asarray(a) for a in arrays]

    def max(self, value):
        return int(value)

    def barrier(self):
        pass

    def release(self, variables):
        pass


_active: list = []


def active():
    """The collective of the ``train_model`` running in this process, or None."""
    return _active[-1] if _active else None


@contextlib.contextmanager
def activate(collective):
    """Make ``collective`` the :func:`active` one within the block."""
    _active.append(collective)
    try:
        yield collective
    finally:
        _active.pop()


def average_logs(logs: dict, collective) -> dict:
    """Numeric log values averaged across ranks, reduced in sorted key order."""
    keys = sorted(key for key, value in logs.items() if np.ndim(value) == 0)
    if not keys:
        return dict(logs)
    values = np.array([float(logs[key]) for key in keys], dtype=np.float64)
    averaged = collective.mean([values])[0]
    return {**logs, **dict(zip(keys, averaged.tolist()))}
