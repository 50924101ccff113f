"""Feed a ShardedSequence to Keras ``fit``: read ahead in order, and measure the wait.

Keras reads a PyDataset through ``tf.data`` with its own prefetch buffer, so the time a
training step waits for its batch cannot be seen from Python. ``train_model`` instead
hands Keras a ``tf.data`` pipeline with no buffer of its own around :class:`Feeder`:
background threads read the next batches ahead, in order, and the step's request for a
batch is a call into the feeder, which counts how long it blocks. That count is exactly
the time training waited for data.

The batches follow epochs ``first_epoch, first_epoch + 1, ...`` of the sequence's order
(a pure function of seed and epoch), starting at ``start_step``, whatever Keras does with
its callbacks; so a read-ahead across an epoch boundary can never read the wrong epoch.
"""

from __future__ import annotations

import collections
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

from .sequence import ShardedSequence


class Feeder:
    """Batches of ``sequence`` from (``first_epoch``, ``start_step``) on, read ``depth`` ahead.

    Args:
        sequence: the rank's training sequence.
        first_epoch, start_step: where to start (a resumed run starts mid-epoch).
        workers: threads reading batches ahead (default 1; each read also uses the
            reader's own threads).
        depth: batches read ahead (default 2 per worker).
    """

    def __init__(self, sequence: ShardedSequence, first_epoch: int = 0, start_step: int = 0, *, workers: int = 1,
                 depth: int | None = None):
        self.sequence, self.first_epoch, self.start_step = sequence, first_epoch, start_step
        self.workers = workers
        self.depth = depth or 2 * workers
        self.wait_seconds = 0.0  # time callers spent blocked on the next batch

    def _indices(self):
        for epoch in itertools.count(self.first_epoch):
            batches = self.sequence.epoch_batches(epoch)
            yield from batches[self.start_step if epoch == self.first_epoch else 0 :]

    def __iter__(self):
        reader = self.sequence.reader()
        pending = collections.deque()
        indices = self._indices()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="distributed_h5-feed") as pool:
            try:
                for batch in itertools.islice(indices, self.depth):
                    pending.append(pool.submit(reader.read, batch))
                while pending:
                    start = time.perf_counter()
                    x, y = pending.popleft().result()
                    self.wait_seconds += time.perf_counter() - start
                    pending.append(pool.submit(reader.read, next(indices)))
                    yield x, y
            finally:
                for future in pending:
                    future.cancel()

    def dataset(self):
        """A ``tf.data.Dataset`` over this feeder, with no prefetch of its own, so that the
        train step's request for a batch is the call that the feeder times."""
        import tensorflow as tf

        info = self.sequence.info
        batch = self.sequence.batch_size
        signature = (tf.TensorSpec((batch, *info.clip_shape), tf.as_dtype(info.dtype)),
                     tf.TensorSpec((batch, info.classes), tf.float32))
        dataset = tf.data.Dataset.from_generator(self.__iter__, output_signature=signature)
        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
        return dataset.with_options(options)
