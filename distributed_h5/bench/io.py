"""``distributed-h5 bench io``: read throughput of each method against the sequential ceiling.

Every method reads the training subset's clips of the same warm file, one after another
in one process, so their ratios are comparable even on a noisy machine:

* ``ceiling``: sequential slab reads ``X[i:i+batch]`` through h5py (the same bytes in order);
* ``memcpy``: copying the same number of bytes in memory (the raw limit);
* ``original``: the original design's ``X[sorted_batch]``, ``Y[sorted_batch]`` per batch;
* ``sequence-1``: ``ShardedSequence`` with one reader thread;
* ``sequence-N``: ``ShardedSequence`` with N reader threads.

A method stops after ``seconds`` and is rated on what it read by then.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass

import h5py
import numpy as np

from ..data.dataset import describe
from ..data.reader import default_threads
from ..sequence import ShardedSequence


@dataclass
class Result:
    method: str
    samples: int
    seconds: float
    clip_bytes: int

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds

    @property
    def gigabytes_per_second(self) -> float:
        return self.samples * self.clip_bytes / self.seconds / 1e9


def _timed(method: str, clip_bytes: int, batches, read_batch, seconds: float) -> Result:
    samples, start = 0, time.perf_counter()
    for batch in batches:
        samples += read_batch(batch)
        if time.perf_counter() - start > seconds:
            break
    return Result(method, samples, time.perf_counter() - start, clip_bytes)


def warm(path: str) -> None:
    """Read the whole file once so every method starts from the same warm page cache."""
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def bench_io(path: str, *, batch_size: int = 32, threads: int | None = None, seconds: float = 10.0,
             validation_ratio: float = 0.3) -> list[Result]:
    """Run every method on ``path`` and return their results, ceiling first."""
    info = describe(path)
    threads = threads or default_threads()
    sequence = ShardedSequence(path, batch_size=batch_size, validation_ratio=validation_ratio, threads=1)
    batches = [sequence.indices(i) for i in range(len(sequence))]
    clip_count = sum(b.size for b in batches)
    warm(path)
    results = []
    with h5py.File(path, "r", locking=False) as file:
        x, y = file["X"], file["Y"]
        out = np.empty((batch_size, *info.clip_shape), dtype=info.dtype)

        def slab(start):
            stop = min(start + batch_size, clip_count)
            x.read_direct(out, np.s_[start:stop], np.s_[: stop - start])
            return stop - start

        results.append(_timed("ceiling", info.clip_bytes, range(0, clip_count, batch_size), slab, seconds))

        source = np.random.default_rng(0).integers(0, 255, out.nbytes, dtype=np.uint8)
        target = out.view(np.uint8).reshape(-1)

        def copy(_):
            np.copyto(target, source)
            return batch_size

        results.append(_timed("memcpy", info.clip_bytes, range(0, clip_count, batch_size), copy, seconds))

        def original(batch):
            x[batch], y[batch]
            return batch.size

        results.append(_timed("original", info.clip_bytes, batches, original, seconds))
    for count in sorted({1, threads}):
        sequence = ShardedSequence(path, batch_size=batch_size, validation_ratio=validation_ratio, threads=count)
        results.append(_timed(f"sequence-{count}", info.clip_bytes, range(len(sequence)),
                              lambda i, s=sequence: len(s[i][0]), seconds))
        method = sequence.reader().method
        sequence.close()
    results[-1].method += f" ({method})"
    return results


def report(path: str, results: list[Result], csv_path: str | None = None) -> str:
    """A table of the results, each rated against the ceiling; appended to ``csv_path`` if given."""
    info = describe(path)
    ceiling = results[0].gigabytes_per_second
    layout = f"{'chunks ' + str(info.chunks[0]) + ' clip' if info.chunks else 'contiguous'}, {info.compression or 'uncompressed'}"
    lines = [f"{os.path.basename(path)}: {layout}, clips {info.clip_shape} {info.dtype}",
             f"{'method':<30} {'samples/s':>10} {'GB/s':>8} {'x ceiling':>10}"]
    for result in results:
        lines.append(f"{result.method:<30} {result.samples_per_second:>10.0f} {result.gigabytes_per_second:>8.3f} "
                     f"{result.gigabytes_per_second / ceiling:>10.3f}")
    if csv_path:
        new = not os.path.exists(csv_path)
        with open(csv_path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["file", "layout", "method", "samples", "seconds", "samples_per_second",
                                 "gb_per_second", "ratio_to_ceiling"])
            for result in results:
                writer.writerow([os.path.basename(path), layout, result.method, result.samples,
                                 f"{result.seconds:.4f}", f"{result.samples_per_second:.1f}",
                                 f"{result.gigabytes_per_second:.4f}", f"{result.gigabytes_per_second / ceiling:.4f}"])
    return "\n".join(lines)
