"""Random layers keyed by sample: what Dropout (or any layer's ``keras.random`` draw) does to a
clip is a function of (seed, epoch, sample index, layer), never of the batch it came in. Imports Keras.

Keras draws a layer's noise for the whole batch from the layer's ``SeedGenerator``, whose state
advances with every step. So the masks of a clip depend on the batch's shape and rows, the
step count and the generator's state: two ranks with batch 4 draw other masks than one process
with batch 8, every rank draws the same ones, and a resume (the state is not in a ``.keras``
file) draws others again. Within :class:`SampleKeyed` each row's noise is drawn from its own
key instead, made on the host from (seed, epoch, sample index) before every step, so that

* the union of the ranks' rows gets exactly the masks one process would give them, and
* a resume on any rank count and batch size continues with the masks of the uninterrupted run.

The layer's key is its position among the model's seed generators; a layer that draws twice
in one step (a layer called twice) draws the same numbers both times. Only the draws a random
layer makes by shape can be keyed row by row (``dropout``, ``uniform``, ``normal``,
``truncated_normal``): any other draw from a model's generator during training is refused.
"""

from __future__ import annotations

import keras
import numpy as np

from . import keras_internals

KEYED = ("dropout", "uniform", "normal", "truncated_normal")
REFUSED = ("categorical", "randint", "shuffle", "gamma", "binomial", "beta")
_MASK64 = (1 << 64) - 1


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on uint64: a bijection that scatters nearby inputs."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, epoch: int, samples) -> np.ndarray:
    """``(len(samples), 2)`` int32 keys, one per sample, a function of (seed, epoch, sample) only.

    >>> sample_keys(0, 1, [5, 7]).shape
    (2, 2)
    """
    samples = np.asarray(samples, dtype=np.uint64)
    run = _mix(np.uint64(seed & _MASK64) ^ _mix(np.uint64(epoch & _MASK64)))
    mixed = _mix(samples ^ run)
    return np.stack([(mixed >> np.uint64(32)), mixed & np.uint64(0xFFFFFFFF)], axis=1).astype(np.uint32).view(
        np.int32)


def is_keys(variable) -> bool:
    """Whether ``variable`` holds a :class:`SampleKeyed`'s keys (not the model's state)."""
    return getattr(variable, "distributed_h5_keys", False)


def seed_generators(model) -> list:
    """The model's seed generators, in the order of its layers (the same for the same architecture)."""
    found = []
    for layer in keras_internals.flatten_layers(model, include_self=True):
        for generator in keras_internals.seed_generators(layer):
            if all(generator is not other for other in found):
                found.append(generator)
    return found


