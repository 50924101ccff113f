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


def positive_pair(name: str, value, *, meaning: str = "", optional: bool = False) -> tuple[int, int] | None:
    """``value`` as a tuple of two ints, each >= 1; ValueError unless it holds exactly two whole
    numbers >= 1. ``meaning`` names the two in the message (``"rows, cols"``); with
    ``optional=True``, None passes and is returned.

    Example:
        >>> positive_pair("size", [64, 48], meaning="rows, cols")
        (64, 48)
        >>> positive_pair("size", (64, 0), meaning="rows, cols")
        Traceback (most recent call last):
        ...
        ValueError: size must be two integers >= 1 (rows, cols). Received: size=(64, 0)
    """
    if optional and value is None:
        return None
    message = (f"{name} must be two integers >= 1{f' ({meaning})' if meaning else ''}{' or None' if optional else ''}. "
               f"Received: {name}={value!r}")
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(pair) != 2 or min(pair) < 1 or pair != tuple(value):  # 2.5 is not 2
        raise ValueError(message)
    return pair
