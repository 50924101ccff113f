"""Feed a rank's training batches to Keras ``fit``: read ahead in order, and measure the wait.

Imports TensorFlow only in :meth:`Feeder.dataset`. Background threads read the next batches
ahead, in order. On TensorFlow, :meth:`Feeder.dataset` hands Keras a ``tf.data`` pipeline
around the feeder with a one-batch buffer (``prefetch=1``, the default), so that each
batch's hand-off into TensorFlow overlaps the previous step; the time a step waits is timed
where the step takes its batch, inside that pipeline: a timestamp when the step asks (a
clock dataset zipped ahead of the batches, which ``zip`` asks first) and one when the batch
comes out, both in the step's own thread (:func:`inline_map`), summed in a variable. That is
exactly the time training waited for data. With ``prefetch=0`` the step's request is a call
into the feeder, which counts how long it blocks on the read; on JAX the feeder is iterated
directly and counts the same.

The batches follow epochs ``first_epoch, first_epoch + 1, ...`` of the plan's order (a pure
function of seed and epoch), starting at sample position ``start`` of the first one,
whatever Keras does with its callbacks; so a read-ahead across an epoch boundary can
never read the wrong epoch.
"""

from __future__ import annotations

import collections
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .data.augment import Augment
from .data.reader import BatchReader
from .data.sharding import ShardPlan

# TensorFlow takes a numpy array into a tensor without a copy only when its data is aligned
# to 64 bytes (Eigen's alignment); numpy aligns to 16. Batches read into aligned buffers cost
# Feeder.dataset() far less CPU: `bench au`, 8 ranks at 30 ms per step on 2 cores, AU 0.73-0.80
# with numpy's buffers, 0.91-0.93 with aligned ones (docs/BENCHMARKS.md).
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


