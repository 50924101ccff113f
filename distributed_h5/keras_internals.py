"""Every private Keras API the package uses, in one place, each with why. Imports Keras.

Keras keeps these names private, so a release may change them: ``pyproject.toml`` pins Keras
below its next major version, and the tests exercise each one (``tests/unit``, ``tests/parallel``).
A new use of a Keras internal goes here, not inline.
"""

from __future__ import annotations

import keras

PINNED = "keras>=3.0,<4"  # what pyproject.toml requires, because of the names below


def loss_tracker(model):
    """The running mean of the epoch's loss (``Trainer._loss_tracker``): read every few steps to
    stop on a non-finite loss without converting every step's logs (a device sync per step)."""
    return model._loss_tracker


def flatten_layers(model, include_self: bool = False) -> list:
    """Every layer, nested models included, in a fixed order (``Layer._flatten_layers``): to find
    BatchNormalization layers to synchronise and random layers to key by sample."""
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def seed_generators(layer) -> list:
    """The layer's own ``SeedGenerator``\\ s (``Layer._seed_generators``): which draws are a model's."""
    return list(getattr(layer, "_seed_generators", ()))


def batchnorm_moments(layer, inputs, mask):
    """``BatchNormalization._moments``: the batch statistics, which SyncBatchNormalization
    replaces by global ones (the one method to override; its call() is public behaviour)."""
    return keras.layers.BatchNormalization._moments(layer, inputs, mask)


def reduction_axes(layer) -> list[int]:
    """``BatchNormalization._reduction_axes``: the axes its statistics reduce over."""
    return list(layer._reduction_axes)


def has_learning_rate_schedule(optimizer) -> bool:
    """Whether the optimizer's rate is a ``LearningRateSchedule`` (kept in ``_learning_rate``;
    the public ``learning_rate`` gives the current value and cannot be set then)."""
    return isinstance(getattr(optimizer, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule)


def model_variable_list(model) -> list:
    """The model's own list of non-trainable variables (``Layer._non_trainable_variables``), to
    which randomness.SampleKeyed adds its keys within a fit, so that JAX's step takes them as state."""
    return model._non_trainable_variables


def backend_random():
    """The backend's random module (``keras.src.backend.<backend>.random``), whose functions
    layers call by name at trace time: randomness.SampleKeyed swaps them within a fit."""
    from keras.src import backend

    return backend.random


def lay_out(variable, distribution) -> None:
    """``Variable._layout`` on JAX: a variable created before the distribution was set lives on
    one device; giving it the distribution's layout makes its next assign place it there."""
    if getattr(variable, "_layout", None) is None:
        variable._layout = distribution.get_variable_layout(variable).backend_layout


def lay_out_locally(variable) -> None:
    """The reverse of :func:`lay_out`: with no ``Variable._layout`` the next assign leaves the
    value where it is (this process's device), as for a variable made with no distribution."""
    variable._layout = None
