"""Feed a rank's training batches to Keras ``fit``: read ahead in order, and measure the wait.

Imports TensorFlow only in :meth:`Feeder.dataset`. Keras reads a PyDataset through
``tf.data`` with its own prefetch buffer, so the time a training step waits for its batch
cannot be seen from Python. ``train_model`` instead hands Keras a ``tf.data`` pipeline with
no buffer of its own around :class:`Feeder`: background threads read the next batches
ahead, in order, and the step's request for a batch is a call into the feeder, which counts
how long it blocks. That count is exactly the time training waited for data.

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
        prefetch: batches :meth:`dataset` buffers in ``tf.data`` (default 0). With 0 the step's
            request for a batch is the call the feeder times, so ``wait_seconds`` is exactly
            the steps' wait; each step then also pays the hand-off into TensorFlow (about
            1.5 ms for a 9.6 MB batch here). With 1 that hand-off overlaps the previous step
            (`bench au`: AU >= 0.90 up to 12 emulated accelerators instead of 8, docs/BENCHMARKS.md),
            but the feeder's thread then waits on the reader even while the step computes, so
            ``wait_seconds`` bounds the steps' wait from above: near 0 it is still 0, and
            when input-bound it reads high.
    """

    def __init__(self, plan: ShardPlan, reader: BatchReader, first_epoch: int = 0, start: int = 0, *,
                 workers: int = 1, depth: int | None = None, augment: Augment | None = None, prefetch: int = 0):
        if not isinstance(prefetch, (int, np.integer)) or isinstance(prefetch, bool) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0. Received: prefetch={prefetch!r}")
        self.prefetch = int(prefetch)
        self.plan, self.reader, self.first_epoch, self.start = plan, reader, first_epoch, start
        self.augment = augment if augment is not None and not augment.identity else None
        # The shape of the clips fed: the augmented one (checked against the file here, once).
        self.clip_shape = self.augment.output_shape(reader.info.clip_shape) if self.augment else reader.info.clip_shape
        self.workers = workers
        self.depth = depth or 2 * workers
        self.wait_seconds = 0.0  # time callers spent blocked on the next batch
        self.error: BaseException | None = None  # the first read that failed (see train_model's fit)

    @classmethod
    def for_sequence(cls, sequence, first_epoch: int = 0, start: int = 0, **kwargs) -> Feeder:
        """A feeder over a :class:`~distributed_h5.sequence.ShardedSequence`'s plan, reader and augmentation."""
        kwargs.setdefault("augment", getattr(sequence, "augment", None))
        return cls(sequence.plan, sequence.reader(), first_epoch, start, **kwargs)

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
                    self.wait_seconds += time.perf_counter() - start
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
        """A ``tf.data.Dataset`` over this feeder, with no prefetch of its own unless
        ``prefetch`` says (see the class), so that the train step's request for a batch is the
        call that the feeder times."""
        import tensorflow as tf

        info = self.reader.info
        batch = self.plan.batch_size
        signature = (tf.TensorSpec((batch, *self.clip_shape), tf.as_dtype(info.dtype)),
                     tf.TensorSpec((batch, info.classes), tf.float32))
        dataset = tf.data.Dataset.from_generator(self.__iter__, output_signature=signature)
        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
        if self.prefetch:
            dataset = dataset.prefetch(self.prefetch)
        return dataset.with_options(options)
