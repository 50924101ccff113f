"""The JAX engine: Keras 3 on JAX across processes, a :class:`~distributed_h5.engines.collective.Collective`.

Imports JAX (and Keras, which must run on its JAX backend: ``KERAS_BACKEND=jax`` before
Keras is first imported). Each process feeds its own rows of every global batch;
``keras.distribution.DataParallel`` over all processes' devices makes the train step one
XLA program over the global batch, so gradients, BatchNorm batch statistics and training
metrics are global inside the compiled step (XLA reduces them: NCCL on GPUs, Gloo between
CPU processes). The step needs no gradient hook, and jit_compile stays on.

What one process does alone (rank 0 loading and saving checkpoints, each rank evaluating its
own validation shard, which may have one batch fewer than another's) cannot touch the
distributed variables: writing one is a collective in JAX. It is done on a process-local
:class:`~distributed_h5.replicas.HostModel`, a copy refreshed from the replicated values.

Call :func:`init` (or ``distributed_h5.init_engine("jax")``) before building the model:
``jax.distributed.initialize`` must run before JAX computes anything.
"""

from __future__ import annotations

import pickle

import numpy as np

from .launcher import launcher_world


class JaxCollective:
    """JAX's multi-process collectives, as :mod:`distributed_h5.engines.collective` names them."""

    name = "jax"
    global_step = True  # the compiled step already computes over the global batch

    def __init__(self, jax, distribution, local_rank: int = 0):
        from jax.experimental import multihost_utils

        self.jax, self.distribution, self._hosts = jax, distribution, multihost_utils
        self.rank, self.size, self.local_rank = jax.process_index(), jax.process_count(), local_rank

    # --- inside the compiled step: XLA already reduces over the global batch -------------
    def average_gradients(self, grads):
        return list(grads)

    def sum_in_step(self, tensor):
        return tensor

    # --- on the host --------------------------------------------------------------
    def broadcast_variables(self, variables, root=0):
        """Give every process ``root``'s values, laid out replicated over every device."""
        self.place(variables, self.broadcast_arrays([np.asarray(v.value) for v in variables], root))

    def place(self, variables, values) -> None:
        """Every process: assign ``values`` (the same on every process) to ``variables``.

        Keras variables created before the distribution was set live on one local device;
        this is where they move onto the distribution's replicated layout."""
        from .. import keras_internals

        for variable, value in zip(variables, values):
            keras_internals.lay_out(variable, self.distribution)
            variable.assign(value)

    def release(self, variables) -> None:
        """This process alone: ``variables`` (laid out by :meth:`place`, or made under the
        distribution) become plain arrays on this process's device again, each holding its
        local replica of the replicated value. No collective: run after the last step."""
        from .. import keras_internals

        for variable in variables:
            if getattr(variable, "_layout", None) is None:  # never distributed
                continue
            local = variable.value.addressable_data(0)  # replicated: every device holds the whole value
            keras_internals.lay_out_locally(variable)
            variable.assign(local)

    def broadcast_arrays(self, arrays, root=0):
        if self.size == 1 or not arrays:
            return [np.asarray(a) for a in arrays]
        shapes = [np.shape(a) for a in arrays]
        out = self._hosts.broadcast_one_to_all([np.asarray(a) for a in arrays], is_source=self.rank == root)
        return [np.asarray(o).reshape(shape) for o, shape in zip(out, shapes)]

    def broadcast_object(self, value, root=0):
        if self.size == 1:
            return value
        data = np.frombuffer(pickle.dumps(value), dtype=np.uint8) if self.rank == root else np.zeros(0, np.uint8)
        length = int(self.broadcast_arrays([np.array(data.size, dtype=np.int64)], root)[0])
        padded = np.zeros(length, dtype=np.uint8)
        if self.rank == root:
            padded[:] = data
        return pickle.loads(self.broadcast_arrays([padded], root)[0].tobytes())

    def _gather(self, arrays):
        # float64 stays float64 only with jax_enable_x64; reduce in float32/int32 otherwise
        return [np.asarray(g) for g in self._hosts.process_allgather([np.asarray(a) for a in arrays])]

    def sum(self, arrays):
        if self.size == 1:
            return [np.asarray(a) for a in arrays]
        return [g.sum(axis=0).astype(np.asarray(a).dtype) for g, a in zip(self._gather(arrays), arrays)]

    def mean(self, arrays):
        if self.size == 1:
            return [np.asarray(a) for a in arrays]
        return [g.mean(axis=0).astype(np.asarray(a).dtype) for g, a in zip(self._gather(arrays), arrays)]

    def max(self, value):
        if self.size == 1:
            return int(value)
        return int(self._gather([np.array(int(value), dtype=np.int32)])[0].max())

    def barrier(self):
        if self.size > 1:
            self._hosts.sync_global_devices("distributed_h5.barrier")


_collective: list = []


def init() -> JaxCollective:
    """Join the job's processes (once per process) and return the collective.

    Under ``mpirun`` or ``srun`` with more than one process, ``jax.distributed.initialize()``
    finds the coordinator and this process's id from the launcher; between CPU processes the
    collectives go through Gloo. Its ``distribution`` is a ``keras.distribution.DataParallel``
    over every process's devices, each process feeding its own rows of each global batch;
    ``train_model`` sets it, and moves the model onto it with rank 0's values.

    Raises:
        RuntimeError: Keras is not on its JAX backend, JAX is not installed, or JAX already
            computed something in this process before it could join the others.
    """
    if _collective:
        return _collective[0]
    try:
        import jax
    except ImportError as exc:
        raise RuntimeError(f"the jax engine needs JAX: run `make install` (scripts/install.sh). Import error: {exc}") \
            from exc
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"the jax engine needs KERAS_BACKEND=jax set before Keras is imported. "
                           f"Received: Keras backend {keras.backend.backend()!r}")
    launched = launcher_world()  # (rank, size, local rank, the launcher's rank variable), or None alone
    if launched is not None and launched[1] > 1 and not jax.distributed.is_initialized():
        if launched[3] == "HOROVOD_RANK":
            raise RuntimeError("the jax engine runs under mpirun or srun, which JAX finds on its own; horovodrun "
                               "starts the horovod engine (leave out --engine jax / DH5_ENGINE=jax)")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize()
        except RuntimeError as exc:
            if "before any JAX" in str(exc):
                raise RuntimeError("the jax engine must join the other processes before JAX computes anything: call "
                                   "distributed_h5.init_engine('jax') before building the model") from exc
            raise
    # Set by train_model (replicas.distributed), after the model was built: variables created
    # under a distribution must start equal on every process, and a model's need not.
    distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    _collective.append(JaxCollective(jax, distribution, launched[2] if launched else 0))
    return _collective[0]
