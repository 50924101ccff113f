"""What the two readers that bypass HDF5 share (:class:`.reader.BatchReader` and
:class:`.jpeg.JpegClips`): the default thread count, the runs of adjacent keys in a batch,
a ``preadv`` that fills its buffer, the announcement of a batch's reads to the kernel, and the
lifetime of an open descriptor and thread pool. Imports numpy and the standard library only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def default_threads() -> int:
    """Reader and decoder threads when none are asked for: the usable cores, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def runs(keys: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs in ``keys`` where each key is the previous + ``step``."""
    breaks = np.flatnonzero(np.diff(keys) != step) + 1
    return np.r_[0, breaks], np.r_[breaks, keys.size]


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes of ``fd`` at ``offset`` into ``view``, again after a short read;
    return the bytes read, fewer than ``len(view)`` only where the file ends (the caller names
    the file and the object in its error)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


READAHEAD_BYTES = 128 << 10  # Linux's default read_ahead_kb: advise's piece where the real one cannot be found


def readahead_bytes(fd: int) -> int:
    """The bytes one ``POSIX_FADV_WILLNEED`` call on ``fd`` surely reads ahead: the readahead
    window of the file's storage (``read_ahead_kb`` of its backing device in sysfs; a
    partition's disk's), or 128 KiB, Linux's default, where sysfs does not say.

    Linux reads at most max(that window, the device's largest request) per call and silently
    drops the rest of a longer span (``force_page_cache_ra`` in mm/readahead.c): here, with an
    8 MiB window, one call over a 24 MiB span brought in 8 MiB; on a host with the default
    128 KiB, one call over a 602,112-byte raw clip brings in 128 KiB of it.
    """
    try:
        device = os.fstat(fd).st_dev
    except OSError:
        return READAHEAD_BYTES
    name = f"{os.major(device)}:{os.minor(device)}"
    for path in (f"/sys/class/bdi/{name}/read_ahead_kb", f"/sys/dev/block/{name}/../queue/read_ahead_kb"):
        try:
            with open(path) as handle:
                kilobytes = int(handle.read())
        except (OSError, ValueError):
            continue
        if kilobytes > 0:
            return kilobytes << 10
    return READAHEAD_BYTES


def advise(fd: int, spans: Iterable[tuple[int, int]], piece: int = READAHEAD_BYTES) -> None:
    """Tell the kernel that every ``(offset, size)`` byte span of ``fd`` is about to be read
    (``POSIX_FADV_WILLNEED``), so it starts reading them all now: one call per ``piece`` bytes
    of a span at most, since Linux reads ahead no more than its readahead window per call
    (:func:`readahead_bytes`, which the readers pass as ``piece``).

    The readers call this with a whole batch's spans before their threads read them: from a
    cold page cache the disk then has every read of the batch queued at once, not one per
    reader thread. On pages already cached it costs a few microseconds per call. Measured
    here (``bench au``, cold, 8 emulated accelerators, four alternating runs each; an 8 MiB
    window, so a span was one call): JPEG clips AU 0.218-0.254 with it against 0.196-0.233
    without, raw clips 0.67-0.76 against 0.54-0.60 in three of four pairs; one rank (where the
    reads keep up either way) the same.
    """
    fadvise = getattr(os, "posix_fadvise", None)  # not on macOS: there the reads are simply not announced
    if fadvise is None:
        return
    for offset, size in spans:
        offset, end = int(offset), int(offset) + int(size)
        for start in range(offset, end, piece):  # nothing for an empty span (size 0 would mean "to the end")
            fadvise(fd, start, min(piece, end - start), os.POSIX_FADV_WILLNEED)


class DescriptorReader:
    """Base of a reader that holds a descriptor (``_fd``) and a thread pool (``_pool``), each
    None until opened: :meth:`close` releases both (a subclass closes its own around
    ``super().close()``); a context manager; not picklable, since a descriptor does not cross
    processes."""

    _fd: int | None = None
    _pool: ThreadPoolExecutor | None = None
    _readahead: int | None = None  # readahead_bytes(_fd), found at the first _advise

    def _advise(self, spans: Iterable[tuple[int, int]]) -> None:
        """:func:`advise` the spans of ``_fd``, in pieces of its storage's readahead window."""
        if self._readahead is None:
            self._readahead = readahead_bytes(self._fd)
        advise(self._fd, spans, self._readahead)

    def _buffer(self, size: int) -> memoryview:
        """``size`` bytes of the calling thread's read buffer, reused from read to read and grown
        (doubling) as needed: a fresh one per read (zero-filled, new pages) cost the zstd clips
        of bench codecs a fifth of their decode rate (a throwaway loop over 256 of its chunks:
        0.81-1.13k clips/s with a fresh buffer, 1.20-1.32k reusing one)."""
        local = self.__dict__.setdefault("_local", threading.local())
        buffer = getattr(local, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = local.buffer = bytearray(max(size, 2 * len(buffer or b"")))
        return memoryview(buffer)[:size]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} holds an open file and cannot be pickled; open one per process")
