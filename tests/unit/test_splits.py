"""Real splits: whole source videos on one side, official split lists, and their checks in the file."""

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_h5 import DatasetError, describe, sharding
from distributed_h5.dataset import load_split, open_file
from distributed_h5.synthetic import make_synthetic

group_sizes = st.lists(st.integers(1, 12), min_size=1, max_size=40)


def groups_of(sizes, seed=0):
    """Samples labelled by group, the groups interleaved (a shuffled file, not one group after another)."""
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # ids need not be 0..G-1
    return np.random.default_rng(seed).permutation(groups)


@settings(max_examples=200, deadline=None)
@given(sizes=group_sizes, ratio=st.floats(0.0, 0.95), seed=st.integers(0, 2**32 - 1))
def test_groups_never_straddle_and_the_ratio_is_within_one_group(sizes, ratio, seed):
    groups = groups_of(sizes, seed)
    parts = sharding.split(groups.size, ratio, seed, groups)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(groups.size))  # disjoint and covering
    assert not set(groups[parts.train]) & set(groups[parts.validation])
    assert abs(parts.validation.size - ratio * groups.size) <= max(sizes) / 2
    again = sharding.split(groups.size, ratio, seed, groups)
    assert np.array_equal(again.validation, parts.validation)  # deterministic in seed


@settings(max_examples=50, deadline=None)
@given(sizes=group_sizes, seed=st.integers(0, 1000), size=st.integers(1, 8))
def test_group_split_is_independent_of_the_rank_count(sizes, seed, size):
    groups = groups_of(sizes)
    one = sharding.ShardPlan(groups.size, validation_ratio=0.3, seed=seed, split="groups", groups=groups)
    many = [sharding.ShardPlan(groups.size, validation_ratio=0.3, seed=seed, rank=r, size=size, split="groups",
                               groups=groups) for r in range(size)]
    for plan in many:
        assert np.array_equal(plan.subsets.validation, one.subsets.validation)


def test_singleton_groups_are_a_split_of_samples_with_the_exact_count():
    parts = sharding.split(100, 0.3, seed=4, groups=np.arange(100))
    assert parts.validation.size == 30


def test_one_group_per_side_and_the_seed_picks_which():
    groups = np.array([5, 5, 5, 9, 9, 9])
    sides = {tuple(sharding.split(6, 0.5, seed, groups).validation.tolist()) for seed in range(20)}
    assert sides == {(0, 1, 2), (3, 4, 5)}


def test_subset_split_and_plan_arguments():
    subset = np.array([0, 1, 0, 0, 1], dtype=np.uint8)
    plan = sharding.ShardPlan(5, split="file", subset=subset, batch_size=2)
    assert plan.subsets.train.tolist() == [0, 2, 3] and plan.subsets.validation.tolist() == [1, 4]
    with pytest.raises(ValueError, match=r"split='groups' needs groups, one value per sample. Received: groups=None"):
        sharding.ShardPlan(5, split="groups")
    with pytest.raises(ValueError, match=r"split must be one of \('random', 'groups', 'file'\). Received: split='x'"):
        sharding.ShardPlan(5, split="x")
    with pytest.raises(ValueError, match=r"groups must be an integer array of shape \(5,\)"):
        sharding.split(5, 0.3, 0, groups=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="the train subset .* split='file' is empty"):
        sharding.ShardPlan(2, split="file", subset=np.ones(2, dtype=np.uint8)).batches(0)


@pytest.fixture()
def small(tmp_path):
    return make_synthetic(tmp_path / "small.h5", samples=12, frames=2, channels=1, size=(4, 4), classes=2,
                          progress=False)


def add(path, name, data):
    with h5py.File(path, "a") as file:
        file.create_dataset(name, data=data)


def split_of(path, split=None):
    with open_file(path) as file:
        return load_split(file, split, 12)


