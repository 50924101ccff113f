"""The Horovod adapter for Keras 3: initialise, average gradients, broadcast, reduce metrics.

``horovod.tensorflow.keras`` does not work under Keras 3 (``'Variable' object has no
attribute 'ref'``, horovod issue 4290), so this module uses the low-level
``horovod.tensorflow`` collectives, which do. Every collective here is called in the
same order on every rank.
"""

from __future__ import annotations

import contextlib

import numpy as np


def init():
    """Initialise Horovod and pin this process's GPU; return ``horovod.tensorflow``.

    Raises:
        RuntimeError: Horovod is not installed or was built without TensorFlow.
    """
    try:
        import horovod.tensorflow as hvd
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeError(
            "Horovod with TensorFlow support is not importable; run `make install` (scripts/install.sh) "
            f"or load your cluster's Horovod. Import error: {exc}"
        ) from exc
    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        # One GPU per process, chosen by local rank; memory growth so ranks sharing a
        # node do not each reserve all of every GPU.
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    return hvd


def distribute_optimizer(model, hvd) -> None:
    """Make ``model``'s optimizer average gradients across ranks before applying them.

    The optimizer keeps its class, hyperparameters and state: its class is swapped for a
    subclass whose ``apply_gradients`` first runs one grouped allreduce (one collective
    per step, not one per variable), inside the compiled train step.
    """
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError("the model must be compiled with an optimizer. Received: model.optimizer=None")
    if getattr(optimizer, "_distributed_h5", False):
        return
    base = type(optimizer)

    class DistributedOptimizer(base):
        _distributed_h5 = True

        def apply_gradients(self, grads_and_vars):
            grads, variables = zip(*grads_and_vars)
            # Average, not sum: with equal batches on every rank this is the gradient of
            # the global batch, so results match one process with batch_size * size.
            grads = hvd.grouped_allreduce(list(grads), op=hvd.Average)
            return super().apply_gradients(zip(grads, variables))

    DistributedOptimizer.__name__ = DistributedOptimizer.__qualname__ = f"Distributed{base.__name__}"
    optimizer.__class__ = DistributedOptimizer
    # Horovod's collectives cannot be XLA-compiled (the XLA ops are not built), and Keras
    # turns XLA on by default on GPUs; force it off and drop any step traced before.
    model.jit_compile = False
    model.train_function = None


def undistribute_optimizer(model) -> None:
    """Give ``model``'s optimizer back its own class (undoes :func:`distribute_optimizer`)."""
    cls = type(model.optimizer)
    if getattr(cls, "_distributed_h5", False):
        model.optimizer.__class__ = cls.__bases__[0]
        model.train_function = None


@contextlib.contextmanager
def plain_optimizer(model):
    """Within the block the optimizer has its own class, so a saved model loads anywhere.

    The compiled train step is kept: it was traced with the averaging already in it.
    """
    cls = type(model.optimizer)
    if getattr(cls, "_distributed_h5", False):
        model.optimizer.__class__ = cls.__bases__[0]
    try:
        yield
    finally:
        model.optimizer.__class__ = cls


def broadcast_state(model, hvd, root_rank: int = 0) -> None:
    """Copy the model's weights and optimizer state from ``root_rank`` to every rank."""
    model.optimizer.build(model.trainable_variables)
    variables = [v.value for v in model.variables] + [v.value for v in model.optimizer.variables]
    hvd.broadcast_variables(variables, root_rank=root_rank)


def broadcast_object(value, hvd, root_rank: int = 0):
    """``value`` as ``root_rank`` has it, on every rank (for rank-0 decisions: resume epoch, paths)."""
    return hvd.broadcast_object(value, root_rank=root_rank)


def sum_metric_states(model, hvd) -> None:
    """Sum every metric's state variables across ranks, in the same order on every rank.

    Keras metrics keep sums and counts (a mean's total and count, a confusion matrix's
    cells), so after this ``metric.result()`` is what one process would compute on the
    union of all ranks' data.
    """
    variables = [v for metric in model.metrics for v in metric.variables]
    if not variables:
        return
    totals = hvd.grouped_allreduce([v.value for v in variables], op=hvd.Sum)
    for variable, total in zip(variables, totals):
        variable.assign(total)


def average_logs(logs: dict, hvd) -> dict:
    """Average numeric log values across ranks, reduced in sorted key order."""
    keys = sorted(key for key, value in logs.items() if np.ndim(value) == 0)
    if not keys:
        return logs
    values = np.array([float(logs[key]) for key in keys], dtype=np.float64)
    averaged = hvd.allreduce(values, op=hvd.Average, name="distributed_h5.average_logs").numpy()
    return {**logs, **dict(zip(keys, averaged.tolist()))}
