"""Checks of arguments shared by every layer, so each kind of bad value is refused in the same
words (``<name> must be ... Received: <name>=<value>``). Imports numpy only."""

from __future__ import annotations

import numpy as np


def positive_int(name: str, value, *, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1 (a Python or numpy integer, not a
    bool); with ``optional=True``, None passes too.

    Example:
        >>> positive_int("batch_size", 8)
        >>> positive_int("batch_size", 0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be an integer >= 1. Received: batch_size=0
    """
    if optional and value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{' or None' if optional else ''}. "
                         f"Received: {name}={value!r}")
