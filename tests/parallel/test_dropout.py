"""Dropout keyed by sample on real ranks: 2 ranks x 4 equal 1 rank x 8 with the default
model's dropout (0.3), as they do without it, on both engines."""

import numpy as np
import pytest

from .conftest import train, weights


@pytest.mark.parametrize("engine", ["gloo", "jax"])
def test_two_ranks_match_one_rank_with_dropout(tmp_path, small_file, engine):
    train(2, engine, small_file, tmp_path / "two", "--batch-size", 4, "--epochs", 2, "--dropout", 0.3)
    train(1, engine, small_file, tmp_path / "one", "--batch-size", 8, "--epochs", 2, "--dropout", 0.3)
    two, one = weights(tmp_path / "two", 0), weights(tmp_path / "one", 0)
    for a, b in zip(two, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(two, weights(tmp_path / "two", 1)):  # and the replicas are identical
        np.testing.assert_array_equal(a, b)
