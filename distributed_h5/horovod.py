"""The Horovod engine: a :class:`~distributed_h5.collective.Collective` over ``horovod.tensorflow``.

Imports TensorFlow and Horovod (when :func:`init` is called). ``horovod.tensorflow.keras``
does not work under Keras 3 (``'Variable' object has no attribute 'ref'``, horovod issue
4290), so this module uses the low-level ``horovod.tensorflow`` collectives, which do.
Every collective here is called in the same order on every rank.
"""

from __future__ import annotations

import numpy as np


class HorovodCollective:
    """Horovod's collectives, as :mod:`distributed_h5.collective` names them."""

    name = "horovod"

    def __init__(self, hvd):
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    # --- inside the compiled step ---------------------------------------------------
    def average_gradients(self, grads):
        # One grouped allreduce per step, not one per variable. Average, not sum: with
        # equal batches on every rank this is the gradient of the global batch.
        present = [i for i, grad in enumerate(grads) if grad is not None]
        reduced = self.hvd.grouped_allreduce([grads[i] for i in present], op=self.hvd.Average)
        out = list(grads)
        for i, grad in zip(present, reduced):
            out[i] = grad
        return out

    def sum_in_step(self, tensor):
        # Horovod registers the gradient of a sum-allreduce as the sum-allreduce of the
        # upstream gradients, which is what a statistic shared by all ranks needs.
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    # --- on the host --------------------------------------------------------------
    def broadcast_variables(self, variables, root=0):
        self.hvd.broadcast_variables([getattr(v, "value", v) for v in variables], root_rank=root)

    def broadcast_object(self, value, root=0):
        return self.hvd.broadcast_object(value, root_rank=root)

    def _reduce(self, arrays, op, name):
        shapes = [np.shape(a) for a in arrays]
        arrays = [np.ascontiguousarray(a) for a in arrays]  # (0-d arrays become shape (1,))
        if not arrays:
            return []
        reduced = self.hvd.grouped_allreduce(arrays, op=op, name=name)
        # Horovod returns scalars as shape (1,): give every result its input's shape.
        return [np.asarray(r).reshape(shape) for r, shape in zip(reduced, shapes)]

    def sum(self, arrays):
        return self._reduce(arrays, self.hvd.Sum, "distributed_h5.sum")

    def mean(self, arrays):
        return self._reduce(arrays, self.hvd.Average, "distributed_h5.mean")

    def max(self, value):
        flag = np.array([int(value)], dtype=np.int32)
        return int(np.asarray(self.hvd.allreduce(flag, op=self.hvd.Max, name="distributed_h5.max"))[0])

    def barrier(self):
        self.hvd.allreduce(np.zeros(1, dtype=np.int32), name="distributed_h5.barrier")


def init() -> HorovodCollective:
    """Initialise Horovod, pin this process's GPU, and return its collective.

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
    return HorovodCollective(hvd)