class Feeder:
    """Batches of ``plan`` read by ``reader`` from (``first_epoch``, sample ``start``) on, ``depth`` ahead.

    Args:
        plan: the rank's frozen shard plan.
        reader: an open :class:`~distributed_h5.reader.BatchReader` of the file (this process's).
        first_epoch, start: where to start: ``start`` samples of ``first_epoch``'s order are
            already trained (a resumed run starts mid-epoch, with any global batch).
        workers: threads reading batches ahead (default 1; each read also uses the
            reader's own threads).
        depth: batches read ahead (default 2 per worker).
        augment: the :class:`~distributed_h5.augment.Augment` applied to each training batch,
            its random choices those of (the plan's seed, the batch's epoch, each sample index);
            it is applied in the reading thread, after the read (default None: clips as stored).
        prefetch: batches :meth:`dataset` buffers in ``tf.data`` (default 1): each batch's
            hand-off into TensorFlow (about 1.5 ms for a 9.6 MB batch here) overlaps the
            previous step. ``wait_seconds`` is then timed where the step takes its batch (see
            the module), so it stays exact: a step that finds its batch ready waits only for
            the take (about 0.4 ms here). With 0 the step's request is the call the feeder
            times, and each step also pays the hand-off.

    ``wait_seconds``: the time steps spent waiting for their batch, over every :meth:`dataset`
    and iteration of this feeder.
    """

    def __init__(self, plan: ShardPlan, reader: BatchReader, first_epoch: int = 0, start: int = 0, *,
                 workers: int = 1, depth: int | None = None, augment: Augment | None = None, prefetch: int = 1):
        if not isinstance(prefetch, (int, np.integer)) or isinstance(prefetch, bool) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0. Received: prefetch={prefetch!r}")
        self.prefetch = int(prefetch)
        self.plan, self.reader, self.first_epoch, self.start = plan, reader, first_epoch, start
        self.augment = augment if augment is not None and not augment.identity else None
        # The shape of the clips fed: the augmented one (checked against the file here, once).
        self.clip_shape = self.augment.output_shape(reader.info.clip_shape) if self.augment else reader.info.clip_shape
        self.workers = workers
        self.depth = depth or 2 * workers
        self._blocked = 0.0  # time callers of __iter__ spent blocked on the next batch
        self._taken = None  # dataset()'s in-pipeline wait (a tf.Variable of seconds), made at the first one
        self.error: BaseException | None = None  # the first read that failed (see train_model's fit)

    @classmethod
    def for_sequence(cls, sequence, first_epoch: int = 0, start: int = 0, **kwargs) -> Feeder:
        """A feeder over a :class:`~distributed_h5.sequence.ShardedSequence`'s plan, reader and augmentation."""
        kwargs.setdefault("augment", getattr(sequence, "augment", None))
        return cls(sequence.plan, sequence.reader(), first_epoch, start, **kwargs)

    @property
    def wait_seconds(self) -> float:
        """Seconds the steps waited for their batches so far (see the class)."""
        return self._blocked + (float(self._taken.numpy()) if self._taken is not None else 0.0)

    def restart_at(self, first_epoch: int, start: int = 0) -> None:
        """The next iteration (the next ``fit``) starts at (``first_epoch``, ``start``)."""
        self.first_epoch, self.start = first_epoch, start

    def steps(self, epoch: int) -> int:
        """Steps this feeder yields for ``epoch`` (fewer in a first epoch resumed mid-way)."""
        return len(self.plan.batches(epoch, self.start if epoch == self.first_epoch else 0))

    def _indices(self):
        """``(epoch, batch)`` pairs: the epoch keys the batch's augmentation."""
        for epoch in itertools.count(self.first_epoch):
            for batch in self.plan.batches(epoch, self.start if epoch == self.first_epoch else 0):
                yield epoch, batch

    def __iter__(self):
        return self._batches(timed=True)

    def _batches(self, timed: bool):
        """The batches, read ahead; ``timed``: add the time blocked on each to ``wait_seconds``."""
        pending = collections.deque()
        indices = self._indices()
        info = self.reader.info

        def read(epoch_batch):  # into a fresh aligned buffer, which TensorFlow takes without a copy
            epoch, batch = epoch_batch
            out = aligned_empty((batch.size, *self.clip_shape), info.dtype)
            if self.augment is None:
                return self.reader.read(batch, out)
            # Only the windows are read; scale, crop and flip happen here, in this reading thread.
            return self.augment.read(self.reader, batch, seed=self.plan.seed, epoch=epoch, training=True, out=out)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="distributed_h5-feed") as pool:
            try:
                for batch in itertools.islice(indices, self.depth):
                    pending.append(pool.submit(read, batch))
                while pending:
                    start = time.perf_counter()
                    try:
                        x, y = pending.popleft().result()
                    except Exception as exc:
                        self.error = self.error or exc
                        raise
                    if timed:
                        self._blocked += time.perf_counter() - start
                    pending.append(pool.submit(read, next(indices)))
                    yield x, y
            finally:
                for future in pending:
                    future.cancel()

    def source(self):
        """What ``fit`` reads on Keras' backend: :meth:`dataset` on TensorFlow; elsewhere
        (JAX) this feeder's own iterator, so that backend needs no TensorFlow."""
        import keras

        return self.dataset() if keras.backend.backend() == "tensorflow" else iter(self)

    def dataset(self):
        """A ``tf.data.Dataset`` over this feeder: ``prefetch`` batches buffered (none with 0), and
        the steps' wait timed where each takes its batch (see the module)."""
        import tensorflow as tf

        info = self.reader.info
        batch = self.plan.batch_size
        signature = (tf.TensorSpec((batch, *self.clip_shape), tf.as_dtype(info.dtype)),
                     tf.TensorSpec((batch, info.classes), tf.float32))
        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
        if not self.prefetch:  # the step's request is the generator's call, timed there
            return tf.data.Dataset.from_generator(self.__iter__, output_signature=signature).with_options(options)
        batches = tf.data.Dataset.from_generator(lambda: self._batches(timed=False), output_signature=signature)
        if self._taken is None:
            self._taken = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="distributed_h5_data_wait")
        taken = self._taken
        # zip asks its inputs in order: the clock's timestamp is the step's request, then the
        # buffer gives the batch; the time between is what the step waited. The clock maps a
        # repeated constant (Dataset.counter() is a scan: one more function per step on the
        # thread pool), and both maps run in the step's own thread (see inline_map).
        zero = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
        asked = inline_map(zero, lambda _: tf.timestamp())

        def take(asked_at, element):
            with tf.control_dependencies([taken.assign_add(tf.timestamp() - asked_at)]):
                return tuple(tf.identity(part) for part in element)

        return inline_map(tf.data.Dataset.zip((asked, batches.prefetch(self.prefetch))), take).with_options(options)


def inline_map(dataset, function):
    """``dataset.map(function)``, the function run in the thread that asks for the element.

    A public ``map`` runs its function's ops on TensorFlow's inter-op thread pool: a hand-over
    to another thread and back on each element, which costs a step that has been computing for
    a while (its caches and that pool's threads gone cold) about 0.6 ms per map on this
    2-core machine: more than the whole take of a buffered batch (``bench au``'s emulated step,
    1 rank, 30 ms steps, median take: 2.2-2.3 ms with the two timing maps public, 1.0-1.1 ms
    inline, 0.9-1.0 ms with no timing at all).
    The inline form is the ``MapDataset`` kernel's ``use_inter_op_parallelism=False``, which
    TensorFlow's Python API reaches only through its private ``_MapDataset``; where that is gone
    or takes other arguments (a later TensorFlow; ``tests/unit/test_feeding.py`` checks the
    pinned one has it) this falls back to the public map, with the same elements and timing,
    only slower.
    """
    try:
        from tensorflow.python.data.ops.map_op import _MapDataset

        return _MapDataset(dataset, function, use_inter_op_parallelism=False)
    except (ImportError, TypeError):
        return dataset.map(function, synchronous=True)
