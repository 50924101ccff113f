"""Keep every rank's model replica identical, through a collective. Imports Keras.

* :func:`distributed` averages gradients inside the compiled step, for as long as a block
  runs, and then leaves the caller's optimizer and ``jit_compile`` (JAX: the Keras
  distribution and the variables' placement) exactly as it found them;
* :func:`broadcast_state` gives every rank rank 0's weights and optimizer state;
* :func:`average_moving_state` averages what each rank's forward pass updates on its own
  (BatchNormalization's moving mean and variance), so validation, checkpoints and the
  returned model are the same on every rank;
* :func:`sum_metric_states` makes metrics global (sums and counts across ranks);
* :class:`HostModel` is the model as one process alone may load, save and evaluate it.

An engine whose compiled step already computes over the global batch (the JAX engine,
``collective.global_step``) needs neither the gradient hook nor the moving-state averaging.
"""

from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def distributed(model, collective):
    """Within the block, ``model``'s optimizer averages gradients across ranks before applying them.

    The averaging wraps the outermost optimizer's ``apply_gradients`` (an attribute of this
    one optimizer, removed at exit), so under ``mixed_float16`` it is the *scaled* gradients
    of Keras' ``LossScaleOptimizer`` that are averaged: a step that overflows on any rank is
    non-finite on every rank, is skipped everywhere, and the loss scale stays equal.
    Horovod's collectives cannot be XLA-compiled, so ``jit_compile`` is off inside the block
    and restored after; the compiled step functions are dropped on entry and exit.
    """
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError("the model must be compiled with an optimizer. Received: model.optimizer=None")
    if collective.global_step:
        # XLA already averages over the global batch; the step needs the distribution set.
        # At exit the caller's distribution is back and every variable is this process's own
        # again (its local replica), so that a later predict or evaluate runs in one process.
        import keras

        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(collective.distribution)
        try:
            yield model
        finally:
            keras.distribution.set_distribution(previous)
            collective.release(_all_variables(model))
            _drop_compiled_steps(model)  # traced for the distributed variables
        return
    if "apply_gradients" in vars(optimizer):
        raise RuntimeError("the model's optimizer is already distributed (nested train_model?)")
    own_apply = optimizer.apply_gradients
    jit_compile = model.jit_compile

    def apply_gradients(grads_and_vars):
        grads, variables = zip(*grads_and_vars)
        return own_apply(zip(collective.average_gradients(list(grads)), variables))

    optimizer.apply_gradients = apply_gradients
    model.jit_compile = False
    _drop_compiled_steps(model)
    try:
        yield model
    finally:
        del optimizer.apply_gradients
        model.jit_compile = jit_compile
        _drop_compiled_steps(model)


def _all_variables(model) -> list:
    """The model's variables, its optimizer's and its compiled metrics', each once."""
    found = {}
    optimizer = list(model.optimizer.variables) if model.optimizer is not None else []
    for variable in [*model.variables, *optimizer, *model.metrics_variables]:
        found.setdefault(id(variable), variable)
    return list(found.values())


def _drop_compiled_steps(model) -> None:
    # The traced functions captured the optimizer as it was when they were traced.
    model.train_function = model.test_function = model.predict_function = None
    if hasattr(model, "make_train_function"):
        model.train_function = None


def broadcast_state(model, collective, root: int = 0) -> None:
    """Copy the model's variables and optimizer state from ``root`` to every rank."""
    model.optimizer.build(model.trainable_variables)
    collective.broadcast_variables(state_variables(model), root=root)


def moving_state(model) -> list:
    """The variables each rank's forward pass updates on its own: every non-trainable
    floating-point variable of the model's layers (BatchNorm's moving mean and variance,
    or any a layer assigns in its call). Integer state (seed generators) is excluded: it
    advances identically on every rank."""
    found, seen = [], set()
    for variable in model.non_trainable_variables:
        if id(variable) in seen or not np.dtype(_dtype_name(variable)).kind == "f":
            continue
        seen.add(id(variable))
        found.append(variable)
    return found


