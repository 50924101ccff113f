"""``ShardedSequence``: a rank's shard of an HDF5 video file as a Keras ``PyDataset``."""

from __future__ import annotations

import os

import keras
import numpy as np

from .data import sharding
from .data.augment import Augment
from .data.dataset import describe, load_split, open_file
from .data.reader import BatchReader
from .engines.launcher import world



def file_plan(path, sample_count: int, *, split: str | None, validation_ratio: float, seed: int, batch_size: int,
              rank: int = 0, size: int = 1, remainder: str = "pad", locking: bool = False) -> sharding.ShardPlan:
    """The shard plan of the file at ``path``: its first ``sample_count`` samples split by ``split``
    (``None`` picks ``"groups"`` when the file has them, else ``"random"``; ``plan.split`` says
    which), with the per-sample ``groups`` or ``subset`` that split reads from the file. The one
    place a file becomes a plan: training's sequences and evaluation both ask here."""
    with open_file(path, locking=locking) as file:
        split, per_sample = load_split(file, split, sample_count)
    return sharding.ShardPlan(sample_count, validation_ratio=validation_ratio, seed=seed, rank=rank, size=size,
                              batch_size=batch_size, remainder=remainder, split=split,
                              groups=per_sample if split == "groups" else None,
                              subset=per_sample if split == "file" else None)


class ShardedSequence(keras.utils.PyDataset):
    """This rank's batches of ``subset`` of an HDF5 video file, for ``model.fit``.

    ``len(seq)`` is this rank's batches per epoch; for ``subset="train"`` it is the same on
    every rank. ``seq[i]`` returns ``(x, y)``: clips in the file's dtype, shape
    (batch, frames, channels, rows, cols), and one-hot float32 labels, rows aligned.
    The data order is :func:`sharding.shard` of ``(seed, epoch)``: independent of the
    number of ranks and of the reading method.

    Note:
        Pass ``shuffle=False`` to ``fit``: the order is already shuffled, and Keras would
        otherwise permute batches with Python's unseeded ``random``, differently per rank.
        Call ``set_epoch(epoch)`` at the start of every epoch, as with PyTorch's
        DistributedSampler: pass ``callbacks=[EpochSetter(seq)]`` to ``fit``. ``on_epoch_end``
        does not reshuffle, because Keras calls it at times that are not epoch boundaries
        (``fit`` calls it once before the first epoch) and after worker processes have
        already received the sequence; only ``set_epoch`` is exact. ``train_model`` needs
        none of this: its :class:`~distributed_h5.feeding.Feeder` follows the epochs itself.

    The file is opened lazily, once per process that reads, so the sequence can be
    pickled to Keras' worker processes (``workers``, ``use_multiprocessing``).

    Args:
        path: HDF5 file in the package's layout (checked here: raises ``DatasetError``).
        batch_size: clips per batch on this rank (default 32).
        subset: ``"train"`` or ``"validation"``.
        validation_ratio: fraction of ``sample_count`` held out (default 0.3).
        seed: seeds the split and every epoch's order (default 0).
        epoch: the first epoch (default 0).
        rank, size: default to Horovod's when it is initialised, else 0 and 1.
        remainder: ``"pad"`` (default) or ``"drop"`` the last partial global batch of training.
        threads: reader threads (default: usable cores, at most 4).
        locking: HDF5 file locking (default off).
        allow_unwritten: read X and Y even where their storage was never written (see
            :func:`dataset.validate`; default False).
        augment: an :class:`~distributed_h5.augment.Augment`: training batches get each sample's
            view of ``(seed, epoch, index)``, validation batches the centre view (default None).
        split: ``"random"``, ``"groups"`` (whole source videos, from the file's ``groups``) or
            ``"file"`` (the file's ``subset``); default: ``"groups"`` when the file has ``groups``.
        workers, use_multiprocessing, max_queue_size: passed to ``keras.utils.PyDataset``.

    Example:
        >>> seq = ShardedSequence("data.h5", batch_size=8, rank=0, size=2)  # doctest: +SKIP
        >>> x, y = seq[0]
        >>> model.fit(seq, epochs=3, shuffle=False, callbacks=[EpochSetter(seq)])
    """

    def __init__(self, path, *, batch_size=32, subset="train", validation_ratio=0.3, seed=0, epoch=0,
                 rank=None, size=None, remainder="pad", threads=None, locking=False, allow_unwritten=False,
                 augment=None, split=None, **kwargs):
        super().__init__(**kwargs)
        self.path = os.fspath(path)
        self.rank, self.size = world(rank, size)
        self.info = describe(self.path, locking=locking, allow_unwritten=allow_unwritten)
        self.allow_unwritten = allow_unwritten
        if subset not in sharding.SUBSETS:
            raise ValueError(f"subset must be one of {sharding.SUBSETS}. Received: subset={subset!r}")
        self.batch_size, self.subset, self.validation_ratio = batch_size, subset, validation_ratio
        self.seed, self.remainder, self.threads, self.locking = seed, remainder, threads, locking
        self.plan = file_plan(self.path, self.info.sample_count, split=split, validation_ratio=validation_ratio,
                              seed=seed, rank=self.rank, size=self.size, batch_size=batch_size, remainder=remainder,
                              locking=locking)
        self.split = self.plan.split
        self._reader, self._reader_pid = None, None
        if augment is not None and not isinstance(augment, Augment):
            raise ValueError(f"augment must be a distributed_h5.augment.Augment or None. Received: {augment!r}")
        self.augment = augment if augment is not None and not augment.identity else None
        # The clips' shape as read: augmented (a ValueError here if the views do not fit the file's clips).
        self.clip_shape = self.augment.output_shape(self.info.clip_shape) if self.augment else self.info.clip_shape
        self.set_epoch(epoch)

    @property
    def sample_count(self) -> int:
        return self.info.sample_count

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's sorted index batches in ``epoch``: a pure function of seed and epoch."""
        if self.subset == "validation":
            return self.plan.validation_batches()
        return self.plan.batches(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the data order of ``epoch``."""
        self._batches = self.epoch_batches(epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._batches)

    def indices(self, i: int) -> np.ndarray:
        """The sorted sample indices of batch ``i`` of the current epoch."""
        return self._batches[i]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self._batches):
            raise IndexError(f"batch index must be in [0, {len(self._batches)}). Received: {i}")
        if self.augment is not None:
            return self.augment.read(self.reader(), self._batches[i], seed=self.seed, epoch=self.epoch,
                                     training=self.subset == "train")
        return self.reader().read(self._batches[i])

    def reader(self) -> BatchReader:
        """This process's reader, opened on first use (an h5py handle must not cross a fork)."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = BatchReader(self.path, threads=self.threads, locking=self.locking,
                                       allow_unwritten=self.allow_unwritten)
            self._reader_pid = os.getpid()
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._reader_pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = state["_reader_pid"] = None
        return state


class EpochSetter(keras.callbacks.Callback):
    """Calls ``set_epoch(epoch)`` on each sequence at the start of every epoch of ``fit``.

    Keras runs callbacks' ``on_epoch_begin`` before it starts reading the epoch (and before
    it sends the sequence to worker processes), so every batch of epoch ``e`` uses the
    order of ``e``, also when ``fit`` resumes at ``initial_epoch``.
    """

    def __init__(self, *sequences: ShardedSequence):
        super().__init__()
        self.sequences = sequences

    def on_epoch_begin(self, epoch, logs=None):
        for sequence in self.sequences:
            sequence.set_epoch(epoch)
