"""The Horovod engine: a :class:`~distributed_h5.engines.collective.Collective` over ``horovod.tensorflow``.

Imports TensorFlow and Horovod (when :func:`init` is called). ``horovod.tensorflow.keras``
does not work under Keras 3 (``'Variable' object has no attribute 'ref'``, horovod issue
4290), so this module uses the low-level ``horovod.tensorflow`` collectives, which do.
Every collective here is called in the same order on every rank.
"""

from __future__ import annotations

import copy
import os

import numpy as np


class HorovodCollective:
    """Horovod's collectives, as :mod:`distributed_h5.engines.collective` names them."""

    name = "horovod"
    global_step = False  # each rank's step is its own batch; gradients are averaged by allreduce

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

    def broadcast_arrays(self, arrays, root=0):
        return [np.asarray(a) for a in self.hvd.broadcast_object([np.asarray(a) for a in arrays], root_rank=root)]

    def place(self, variables, values):  # each rank's variables are its own: a plain assign
        for variable, value in zip(variables, values):
            variable.assign(value)

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

    def release(self, variables):
        pass  # each rank's variables are its own throughout


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


# --- Elastic training ---------------------------------------------------------------------
# horovod.tensorflow.keras.elastic does not work under Keras 3 (it is built on tf.keras), and
# horovod.tensorflow.elastic.run only recognises errors of ops named HorovodAllreduce,
# HorovodAllgather and HorovodBroadcast (not the grouped allreduce of the train step). These
# are the same mechanics on horovod.common.elastic: a State that commits in memory, and
# run_fn, which on a lost rank restores the last commit, re-initialises Horovod with the ranks
# that remain (or joined) and calls the function again after synchronising the state.


def elastic_state(model):
    """A :class:`horovod.common.elastic.State` holding ``model``'s weights and optimizer
    state (:func:`~distributed_h5.replicas.state_variables`) and ``progress``, where training
    stands (a picklable dict; None until ``train_model`` first commits)."""
    import horovod.tensorflow as hvd
    from horovod.common.elastic import State

    from ..replicas import broadcast_state, state_variables

    class ElasticState(State):
        """What a lost rank rolls every rank back to; new ranks receive it by broadcast."""

        def __init__(self):
            self.model, self.progress = model, None
            model.optimizer.build(model.trainable_variables)
            super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
            self.save()

        def save(self):
            self._saved = ([np.array(v.numpy()) for v in state_variables(self.model)], copy.deepcopy(self.progress))

        def restore(self):
            values, progress = self._saved
            for variable, value in zip(state_variables(self.model), values):
                variable.assign(value)
            self.progress = copy.deepcopy(progress)

        def sync(self):
            # Rank 0's last commit to every rank: survivors all restored the same one, and a
            # new rank holds only its fresh model. Rank 0 is a rank that was there before
            # (Horovod keeps the hosts it had first in the order).
            self.restore()
            broadcast_state(self.model, HorovodCollective(hvd))
            self.progress = hvd.broadcast_object(self.progress, root_rank=0)
            self.save()

    return ElasticState()


def elastic_run(func):
    """``func(state, ...)`` run elastically: Horovod's ``run_fn`` with errors of the package's
    collectives (any Horovod op, the grouped allreduce included) treated as a lost rank."""
    import horovod.tensorflow as hvd
    import tensorflow as tf
    from horovod.common.elastic import run_fn
    from horovod.common.exceptions import HorovodInternalError

    def wrapper(state, *args, **kwargs):
        try:
            return func(state, *args, **kwargs)
        except tf.errors.OpError as exc:
            if "Horovod" in str(exc):
                raise HorovodInternalError(exc) from exc
            raise

    def reset():
        hvd.shutdown()
        hvd.init()

    return run_fn(wrapper, reset)


def elastic_launch() -> bool:
    """Whether this process was started by ``horovodrun`` in elastic mode."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"
