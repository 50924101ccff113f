"""Clip sampling and augmentation on real ranks: with windows, crops and flips on, 2 ranks x
batch 4 train the weights of 1 rank x batch 8, and a run stopped on 2 ranks and resumed on 1
sees the augmented clips of an uninterrupted run and ends with its weights."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from .conftest import report, train, weights

# small_file's clips are 4 x 3 x 12 x 12: windows of 3 frames (2 starts), 10 x 10 crops (9 offsets), flips.
AUGMENT = ("--clip-frames", 3, "--crop", 10, 10, "--flip", "--epochs", 2)


@pytest.fixture(scope="module")
def straight(small_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("augment-straight")
    train(2, "gloo", small_file, out, "--batch-size", 4, *AUGMENT)
    return out


def clips_of_epoch(reports, epoch):
    """What each step's clips held in their first four pixels (the worker records them), counted:
    a fingerprint of the augmented clips trained in ``epoch``, whatever the batches."""
    return Counter(clip for steps in reports for at, step in steps if at == epoch for clip in step)


def test_two_ranks_match_one_rank_with_twice_the_batch_with_augmentation(small_file, straight, tmp_path):
    train(1, "gloo", small_file, tmp_path / "one", "--batch-size", 8, *AUGMENT)
    for a, b in zip(weights(straight, 0), weights(tmp_path / "one", 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    two = [report(straight, r)["trained"] for r in (0, 1)]
    one = [report(tmp_path / "one", 0)["trained"]]
    for epoch in (0, 1):
        assert clips_of_epoch(two, epoch) == clips_of_epoch(one, epoch)
    assert clips_of_epoch(one, 0) != clips_of_epoch(one, 1)  # a new view of each clip every epoch


def test_a_run_resumed_on_another_rank_count_sees_the_same_augmented_clips(small_file, straight, tmp_path):
    """Stopped on 2 x 4 in epoch 1, resumed on 1 x 8: the clips of epoch 1 (the stopped run's and
    the resumed run's together) are the uninterrupted run's, and so are the final weights."""
    checkpoints = tmp_path / "checkpoints"
    result = train(2, "gloo", small_file, tmp_path / "stopped", "--batch-size", 4, *AUGMENT,
                   "--checkpoint-dir", checkpoints, "--usr1", 0, 1, 2, "--usr1", 1, 1, 2, check=False)
    assert result.returncode != 0
    stopped = [json.loads((tmp_path / "stopped" / f"rank{r}.stopped").read_text()) for r in (0, 1)]
    assert [s["at"] for s in stopped] == [[1, 24]] * 2  # 3 global batches of epoch 1 trained
    train(1, "gloo", small_file, tmp_path / "resumed", "--batch-size", 8, *AUGMENT,
          "--checkpoint-dir", checkpoints, "--resume")
    before, after = [s["trained"] for s in stopped], [report(tmp_path / "resumed", 0)["trained"]]
    uninterrupted = [report(straight, r)["trained"] for r in (0, 1)]
    assert clips_of_epoch(before, 1) + clips_of_epoch(after, 1) == clips_of_epoch(uninterrupted, 1)
    for a, b in zip(weights(tmp_path / "resumed", 0), weights(straight, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