def test_default_split_is_groups_when_the_file_has_them(small):
    assert split_of(small) == ("random", None)
    add(small, "groups", np.arange(12) // 3)
    mode, groups = split_of(small)
    assert mode == "groups" and groups.tolist() == (np.arange(12) // 3).tolist()
    assert describe(small).has_groups and not describe(small).has_subset


@pytest.mark.parametrize("name, data, message", [
    ("groups", np.zeros(11, dtype=np.int64), r"dataset 'groups' has shape \(11,\), expected \(12,\)"),
    ("groups", np.zeros((12, 1), dtype=np.int64), r"dataset 'groups' has shape \(12, 1\), expected \(12,\)"),
    ("groups", np.zeros(12, dtype=np.float32), r"dataset 'groups' has dtype float32, expected an integer dtype"),
    ("subset", np.zeros(3, dtype=np.uint8), r"dataset 'subset' has shape \(3,\), expected \(12,\)"),
])
def test_malformed_groups_or_subset_are_refused_at_open(small, name, data, message):
    add(small, name, data)
    with pytest.raises(DatasetError, match=message) as error:
        describe(small)
    assert "\n" not in str(error.value)


def test_bad_values_are_refused_when_the_split_reads_them(small):
    add(small, "groups", np.array([0, 1, -1, 2, 3, -4, 5, 6, 7, 8, 9, 10]))
    add(small, "subset", np.array([0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
    with pytest.raises(DatasetError, match=r"row 2 of 'groups' is -1, expected an integer >= 0 \(a source-video id\); "
                                           r"2 bad row\(s\) of the 12 in use"):
        split_of(small, "groups")
    with pytest.raises(DatasetError, match=r"row 2 of 'subset' is 2, expected 0 \(train\) or 1 \(validation\); "
                                           r"1 bad row\(s\) of the 12 in use"):
        split_of(small, "file")


def test_a_split_the_file_cannot_make_is_one_line(small):
    with pytest.raises(DatasetError, match=r"split='file' needs a 'subset' dataset, which this file lacks "
                                           r"\(`distributed-h5 convert --split-file` writes it\); use split='random'$"):
        split_of(small, "file")
    with pytest.raises(ValueError, match=r"split must be one of \('random', 'groups', 'file'\) or None"):
        split_of(small, "official")


def test_a_resume_with_another_split_is_refused_like_another_seed():
    from distributed_h5 import checkpoints

    fields = dict(seed=0, validation_ratio=0.3, sample_count=12, fingerprint="f", path="a.h5", file_bytes=1,
                  remainder="pad", batch_size=4, ranks=1, global_batch=4, base_batch=4, precision="float32",
                  engine="horovod", version="0.1.0")
    saved = checkpoints.RunConfig(**fields, split="groups")
    assert checkpoints.RunConfig(**fields).split == "random"  # records from before splits existed
    with pytest.raises(checkpoints.ConfigMismatch, match=r"\(split: 'groups' -> 'file'\).* --allow-config-change "
                                                         r"split to resume anyway"):
        checkpoints.check_config(saved, checkpoints.RunConfig(**fields, split="file"))
    checkpoints.check_config(saved, checkpoints.RunConfig(**fields, split="file"), allowed=("split",))


def test_the_sequences_take_the_files_groups_by_default_and_its_subset_when_asked(small):
    from distributed_h5 import ShardedSequence

    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    add(small, "groups", groups)
    add(small, "subset", np.array([1, 0] * 6, dtype=np.uint8))
    common = dict(batch_size=4, validation_ratio=0.5, seed=1, rank=0, size=1)
    validation = ShardedSequence(small, subset="validation", **common)
    assert validation.split == "groups"
    held_out = np.concatenate(validation.epoch_batches(0))
    assert held_out.size == 6 and sorted(set(groups[held_out])) == sorted(set(groups) - set(groups[np.concatenate(
        ShardedSequence(small, subset="train", **common).epoch_batches(0))]))
    official = ShardedSequence(small, subset="validation", split="file", **common)
    assert np.concatenate(official.epoch_batches(0)).tolist() == [0, 2, 4, 6, 8, 10]
    assert ShardedSequence(small, subset="validation", split="random", **common).split == "random"
