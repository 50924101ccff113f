"""Layers for data-parallel training: :class:`SyncBatchNormalization`. Imports Keras.

Batch statistics computed per rank are statistics of a small batch: video models fit
4-16 clips per GPU, where BatchNormalization's per-batch mean and variance are noisy and
training with unsynchronised BN is measurably worse than with the same global batch on
one device. Synchronised BN computes them over the global batch, across ranks, inside the
compiled train step.

Horovod's own ``SyncBatchNormalization`` subclasses tf.keras internals and does not work
with Keras 3, and Keras 3's ``synchronized=True`` works only inside a ``tf.distribute``
strategy; this one reduces through the collective of the running ``train_model``
(:func:`distributed_h5.engines.collective.active`). On the JAX engine a global batch is one
sharded array, so plain BatchNormalization there is already global.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from . import keras_internals
from .engines import collective as collectives


def global_moments(layer, inputs, mask):
    """Mean and variance of ``inputs`` over the reduction axes and over every rank's batch.

    The mean is the sum over ranks divided by the count over ranks; the variance is the
    summed squared deviation from that global mean over the same count (two reductions,
    the same formula one process uses, so 2 ranks x b equal 1 rank x 2b). With one rank, or
    outside ``train_model``, or with a mask, it is BatchNormalization's own computation.
    """
    group = collectives.active()
    if mask is not None or group is None or group.size == 1:
        return keras_internals.batchnorm_moments(layer, inputs, mask)
    axes = keras_internals.reduction_axes(layer)
    x = ops.cast(inputs, "float32")
    count = ops.cast(ops.prod(ops.stack([ops.shape(x)[axis] for axis in axes])), "float32")
    totals = group.sum_in_step(ops.concatenate([ops.sum(x, axis=axes), ops.reshape(count, (1,))]))
    count = totals[-1]
    mean = totals[:-1] / count
    shape = [1] * len(x.shape)
    for axis in range(len(x.shape)):
        if axis not in axes:
            shape[axis] = x.shape[axis]
    deviations = ops.sum(ops.square(x - ops.reshape(mean, shape)), axis=axes)
    variance = group.sum_in_step(deviations) / count
    return ops.cast(mean, inputs.dtype), ops.cast(variance, inputs.dtype)


@keras.saving.register_keras_serializable(package="distributed_h5")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training statistics cover the global batch.

    A drop-in replacement (same arguments, weights and inference behaviour). During
    training under :func:`distributed_h5.train_model` on several ranks, each layer adds two
    sum-allreduces to the step (sums and counts, then squared deviations); gradients flow
    through them, so 2 ranks x batch b train exactly as 1 rank x batch 2b. On one rank it
    is BatchNormalization. Use it when the per-rank batch is small (video: 4-16 clips).

    A model built with this class needs ``distributed_h5`` to load. To keep checkpoints
    loadable by plain Keras, build with ``keras.layers.BatchNormalization`` and pass
    ``sync_batchnorm=True`` to ``train_model`` instead: the same synchronisation, plain layers.

    Example:
        >>> x = SyncBatchNormalization(momentum=0.9)(keras.Input((8, 8, 4)))  # doctest: +SKIP
    """

    def _moments(self, inputs, mask):
        return global_moments(self, inputs, mask)


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer in ``model``, nested models included."""
    return [layer for layer in keras_internals.flatten_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def synchronized_batchnorm(model):
    """Within the block, ``model``'s BatchNormalization layers compute global statistics
    (as :class:`SyncBatchNormalization`). The layers keep their class, configuration and
    weights, so a model saved inside the block loads with plain Keras; at exit they are
    exactly as before. Compiled step functions are dropped on entry and exit."""
    layers = [layer for layer in batchnorm_layers(model) if not isinstance(layer, SyncBatchNormalization)]
    for layer in layers:
        object.__setattr__(layer, "_moments", lambda inputs, mask, layer=layer: global_moments(layer, inputs, mask))
    model.train_function = None
    try:
        yield len(layers)
    finally:
        for layer in layers:
            object.__delattr__(layer, "_moments")
        model.train_function = None
