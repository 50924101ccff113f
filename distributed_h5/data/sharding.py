"""Which sample indices each rank reads, batch by batch: a pure function of its arguments.

Nothing here opens a file or imports TensorFlow or Horovod, so every rule of the data
order can be tested in one process without MPI.

The rules:

* **Split.** All ``sample_count`` indices are permuted with ``seed``; the first
  ``int((1 - validation_ratio) * sample_count)`` are training, the rest validation.
  With ``groups`` (the source video of each clip), whole groups go to one side instead
  (:func:`split`); with a per-sample ``subset`` (an official split list), it says
  (:func:`split_from_subset`). The split never changes between epochs and does not depend
  on the number of ranks.
* **Training order.** Every epoch permutes the training indices with ``(seed, epoch)``,
  identically on every rank.
* **Scale-invariant sharding.** Global step ``i`` covers positions ``[i*B, (i+1)*B)``
  of that order, with ``B = batch_size * size``; rank ``r`` takes the ``r``-th slice of
  ``batch_size`` positions. So the union of all ranks' ``i``-th batches is exactly the
  ``i``-th batch one process reads with batch size ``B``, whatever ``size`` is.
* **Equal steps.** Every rank gets the same number of training batches, because Horovod's
  allreduce hangs when one rank runs a step the others do not. The remainder is either
  padded by wrapping around to the start of the order (``"pad"``, as PyTorch's
  DistributedSampler does) or dropped (``"drop"``).
* **Validation** needs no collective per step, so it is never padded: each rank takes a
  contiguous, balanced share (sizes differ by at most one) and its last batch may be short.
  Metrics combined from sums and counts across ranks then equal one process's exactly.
* Every batch is sorted ascending, the order HDF5 reads best.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from .checks import positive_int

REMAINDER_POLICIES = ("pad", "drop")
SUBSETS = ("train", "validation")
SPLITS = ("random", "groups", "file")


class Split(NamedTuple):
    """Training and validation indices, each sorted ascending."""

    train: np.ndarray
    validation: np.ndarray


def check_rank(rank: int, size: int) -> None:
    """Raise ValueError unless ``size >= 1`` and ``0 <= rank < size``."""
    positive_int("size", size)
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < size:
        raise ValueError(f"rank must be an integer in [0, {size - 1}] for size={size}. Received: rank={rank!r}")


def split(sample_count: int, validation_ratio: float, seed: int, groups: np.ndarray | None = None) -> Split:
    """Split ``range(sample_count)`` into training and validation indices, deterministic in ``seed``.

    Without ``groups``, a seeded permutation's last ``sample_count - int((1 - validation_ratio)
    * sample_count)`` indices are validation. With ``groups`` (one integer per sample, equal
    for clips of one source video), whole groups go to one side, so no source video is
    seen in both: the distinct groups are permuted with ``seed`` and, in that order, each
    joins validation if that brings the validation count closer to ``validation_ratio *
    sample_count``. The count then ends within half the largest group of that target (a
    group it stopped at was more than twice the gap). Neither depends on the number of ranks.

    Example:
        >>> split(10, 0.3, seed=0).train.size, split(10, 0.3, seed=0).validation.size
        (7, 3)
        >>> split(6, 0.5, seed=0, groups=np.array([0, 0, 1, 1, 2, 2])).validation.tolist()
        [4, 5]
    """
    positive_int("sample_count", sample_count)
    if not 0.0 <= validation_ratio < 1.0:
        raise ValueError(f"validation_ratio must be in [0, 1). Received: validation_ratio={validation_ratio!r}")
    rng = np.random.default_rng(seed)
    if groups is None:
        permuted = rng.permutation(sample_count)
        train_count = int((1 - validation_ratio) * sample_count)
        return Split(np.sort(permuted[:train_count]), np.sort(permuted[train_count:]))
    groups = np.asarray(groups)
    if groups.shape != (sample_count,) or groups.dtype.kind not in "iu":
        raise ValueError(f"groups must be an integer array of shape ({sample_count},), one group per sample. "
                         f"Received: shape {groups.shape}, dtype {groups.dtype}")
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    target = validation_ratio * sample_count
    chosen = np.zeros(names.size, dtype=bool)
    count = 0
    for group in rng.permutation(names.size):
        if abs(count + sizes[group] - target) < abs(count - target):
            chosen[group] = True
            count += int(sizes[group])
    in_validation = chosen[inverse.reshape(-1)]
    return Split(np.flatnonzero(~in_validation), np.flatnonzero(in_validation))


def split_from_subset(subset: np.ndarray) -> Split:
    """The split a per-sample ``subset`` array says: 0 train, 1 validation (an official split list).

    Example:
        >>> split_from_subset(np.array([0, 1, 0, 0, 1])).validation.tolist()
        [1, 4]
    """
    subset = np.asarray(subset)
    if subset.ndim != 1 or subset.size == 0 or not np.isin(subset, (0, 1)).all():
        raise ValueError(f"subset must be a non-empty 1-D array of 0 (train) and 1 (validation). Received: "
                         f"shape {subset.shape}, values {np.unique(subset)[:5].tolist()}")
    return Split(np.flatnonzero(subset == 0), np.flatnonzero(subset == 1))


def epoch_order(train: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The training indices in the order of ``epoch``: a permutation seeded by ``(seed, epoch)``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0. Received: epoch={epoch!r}")
    return train[np.random.default_rng((seed, epoch)).permutation(train.size)]


def train_batches(
    order: np.ndarray, *, rank: int, size: int, batch_size: int, remainder: str = "pad", start: int = 0
) -> np.ndarray:
    """This rank's training batches from an epoch's ``order``, as a (steps, batch_size) array.

    Each row is sorted. ``steps`` is the same on every rank. ``start`` skips the first
    ``start`` positions of the order (samples already trained in this epoch, by a run that
    may have had another global batch): the rest is cut into global batches from there,
    so a resumed epoch trains every remaining sample exactly once.
    """
    check_rank(rank, size)
    positive_int("batch_size", batch_size)
    if remainder not in REMAINDER_POLICIES:
        raise ValueError(f"remainder must be one of {REMAINDER_POLICIES}. Received: remainder={remainder!r}")
    if not 0 <= start <= order.size:
        raise ValueError(f"start must be in [0, {order.size}]. Received: start={start!r}")
    global_batch = batch_size * size
    rest = order[start:]
    if start == order.size:  # the epoch was complete
        return np.empty((0, batch_size), dtype=order.dtype)
    if remainder == "pad":
        steps = -(-rest.size // global_batch)
        # Pad by wrapping around to the start of the epoch's order; np.resize repeats it,
        # so even an order shorter than one global batch fills it (PyTorch's
        # DistributedSampler pads the same way).
        order = np.concatenate([rest, np.resize(order, steps * global_batch - rest.size)])
    else:
        steps = rest.size // global_batch
        order = rest[: steps * global_batch]
    if steps == 0 and start > 0:  # a resumed epoch whose rest is shorter than a global batch: dropped
        return np.empty((0, batch_size), dtype=order.dtype)
    if steps == 0:
        raise ValueError(
            f"the training subset has {rest.size} samples, fewer than one global batch of "
            f"batch_size * size = {batch_size} * {size} = {global_batch}, so remainder='drop' leaves "
            "no step. Use remainder='pad', a smaller batch_size, or fewer ranks."
        )
    batches = order.reshape(steps, size, batch_size)[:, rank, :]
    return np.sort(batches, axis=1)


def validation_batches(validation: np.ndarray, *, rank: int, size: int, batch_size: int,
                       advice: str = "Raise validation_ratio or use fewer ranks.") -> list[np.ndarray]:
    """This rank's validation batches: a contiguous balanced share of ``validation``, unpadded.

    ``advice`` ends the error when there are fewer validation samples than ranks (what would help
    depends on how the split was made: see :meth:`ShardPlan.validation_batches`).
    """
    check_rank(rank, size)
    positive_int("batch_size", batch_size)
    if validation.size < size:
        raise ValueError(
            f"the validation subset has {validation.size} samples, fewer than size={size} ranks, "
            f"so some rank would have none. {advice}"
        )
    share = np.array_split(validation, size)[rank]
    return [np.sort(share[start : start + batch_size]) for start in range(0, share.size, batch_size)]


def shard(
    sample_count: int,
    *,
    subset: str = "train",
    validation_ratio: float = 0.3,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    size: int = 1,
    batch_size: int = 32,
    remainder: str = "pad",
    start: int = 0,
) -> list[np.ndarray]:
    """The sorted index batches rank ``rank`` of ``size`` reads in ``epoch`` of ``subset``.

    Training batches all have ``batch_size`` rows and every rank gets the same count;
    validation batches are unpadded (see the module docstring). ``epoch``, ``remainder`` and
    ``start`` (positions of the epoch's order already trained) only affect training.

    Example:
        >>> [b.tolist() for b in shard(10, validation_ratio=0.2, seed=1, rank=1, size=2, batch_size=2)]
        [[1, 5], [4, 9]]
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    parts = split(sample_count, validation_ratio, seed)
    indices = getattr(parts, subset)
    if indices.size == 0:
        raise ValueError(
            f"the {subset} subset of sample_count={sample_count} with validation_ratio={validation_ratio} "
            "is empty. Change validation_ratio."
        )
    if subset == "validation":
        return validation_batches(indices, rank=rank, size=size, batch_size=batch_size)
    order = epoch_order(indices, seed, epoch)
    return list(train_batches(order, rank=rank, size=size, batch_size=batch_size, remainder=remainder, start=start))


@dataclass(frozen=True)
class ShardPlan:
    """Everything that decides one rank's batches, frozen: the Sequence, the Feeder and the
    checkpoints all take this one object instead of reaching through each other.

    Example:
        >>> plan = ShardPlan(10, validation_ratio=0.2, seed=1, rank=1, size=2, batch_size=2)
        >>> [b.tolist() for b in plan.batches(epoch=0)]
        [[1, 5], [4, 9]]
    """

    sample_count: int
    validation_ratio: float = 0.3
    seed: int = 0
    rank: int = 0
    size: int = 1
    batch_size: int = 32
    remainder: str = "pad"
    split: str = "random"  # "random", "groups" (needs groups) or "file" (needs subset; validation_ratio unused)
    groups: np.ndarray | None = field(default=None, compare=False, repr=False)  # per sample: its source video
    subset: np.ndarray | None = field(default=None, compare=False, repr=False)  # per sample: 0 train, 1 validation

    def __post_init__(self):
        check_rank(self.rank, self.size)
        positive_int("batch_size", self.batch_size)
        if self.remainder not in REMAINDER_POLICIES:
            raise ValueError(f"remainder must be one of {REMAINDER_POLICIES}. Received: remainder={self.remainder!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}. Received: split={self.split!r}")
        needed = {"groups": "groups", "file": "subset"}.get(self.split)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"split={self.split!r} needs {needed}, one value per sample. Received: {needed}=None")
        if self.split == "file" and np.shape(self.subset) != (self.sample_count,):
            raise ValueError(f"subset must have shape ({self.sample_count},). Received: {np.shape(self.subset)}")
        self.subsets  # validates sample_count, the ratio and the per-sample array

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.size

    @cached_property
    def subsets(self) -> Split:
        if self.split == "file":
            return split_from_subset(self.subset)
        return split(self.sample_count, self.validation_ratio, self.seed,
                     self.groups if self.split == "groups" else None)

    @property
    def train_count(self) -> int:
        return int(self.subsets.train.size)

    def batches(self, epoch: int, start: int = 0) -> list[np.ndarray]:
        """This rank's sorted training batches of ``epoch`` from position ``start`` of its order."""
        if self.train_count == 0:
            raise ValueError(f"the train subset of sample_count={self.sample_count} with validation_ratio="
                             f"{self.validation_ratio} and split={self.split!r} is empty. Change validation_ratio"
                             + (" or the split list." if self.split == "file" else "."))
        if self.batch_size > self.train_count:  # every batch would repeat samples, in a buffer that may not fit
            raise ValueError(f"batch_size (--batch-size) must be at most the {self.train_count} training samples "
                             f"(sample_count={self.sample_count}, split={self.split!r}). "
                             f"Received: batch_size={self.batch_size}")
        order = epoch_order(self.subsets.train, self.seed, epoch)
        return list(train_batches(order, rank=self.rank, size=self.size, batch_size=self.batch_size,
                                  remainder=self.remainder, start=start))

    def validation_batches(self) -> list[np.ndarray]:
        """This rank's unpadded validation batches."""
        return validation_batches(self.subsets.validation, rank=self.rank, size=self.size,
                                  batch_size=self.batch_size, advice=self._validation_advice())

    def _validation_advice(self) -> str:
        """What would give every rank a validation sample, for this plan's split."""
        if self.split == "file":
            return ("With split='file' the file's 'subset' decides (validation_ratio is not used): mark more rows 1 "
                    "(validation) in 'subset', use fewer ranks, or use split='random'.")
        if self.split == "groups":
            groups = np.unique(self.groups).size
            if groups < 2:
                return ("With split='groups' whole source videos go to one side, and the file's 'groups' holds "
                        f"{groups} group, so validation_ratio cannot help: use split='random', or a file with "
                        "more source videos.")
            return (f"With split='groups' whole source videos ({groups} in the file) go to one side: raise "
                    "validation_ratio, use fewer ranks, or use split='random'.")
        return "Raise validation_ratio or use fewer ranks."

    def samples_after(self, start: int, steps: int) -> int:
        """The position in the epoch's order after ``steps`` global batches from ``start``
        (capped at the training sample count: padding is not a position)."""
        return min(self.train_count, start + steps * self.global_batch)