class SampleKeyed:
    """Within the block, ``model``'s random layers draw each row's noise from that row's key.

    ``rows`` is the batch the compiled step sees: a rank's batch with per-rank steps
    (Horovod), the global batch with a step over every process (JAX, ``global_step``).
    Before each step, :meth:`set_rows` gives the samples of those rows, in row order.
    The compiled step functions are dropped on entry and exit, so they are traced with the
    keyed draws inside the block and without them after it.

    The keys are a variable the step reads. TensorFlow's traced step reads any variable;
    JAX's takes the model's variables as arguments and would freeze any other as a constant,
    so with ``in_model`` the keys join the model's non-trainable variables within the block
    (:func:`is_keys` tells them apart: they are in no checkpoint and no broadcast).
    """

    def __init__(self, model, seed: int, rows: int, enabled: bool = True, in_model: bool = False):
        self.model, self.seed, self.rows, self.in_model = model, seed, rows, in_model
        generators = seed_generators(model) if enabled else []
        self.ordinals = {id(generator): ordinal for ordinal, generator in enumerate(generators)}
        self.keys = None
        if generators:
            self.keys = keras.Variable(np.zeros((rows, 2), np.int32), dtype="int32", trainable=False,
                                       name="distributed_h5_sample_keys")
            self.keys.distributed_h5_keys = True
        self.originals: dict = {}

    @property
    def active(self) -> bool:
        return bool(self.ordinals)

    def set_rows(self, epoch: int, samples) -> None:
        samples = np.asarray(samples)
        if samples.shape != (self.rows,):
            raise ValueError(f"set_rows takes the {self.rows} samples of the step's rows. Received: {samples.shape}")
        self.keys.assign(sample_keys(self.seed, epoch, samples))

    def __enter__(self):
        if not self.active:
            return self
        module = keras_internals.backend_random()
        for name in KEYED + REFUSED:
            if hasattr(module, name):
                self.originals[name] = getattr(module, name)
                setattr(module, name, getattr(self, f"_{name}") if name in KEYED else self._refuse(name))
        if self.in_model:
            keras_internals.model_variable_list(self.model).append(self.keys)
        _drop_compiled_steps(self.model)
        return self

    def __exit__(self, *exc):
        module = keras_internals.backend_random()
        for name, original in self.originals.items():
            setattr(module, name, original)
        self.originals = {}
        if self.active:
            if self.in_model:
                keras_internals.model_variable_list(self.model).remove(self.keys)
            _drop_compiled_steps(self.model)

    # --- the keyed draws: each falls back to Keras' own for a generator not of this model ---

    def _ordinal(self, seed):
        return self.ordinals.get(id(seed)) if isinstance(seed, keras.random.SeedGenerator) else None

    def _refuse(self, name):
        original = self.originals[name]

        def draw(*args, **kwargs):
            if self._ordinal(kwargs.get("seed")) is not None:
                raise ValueError(f"a layer of {self.model.name!r} draws keras.random.{name} in training, which "
                                 "distributed_h5 cannot key by sample (only dropout, uniform, normal and "
                                 "truncated_normal): the data order would not decide its draws")
            return original(*args, **kwargs)

        return draw

    def _rows_of(self, shape, name):
        shape = tuple(shape)
        if not shape or shape[0] != self.rows:
            raise ValueError(f"a layer of {self.model.name!r} draws keras.random.{name} of shape {shape} in "
                             f"training, not one row per clip of the batch of {self.rows}: distributed_h5 keys "
                             "random layers by sample")
        return shape[1:]

    def _row_draws(self, ordinal, shape, name, draw_one):
        """``draw_one(row_shape, seed)`` for every row, from the row's key and the layer's ordinal."""
        row_shape = self._rows_of(shape, name)
        keys = self.keys.value
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            seeds = keys + tf.constant([ordinal, 0], dtype=keys.dtype)
            first = draw_one(row_shape, seeds[0])
            return tf.map_fn(lambda s: draw_one(row_shape, s), seeds,
                             fn_output_signature=tf.TensorSpec(row_shape, first.dtype))
        if backend == "jax":
            import jax

            raw = jax.vmap(lambda k: jax.random.fold_in(k, ordinal))(keys.astype("uint32"))
            return jax.vmap(lambda k: draw_one(row_shape, k))(raw)
        raise ValueError(f"random layers keyed by sample need Keras on TensorFlow or JAX. Received: {backend!r}")

    def _uniform(self, shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        ordinal = self._ordinal(seed)
        if ordinal is None:
            return self.originals["uniform"](shape, minval=minval, maxval=maxval, dtype=dtype, seed=seed)
        dtype = dtype or keras.config.floatx()
        return self._row_draws(ordinal, shape, "uniform",
                               lambda s, k: _backend_uniform(s, k, dtype) * (maxval - minval) + minval)

    def _normal(self, shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        ordinal = self._ordinal(seed)
        if ordinal is None:
            return self.originals["normal"](shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed)
        dtype = dtype or keras.config.floatx()
        return self._row_draws(ordinal, shape, "normal",
                               lambda s, k: _backend_normal(s, k, dtype, truncated=False) * stddev + mean)

    def _truncated_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        ordinal = self._ordinal(seed)
        if ordinal is None:
            return self.originals["truncated_normal"](shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed)
        dtype = dtype or keras.config.floatx()
        return self._row_draws(ordinal, shape, "truncated_normal",
                               lambda s, k: _backend_normal(s, k, dtype, truncated=True) * stddev + mean)

    def _dropout(self, inputs, rate, noise_shape=None, seed=None):
        ordinal = self._ordinal(seed)
        if ordinal is None:
            return self.originals["dropout"](inputs, rate, noise_shape=noise_shape, seed=seed)
        ops = keras.ops
        shape = tuple(inputs.shape)
        if noise_shape is not None:  # None entries take the input's size; 1s broadcast
            shape = tuple(s if n is None else n for s, n in zip(shape, noise_shape))
        uniform = self._row_draws(ordinal, shape, "dropout", lambda s, k: _backend_uniform(s, k, "float32"))
        keep = ops.cast(uniform >= rate, inputs.dtype)  # kept with probability 1 - rate, as Keras' own
        return inputs * keep / ops.cast(1.0 - rate, inputs.dtype)


def _backend_uniform(shape, key, dtype):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed=key, dtype=dtype)
    import jax

    return jax.random.uniform(key, shape, dtype=dtype)


def _backend_normal(shape, key, dtype, truncated: bool):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        draw = tf.random.stateless_truncated_normal if truncated else tf.random.stateless_normal
        return draw(shape, seed=key, dtype=dtype)
    import jax

    return (jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype=dtype) if truncated
            else jax.random.normal(key, shape, dtype=dtype))


def _drop_compiled_steps(model) -> None:
    # The traced steps captured the random functions as they were when they were traced.
    model.train_function = model.test_function = model.predict_function = None