def _dtype_name(variable) -> str:
    dtype = variable.dtype
    return dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))


def average_moving_state(model, collective) -> int:
    """Replace every rank's :func:`moving_state` by its mean across ranks; returns how many
    variables were averaged. The mean of the ranks' moving averages is the moving average
    one process would hold had it seen all ranks' batch statistics."""
    variables = moving_state(model)
    if collective.size == 1 or not variables or collective.global_step:
        return len(variables)
    means = collective.mean([np.asarray(v.numpy(), dtype=np.float64) for v in variables])
    for variable, mean in zip(variables, means):
        variable.assign(mean.astype(_dtype_name(variable)))
    return len(variables)


def finite_state(model) -> bool:
    """Whether every floating-point variable of ``model`` (weights and moving statistics) is finite."""
    return all(np.isfinite(np.asarray(variable.value)).all() for variable in model.variables
               if np.dtype(_dtype_name(variable)).kind == "f")


def sum_metric_states(model, collective) -> None:
    """Sum every metric's state variables across ranks, in the same order on every rank.

    Keras metrics keep sums and counts (a mean's total and count, a confusion matrix's
    cells), so after this ``metric.result()`` is what one process would compute on the
    union of all ranks' data.
    """
    variables = [v for metric in model.metrics for v in metric.variables]
    if not variables or collective.size == 1:
        return
    totals = collective.sum([np.asarray(v.numpy()) for v in variables])
    for variable, total in zip(variables, totals):
        variable.assign(total)


class HostModel:
    """The model as this process alone may use it: rank 0 loads and saves checkpoints, each
    rank evaluates its own validation shard.

    With an engine whose replicas are per-process models (Horovod) that is the model itself.
    With one whose variables are distributed over every process's devices (JAX), writing a
    variable is a collective, so this is a process-local twin (same architecture, compile
    configuration and optimizer), refreshed from the replicated values when asked for.
    """

    def __init__(self, model, collective):
        self.model, self.collective = model, collective
        self.twin = None
        if collective.global_step:
            import keras

            with _distribution(None):  # the twin's variables stay on this process
                self.twin = keras.models.clone_model(model)
                self.twin.compile_from_config(model.get_compile_config())
                self.twin.optimizer.build(self.twin.trainable_variables)
            model.optimizer.build(model.trainable_variables)
            if len(state_variables(self.twin)) != len(state_variables(model)):
                raise RuntimeError(f"cannot make a process-local copy of {model.name!r}: keras.models.clone_model "
                                   f"gave {len(state_variables(self.twin))} variables for {len(state_variables(model))}")
            self._refresh()  # so that share() without a checkpoint load shares the model's own state

    @contextlib.contextmanager
    def local(self):
        """Within the block: the process-local model, holding the current weights and
        optimizer state (and, for a twin, no distribution set, so that what it builds, such
        as its compiled metrics, stays on this process too)."""
        if self.twin is None:
            yield self.model
            return
        self._refresh()
        with _distribution(None):
            yield self.twin

    def _refresh(self) -> None:
        for twin, variable in zip(state_variables(self.twin), state_variables(self.model)):
            twin.assign(np.asarray(variable.value))  # a replicated value: read from this process's copy

    def share(self, root: int = 0) -> None:
        """Every rank: ``root``'s local model (as :meth:`local` or a checkpoint load left it)
        becomes every rank's model."""
        if self.twin is None:
            broadcast_state(self.model, self.collective, root)
            return
        values = self.collective.broadcast_arrays([np.asarray(v.value) for v in state_variables(self.twin)], root)
        self.collective.place(state_variables(self.model), values)
        # The compiled metrics' state joins the step too: onto the same layout.
        self.collective.broadcast_variables(list(self.model.metrics_variables), root)


@contextlib.contextmanager
def _distribution(distribution):
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def state_variables(model) -> list:
    """The model's variables, then its optimizer's, in a fixed order: what a checkpoint, a
    broadcast and an elastic commit carry."""
    from .randomness import is_keys

    return [v for v in model.variables if not is_keys(v)] + list(model.optimizer.variables)
