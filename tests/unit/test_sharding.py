"""The data-order rules of distributed_h5.sharding, as exact examples and as properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_h5 import sharding


def all_ranks(sample_count, size, **kwargs):
    return [sharding.shard(sample_count, rank=rank, size=size, **kwargs) for rank in range(size)]


def test_split_matches_original_design():
    permuted = np.random.default_rng(3).permutation(10)
    parts = sharding.split(10, 0.3, seed=3)
    assert parts.train.tolist() == sorted(permuted[:7].tolist())
    assert parts.validation.tolist() == sorted(permuted[7:].tolist())


def test_exact_batches_for_two_ranks():
    order = sharding.epoch_order(sharding.split(10, 0.2, seed=1).train, seed=1, epoch=0)
    # 8 training samples, global batch 4: rank 1 takes positions 2-3 and 6-7.
    rank1 = sharding.shard(10, validation_ratio=0.2, seed=1, rank=1, size=2, batch_size=2)
    assert [b.tolist() for b in rank1] == [sorted(order[2:4].tolist()), sorted(order[6:8].tolist())]


def test_pad_wraps_to_the_start_of_the_order():
    order = np.arange(10, 15)
    batches = sharding.train_batches(order, rank=0, size=2, batch_size=2, remainder="pad")
    # 5 samples, global batch 4 -> 2 steps over 8 positions: 10 11 12 13 | 14 10 11 12
    assert batches.tolist() == [[10, 11], [10, 14]]
    assert sharding.train_batches(order, rank=1, size=2, batch_size=2).tolist() == [[12, 13], [11, 12]]


def test_pad_fills_a_global_batch_larger_than_the_subset():
    batches = sharding.train_batches(np.array([4, 9]), rank=2, size=3, batch_size=2)
    assert batches.tolist() == [[4, 9]]


def test_drop_discards_the_partial_global_batch():
    batches = sharding.train_batches(np.arange(10), rank=1, size=2, batch_size=2, remainder="drop")
    assert batches.tolist() == [[2, 3], [6, 7]]


def test_validation_is_balanced_and_unpadded():
    validation = np.arange(100, 111)  # 11 samples over 3 ranks: 4, 4, 3
    shares = [sharding.validation_batches(validation, rank=r, size=3, batch_size=3) for r in range(3)]
    assert [[b.tolist() for b in share] for share in shares] == [
        [[100, 101, 102], [103]], [[104, 105, 106], [107]], [[108, 109, 110]]]


def test_epochs_differ_and_repeat():
    first = sharding.shard(50, seed=5, epoch=0, batch_size=4)
    again = sharding.shard(50, seed=5, epoch=0, batch_size=4)
    second = sharding.shard(50, seed=5, epoch=1, batch_size=4)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert [b.tolist() for b in first] != [b.tolist() for b in second]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=0), "size must be an integer >= 1. Received: size=0"),
        (dict(rank=2, size=2), r"rank must be an integer in \[0, 1\] for size=2. Received: rank=2"),
        (dict(rank=-1, size=2), "Received: rank=-1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1. Received: batch_size=0"),
        (dict(validation_ratio=1.0), r"validation_ratio must be in \[0, 1\). Received: validation_ratio=1.0"),
        (dict(validation_ratio=-0.1), "Received: validation_ratio=-0.1"),
        (dict(subset="test"), "subset must be one of .* Received: subset='test'"),
        (dict(remainder="wrap"), "remainder must be one of .* Received: remainder='wrap'"),
        (dict(subset="validation", validation_ratio=0.0), "the validation subset .* is empty"),
        (dict(remainder="drop", batch_size=64), "fewer than one global batch"),
        (dict(subset="validation", validation_ratio=0.05, size=4), "fewer than size=4 ranks"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sharding.shard(40, **kwargs)


def test_sample_count_must_be_positive():
    with pytest.raises(ValueError, match="sample_count must be an integer >= 1. Received: sample_count=0"):
        sharding.shard(0)


plans = st.fixed_dictionaries(
    dict(
        sample_count=st.integers(1, 400),
        size=st.integers(1, 9),
        batch_size=st.integers(1, 17),
        validation_ratio=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
        seed=st.integers(0, 2**31),
        epoch=st.integers(0, 50),
    )
)


@settings(max_examples=300, deadline=None)
@given(plans, st.sampled_from(["pad", "drop"]))
def test_training_shards_are_equal_disjoint_sorted_and_cover(plan, remainder):
    size, batch_size = plan["size"], plan["batch_size"]
    train = sharding.split(plan["sample_count"], plan["validation_ratio"], plan["seed"]).train
    global_batch = size * batch_size
    if train.size == 0 or (remainder == "drop" and train.size < global_batch):
        return
    shards = all_ranks(plan["sample_count"], size, subset="train", remainder=remainder,
                       **{k: v for k, v in plan.items() if k not in ("sample_count", "size")})
    steps = {len(shard) for shard in shards}
    assert len(steps) == 1  # equal step counts: the allreduce never waits for a missing rank
    for shard in shards:
        for batch in shard:
            assert batch.size == batch_size and np.all(np.diff(batch) >= 0)
    seen = np.concatenate([b for shard in shards for b in shard])
    expected_steps = -(-train.size // global_batch) if remainder == "pad" else train.size // global_batch
    assert steps == {expected_steps}
    if remainder == "pad":
        assert set(seen.tolist()) == set(train.tolist())  # full coverage
        # The padding is the first positions of the order again, so nothing appears more than
        # ceil(padded / train) times.
        assert np.bincount(seen).max() <= -(-expected_steps * global_batch // train.size)
    else:
        assert np.unique(seen).size == seen.size == expected_steps * global_batch  # disjoint
        assert set(seen.tolist()) <= set(train.tolist())


@settings(max_examples=200, deadline=None)
@given(plans, st.integers(2, 4))
def test_order_is_independent_of_the_number_of_ranks(plan, factor):
    """The union of all ranks' i-th batches is one process's i-th batch with batch_size * size."""
    size, batch_size = plan["size"], plan["batch_size"]
    common = dict(validation_ratio=plan["validation_ratio"], seed=plan["seed"], epoch=plan["epoch"])
    if sharding.split(plan["sample_count"], plan["validation_ratio"], plan["seed"]).train.size == 0:
        return
    single = sharding.shard(plan["sample_count"], batch_size=batch_size * size, **common)
    shards = all_ranks(plan["sample_count"], size, batch_size=batch_size, **common)
    for step, batch in enumerate(single):
        union = np.sort(np.concatenate([shard[step] for shard in shards]))
        assert union.tolist() == batch.tolist()


@settings(max_examples=200, deadline=None)
@given(plans)
def test_validation_shards_partition_the_validation_subset(plan):
    parts = sharding.split(plan["sample_count"], plan["validation_ratio"], plan["seed"])
    assert np.intersect1d(parts.train, parts.validation).size == 0
    assert parts.train.size + parts.validation.size == plan["sample_count"]
    if parts.validation.size < plan["size"]:
        return
    shards = all_ranks(plan["sample_count"], plan["size"], subset="validation", batch_size=plan["batch_size"],
                       validation_ratio=plan["validation_ratio"], seed=plan["seed"])
    seen = np.concatenate([b for shard in shards for b in shard])
    assert np.sort(seen).tolist() == parts.validation.tolist()  # each validation sample exactly once
    sizes = [sum(b.size for b in shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(b) > 0) for shard in shards for b in shard)


@settings(max_examples=100, deadline=None)
@given(plans)
def test_split_does_not_change_between_epochs(plan):
    def seen(epoch):
        shards = all_ranks(plan["sample_count"], plan["size"], batch_size=plan["batch_size"], epoch=epoch,
                           validation_ratio=plan["validation_ratio"], seed=plan["seed"])
        return set(np.concatenate([b for shard in shards for b in shard]).tolist())

    if sharding.split(plan["sample_count"], plan["validation_ratio"], plan["seed"]).train.size == 0:
        return
    assert seen(plan["epoch"]) == seen(plan["epoch"] + 1)


@pytest.mark.parametrize("sample_count, size, train_count", [(10, 2, 7), (11, 4, 7), (5, 1, 3)])
def test_drop_error_gives_the_real_training_sample_count(sample_count, size, train_count):
    # 0.3 of sample_count is held out; the message counts the training samples before any truncation.
    with pytest.raises(ValueError) as caught:
        sharding.shard(sample_count, validation_ratio=0.3, size=size, batch_size=4, remainder="drop")
    assert str(caught.value) == (
        f"the training subset has {train_count} samples, fewer than one global batch of batch_size * size = "
        f"4 * {size} = {4 * size}, so remainder='drop' leaves no step. Use remainder='pad', a smaller batch_size, "
        "or fewer ranks."
    )


def test_a_batch_larger_than_the_training_samples_is_one_line():
    plan = sharding.ShardPlan(96, validation_ratio=0.3, batch_size=100_000_000)  # 67 training samples
    with pytest.raises(ValueError) as caught:
        plan.batches(0)
    assert str(caught.value) == ("batch_size (--batch-size) must be at most the 67 training samples (sample_count=96, "
                                 "split='random'). Received: batch_size=100000000")
    assert len(sharding.ShardPlan(96, validation_ratio=0.3, batch_size=67).batches(0)) == 1  # the limit itself
    assert len(plan.validation_batches()) == 1  # validation alone (evaluate) is unaffected: one short batch


@pytest.mark.parametrize("split, per_sample, message", [
    ("groups", dict(groups=np.zeros(20, dtype=np.int64)),
     "the validation subset has 0 samples, fewer than size=1 ranks, so some rank would have none. With "
     "split='groups' whole source videos go to one side, and the file's 'groups' holds 1 group, so "
     "validation_ratio cannot help: use split='random', or a file with more source videos."),
    ("groups", dict(groups=np.arange(20) // 10),
     "the validation subset has 0 samples, fewer than size=1 ranks, so some rank would have none. With "
     "split='groups' whole source videos (2 in the file) go to one side: raise validation_ratio, use fewer ranks, "
     "or use split='random'."),
    ("file", dict(subset=np.zeros(20, dtype=np.uint8)),
     "the validation subset has 0 samples, fewer than size=1 ranks, so some rank would have none. With "
     "split='file' the file's 'subset' decides (validation_ratio is not used): mark more rows 1 (validation) in "
     "'subset', use fewer ranks, or use split='random'."),
    ("random", dict(),
     "the validation subset has 1 samples, fewer than size=2 ranks, so some rank would have none. "
     "Raise validation_ratio or use fewer ranks."),
])
def test_too_few_validation_samples_says_what_would_help_for_the_split(split, per_sample, message):
    size = 2 if split == "random" else 1
    plan = sharding.ShardPlan(20, validation_ratio=0.05 if split == "random" else 0.2, split=split, size=size,
                              batch_size=2, **per_sample)
    with pytest.raises(ValueError) as caught:
        plan.validation_batches()
    assert str(caught.value) == message
