"""The engines boundary: how the processes of a job talk, behind one small interface.

Imports no framework until an engine starts. :mod:`.collective` is the interface (the
``Collective`` protocol, ``Single`` for one process, the engine -> Keras backend map);
:mod:`.horovod` and :mod:`.jax` implement it; :mod:`.launcher` says which rank and how many
this process is, from the runtime or the launcher's variables (the one place that decides).
Everything above this package asks the collective object, never which engine it is.
"""

from __future__ import annotations

from .collective import BACKENDS, ENGINES, Collective, Single

__all__ = ["BACKENDS", "ENGINES", "Collective", "Single", "for_training", "init_engine"]


def init_engine(engine: str | None = None):
    """Join the job's processes and return the collective of ``engine``.

    ``engine`` is ``"horovod"`` or ``"jax"``; by default, the one that fits Keras' backend
    (``KERAS_BACKEND``). With JAX, call it before building the model (see
    :func:`distributed_h5.engines.jax.init`); ``train_model`` calls it too, and a second call
    returns the same collective.
    """
    import keras

    backend = keras.backend.backend()
    if engine is None:
        engine = {value: key for key, value in BACKENDS.items()}.get(backend)
        if engine is None:
            raise ValueError(f"no engine runs on Keras backend {backend!r}: set KERAS_BACKEND to one of "
                             f"{sorted(BACKENDS.values())} before Keras is imported")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}. Received: engine={engine!r}")
    if backend != BACKENDS[engine]:
        raise ValueError(f"the {engine} engine needs KERAS_BACKEND={BACKENDS[engine]} set before Keras is imported. "
                         f"Received: Keras backend {backend!r}")
    if engine == "jax":
        from . import jax

        return jax.init()
    from . import horovod

    return horovod.init()


def for_training(engine: str | None = None, *, elastic: bool = False):
    """The collective ``train_model`` trains with: :class:`Single` for a job of one process on
    Keras' TensorFlow backend (every reduction the identity, no Horovod needed) unless elastic
    mode needs Horovod's; else :func:`init_engine`."""
    import keras

    from .launcher import world

    if engine in (None, "horovod") and not elastic and keras.backend.backend() == BACKENDS["horovod"] \
            and world()[1] == 1:
        return Single()
    return init_engine(engine)
