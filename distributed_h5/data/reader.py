"""The batch read path: clips by index from one HDF5 file into one array. The hot loop.

HDF5 fancy indexing (``X[sorted_indices]``) is slow, and on a file chunked one clip per
chunk it is hundreds of times slower than reading the same bytes in order. So the reader
never uses it. At open it looks at how ``X`` is stored and picks one method:

``pread``
    Uncompressed ``X``, contiguous or chunked in whole clips. The byte offset of every
    clip is known from the dataset's address (or its chunk table, read once), so a batch
    is a few ``os.preadv`` calls straight into the output array, one per run of clips
    adjacent on disk, spread over threads. No HDF5 call, no lock, no copy. Every byte method
    first announces the batch's byte spans to the kernel (:func:`.preads.advise`), so that
    from a cold page cache the disk gets all of the batch's reads at once.
``pread+inflate``, ``pread+zstd``
    Gzip- or Zstandard-compressed ``X`` (``hdf5plugin``'s zstd filter; optionally with the
    shuffle filter) chunked one clip per chunk: raw chunks are read the same way and
    decompressed by ``zlib`` or ``zstandard`` in threads (both release the GIL).
``hdf5``
    Anything else (lzf, other filters, partial-clip chunks, virtual datasets, external raw
    storage): one h5py hyperslab read per run of consecutive indices, straight into the
    output array.
``jpeg``
    ``X`` in the JPEG layout (:mod:`distributed_h5.data.jpeg`): each run of needed frames is
    read with ``os.preadv`` at offsets read once at open, and every frame decoded by
    libjpeg-turbo (simplejpeg, without the GIL) in threads, straight into the output array;
    a temporal window reads and decodes only its frames.

When ``X`` lives in another file (an external link), the byte methods read that file:
offsets are always taken from, and read from, the file that holds the dataset. At open,
a few clips (the first, the last and some spread between, :func:`dataset.probe_indices`)
are read through h5py, which catches unreadable chunks and filters early, and the byte
methods must give the same bytes for them or the reader falls back to ``hdf5``. Labels
are loaded once as class indices (4 bytes per sample). Imports h5py, numpy and the JPEG decoder only.

:meth:`BatchReader.read_windows` reads a temporal window of each clip (its own start per
clip) through the same method, reading only the window's bytes where the layout allows
(see :mod:`distributed_h5.augment` for the crops and flips applied after it).
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from . import jpeg
from .checks import positive_int
from .dataset import (DatasetError, DatasetInfo, non_finite_clip, open_file, probe_indices, read_clips, read_labels,
                      validate)
from .preads import DescriptorReader, default_threads, pread_full, runs

NATIVE = "<" if np.little_endian else ">"
FILTER_DEFLATE = h5py.h5z.FILTER_DEFLATE
FILTER_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
FILTER_ZSTD = 32015  # hdf5plugin's Zstandard filter (HDF Group's registered id)
# Chunks the reader decompresses itself, in its threads, by filter: what each chunk's bytes are.
DECOMPRESSORS = {FILTER_DEFLATE: "zlib", FILTER_ZSTD: "zstd"}


def _zlib_decompress(raw: memoryview, size: int) -> bytes:
    return zlib.decompress(raw)


def _zstd_decompress(raw: memoryview, size: int) -> bytes:
    import zstandard  # releases the GIL while it decompresses, as zlib does

    return zstandard.ZstdDecompressor().decompress(raw, max_output_size=size)


class BatchReader(DescriptorReader):
    """Reads batches of clips and their one-hot labels from a validated HDF5 video file.

    Open one per process (h5py handles must not cross a fork); it is not picklable.

    Args:
        path: the HDF5 file.
        threads: reader threads for the byte methods (default: usable cores, at most 4).
        locking: HDF5 file locking (off by default; see :func:`dataset.open_file`).
        allow_unwritten: read X even where its storage was never written (see :func:`dataset.validate`).

    Example:
        >>> with BatchReader("data.h5") as reader:                      # doctest: +SKIP
        ...     x, y = reader.read(np.array([3, 4, 9]))
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, locking: bool = False,
                 allow_unwritten: bool = False):
        threads = default_threads() if threads is None else threads
        positive_int("threads", threads)
        self._file = open_file(path, locking=locking)
        self._fd = None
        self._pool = None
        self._jpeg = None
        self.threads = 1
        try:
            self.info: DatasetInfo = validate(self._file, allow_unwritten=allow_unwritten, locking=locking)
            self.labels = read_labels(self._file, self.info.sample_count)
            self._x = self._file["X"]
            # The file that holds X's bytes: another one when X is an external link.
            self.data_path = self._x.file.filename
            self._data_bytes = os.path.getsize(self.data_path)
            self._float = self.info.dtype.kind == "f"
            probe = probe_indices(self.info.sample_count)
            if self.info.codec == "jpeg":  # frames read with pread and decoded in its own threads
                self._swap = False
                self.method = "jpeg"
                self._jpeg = self._decoding(lambda: jpeg.JpegClips(path, threads=threads, locking=locking))
                read_clips(self._file, probe)  # every frame of the probed clips decodes (DatasetError if not)
                self.threads = threads
            else:
                # info.dtype is native; the byte methods read the file's bytes, so a big-endian X is swapped after them.
                self._swap = self._x.dtype.byteorder not in ("=", "|", NATIVE)
                self.method = self._choose_method()
                expected = read_clips(self._file, probe)  # DatasetError if h5py cannot read them
                if self.method != "hdf5":
                    self._fd = os.open(self.data_path, os.O_RDONLY)
                    if not self._byte_method_agrees(probe, expected):
                        self.method = "hdf5"
        except BaseException:
            self.close()
            raise
        if self.method in ("pread", "pread+inflate", "pread+zstd") and threads > 1:  # hdf5 holds h5py's lock: threads cannot help
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="distributed_h5-read")
            self.threads = threads

    # --- layout ------------------------------------------------------------------------
    def _choose_method(self) -> str:
        dsid = self._x.id
        plist = dsid.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        layout = plist.get_layout()
        self._clips_per_chunk = 1
        if plist.get_external_count():  # raw data in other files, which h5py knows how to find
            return "hdf5"
        if layout == h5py.h5d.CONTIGUOUS and not filters:
            base = dsid.get_offset()
            if base is None:  # storage never written: reads give the fill value
                return "hdf5"
            self._base = base
            self._chunk_offsets = self._chunk_sizes = None
            end = base + self.info.sample_count * self.info.clip_bytes  # the rows in use: the only ones read
            if end > self._data_bytes:
                raise DatasetError(
                    f"{self._where()}: the {self.info.sample_count} clips in use of dataset 'X' end at byte {end} "
                    f"but the file has {self._data_bytes} bytes (truncated?)"
                )
            return "pread"
        if layout != h5py.h5d.CHUNKED or self._x.chunks[1:] != self.info.clip_shape:
            return "hdf5"
        self._clips_per_chunk = self._x.chunks[0]
        if filters == []:
            method = "pread"
        elif (len(filters) in (1, 2) and filters[-1] in DECOMPRESSORS and filters[:-1] in ([], [FILTER_SHUFFLE])
              and self._clips_per_chunk == 1):
            method = "pread+inflate" if filters[-1] == FILTER_DEFLATE else "pread+zstd"
            self._decompress = _zlib_decompress if filters[-1] == FILTER_DEFLATE else _zstd_decompress
            self._shuffled = FILTER_SHUFFLE in filters
        else:
            return "hdf5"
        if not self._read_chunk_table(raw=method == "pread"):
            return "hdf5"
        return method

    def _read_chunk_table(self, raw: bool) -> bool:
        """Fill the per-chunk file offsets and sizes; False if some chunk cannot be read raw.

        Only chunks holding rows in use (< sample_count) are kept: X may declare far more rows.
        """
        dsid, k = self._x.id, self._clips_per_chunk
        chunk_count = -(-self.info.sample_count // k)
        offsets = np.full(chunk_count, -1, dtype=np.int64)
        sizes = np.zeros(chunk_count, dtype=np.int64)
        masks = np.zeros(chunk_count, dtype=np.int64)

        def record(info) -> None:
            chunk = info.chunk_offset[0] // k
            if chunk < chunk_count:
                offsets[chunk], sizes[chunk], masks[chunk] = info.byte_offset, info.size, info.filter_mask

        if hasattr(dsid, "chunk_iter"):  # HDF5 >= 1.12.3: one C-level pass
            dsid.chunk_iter(record)
        else:
            for i in range(dsid.get_num_chunks()):
                record(dsid.get_chunk_info(i))
        if (offsets < 0).any() or masks.any():  # unallocated chunks, or filters skipped on some
            return False
        if raw and (sizes != k * self.info.clip_bytes).any():
            return False
        if (offsets + sizes > self._data_bytes).any():
            raise DatasetError(f"{self._where()}: chunks of 'X' lie beyond the end of the file (truncated?)")
        self._chunk_offsets, self._chunk_sizes = offsets, sizes
        return True

    def _byte_method_agrees(self, probe: np.ndarray, expected: np.ndarray) -> bool:
        try:
            return np.array_equal(self._read_x(probe, np.empty_like(expected)), expected)
        except DatasetError:  # h5py read these clips, so the byte method misjudged the layout
            return False

    def _where(self) -> str:
        """The file to name in errors about X's bytes: the one given, and the one holding X if other."""
        if self.data_path == self.info.path:
            return self.info.path
        return f"{self.info.path} (X is in {self.data_path})"

    # --- reading -----------------------------------------------------------------------
    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Clips ``X[indices]`` and one-hot labels ``Y[indices]`` as float32, rows aligned.

        ``indices`` must be in [0, sample_count); sorted indices read fastest. ``out``, if
        given, receives the clips (shape (len(indices), *clip_shape), the file's dtype).
        """
        indices = self._check_indices(np.asarray(indices, dtype=np.int64))
        if out is None:
            out = np.empty((indices.size, *self.info.clip_shape), dtype=self.info.dtype)
        elif out.shape != (indices.size, *self.info.clip_shape) or out.dtype != self.info.dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {self.info.dtype} array of shape {(indices.size, *self.info.clip_shape)}. "
                f"Received: {out.dtype} {out.shape}"
            )
        self._read_x(indices, out)
        self._check_finite(indices, out)
        return out, self._one_hot(indices)

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        if indices.ndim != 1 or indices.size == 0:
            raise ValueError(f"indices must be a non-empty 1-D array. Received: shape {indices.shape}")
        if indices.min() < 0 or indices.max() >= self.info.sample_count:
            raise ValueError(
                f"indices must be in [0, {self.info.sample_count}). Received: min {indices.min()}, max {indices.max()}"
            )
        return indices

    def read_windows(self, indices: np.ndarray, starts: np.ndarray, frames: int, stride: int = 1,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Windows of frames ``starts[i], starts[i] + stride, ...`` (``frames`` of them) of clips
        ``X[indices[i]]``, and one-hot labels, rows aligned: a temporal window per clip, each its own start.

        Reads only the window's bytes where the layout allows: ``pread`` (frames are contiguous
        within a clip) reads one byte range per clip, or with ``stride > 1`` one per frame taken,
        straight into ``out``; ``hdf5`` reads one hyperslab per clip (HDF5 still decodes whole
        compressed chunks, e.g. lzf); ``pread+inflate`` must inflate each whole clip (a gzip chunk
        cannot be read in part) and copies the window out of it. A window of the whole clip is :meth:`read`.

        Args:
            indices: sample indices in [0, sample_count); sorted indices read fastest.
            starts: each clip's first frame, ``0 <= start`` and ``start + (frames - 1) * stride < stored frames``.
            frames, stride: frames per window and the step between them (>= 1).
            out: receives the windows: C-contiguous, shape (len(indices), frames, channels, rows,
                cols), the file's dtype.
        """
        stored = self.info.clip_shape[0]
        positive_int("frames", frames)
        positive_int("stride", stride)
        span = (frames - 1) * stride + 1
        indices = np.asarray(indices, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.shape != indices.shape:
            raise ValueError(f"starts must have one entry per index. "
                             f"Received: {starts.size} starts, {indices.size} indices")
        if starts.size and (starts.min() < 0 or starts.max() + span > stored):
            raise ValueError(f"windows of {frames} frames with stride {stride} must start in [0, {stored - span}] "
                             f"(clips have {stored} frames). Received: starts from {starts.min()} to {starts.max()}")
        shape = (indices.size, frames, *self.info.clip_shape[1:])
        if out is None:
            out = np.empty(shape, dtype=self.info.dtype)
        elif out.shape != shape or out.dtype != self.info.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {self.info.dtype} array of shape {shape}. "
                             f"Received: {out.dtype} {out.shape}")
        self._check_indices(indices)
        if frames == stored:  # the whole clip: the batch read, adjacent clips in one request
            self._read_x(indices, out.reshape(indices.size, *self.info.clip_shape))
        elif self.method == "jpeg":  # only the window's frames are read and decoded
            taken = starts[:, None] + stride * np.arange(frames)
            self._decoding(lambda: self._jpeg.read(indices, out, frames=taken))
        elif self.method == "pread":
            self._pread_windows(indices, starts, frames, stride, out)
        elif self.method == "hdf5":
            try:
                for row, (index, start) in enumerate(zip(indices.tolist(), starts.tolist())):
                    self._x.read_direct(out, np.s_[index, start : start + span : stride], np.s_[row])
            except OSError as exc:
                raise DatasetError(f"{self._where()}: dataset 'X' cannot be read (corrupt?): "
                                   f"{' '.join(str(exc).split())}") from exc
        else:  # gzip chunks inflate whole: read the clips, then copy each window out
            clips = self._read_x(indices, np.empty((indices.size, *self.info.clip_shape), dtype=self.info.dtype))
            for row, start in enumerate(starts.tolist()):
                out[row] = clips[row, start : start + span : stride]
        self._check_finite(indices, out)
        return out, self._one_hot(indices)

    def _one_hot(self, indices: np.ndarray) -> np.ndarray:
        # Built per batch: an identity matrix of every class is classes**2 floats (149 GiB for 200,000).
        labels = np.zeros((indices.size, self.info.classes), dtype=np.float32)
        labels[np.arange(indices.size), self.labels[indices]] = 1.0
        return labels

    def _check_finite(self, indices: np.ndarray, clips: np.ndarray) -> None:
        """A :class:`DatasetError` naming the first clip of the batch with a NaN or infinite value.

        Float clips only (integers are always finite); a NaN pixel would make the loss NaN
        steps later, far from its cause. One pass over the batch; the clip is located only on failure.
        """
        if not self._float or np.isfinite(clips).all():
            return
        bad = ~np.isfinite(clips.reshape(indices.size, -1))
        rows = np.flatnonzero(bad.any(axis=1))
        raise non_finite_clip(self._where(), int(indices[rows[0]]), int(bad[rows[0]].sum()),
                              np.unique(indices[rows]).size)

    def _pread_windows(self, indices, starts, frames, stride, out) -> None:
        frame_bytes = self.info.clip_bytes // self.info.clip_shape[0]
        flat = out.view(np.uint8).reshape(-1)
        window_bytes = frames * frame_bytes
        clip_offsets = self._file_offsets(indices) + starts * frame_bytes
        if stride == 1:  # (output byte, file byte, bytes): one contiguous range per clip
            pieces = [(row * window_bytes, int(offset), window_bytes)
                      for row, offset in enumerate(clip_offsets.tolist())]
        else:  # one range per frame taken: never read the frames skipped
            pieces = [(row * window_bytes + t * frame_bytes, int(offset) + t * stride * frame_bytes, frame_bytes)
                      for row, offset in enumerate(clip_offsets.tolist()) for t in range(frames)]
        self._advise((offset, size) for _, offset, size in pieces)
        if self._pool:
            groups = [pieces[i :: self.threads] for i in range(self.threads)]
            for done in [self._pool.submit(self._pread_spans, group, flat) for group in groups if group]:
                done.result()
        else:
            self._pread_spans(pieces, flat)
        if self._swap:  # the file's big-endian bytes into native values
            out.byteswap(inplace=True)

    def _pread_spans(self, pieces, flat) -> None:
        for begin, offset, size in pieces:
            self._pread(memoryview(flat[begin : begin + size]), offset)

    @staticmethod
    def _decoding(work):
        """``work()``, with the JPEG layer's one-line ValueError (a frame named) as a DatasetError."""
        try:
            return work()
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc

    def _read_x(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.method == "jpeg":
            return self._decoding(lambda: self._jpeg.read(indices, out))
        if self.method == "hdf5":
            starts, ends = runs(indices)
            try:
                for start, end in zip(starts, ends):
                    self._x.read_direct(out, np.s_[indices[start] : indices[end - 1] + 1], np.s_[start:end])
            except OSError as exc:
                raise DatasetError(f"{self._where()}: dataset 'X' cannot be read (corrupt?): {' '.join(str(exc).split())}") from exc
            return out
        rows = out.view(np.uint8).reshape(indices.size, self.info.clip_bytes)
        if self.method == "pread":
            offsets = self._file_offsets(indices)
            starts, ends = runs(offsets, self.info.clip_bytes)
            # Split long runs so every thread gets a share of a batch that is one run on disk.
            piece = -(-indices.size // self.threads)
            pieces = [
                (begin, min(begin + piece, end), offsets[begin])
                for start, end in zip(starts, ends)
                for begin in range(start, end, piece)
            ]
            work = self._pread_rows
            # The batch's runs, asked of the disk at once (see preads.advise).
            self._advise(zip(offsets[starts].tolist(), ((ends - starts) * self.info.clip_bytes).tolist()))
        else:
            pieces = list(range(indices.size))
            work = self._inflate_rows
            self._advise((self._chunk_offsets[c], self._chunk_sizes[c]) for c in indices.tolist())
        groups = [pieces[i :: self.threads] for i in range(self.threads)] if self._pool else [pieces]
        if self._pool:
            for done in [self._pool.submit(work, group, indices, rows) for group in groups if group]:
                done.result()
        else:
            work(pieces, indices, rows)
        if self._swap:  # the file's big-endian bytes into native values
            out.byteswap(inplace=True)
        return out

    def _file_offsets(self, indices: np.ndarray) -> np.ndarray:
        if self._chunk_offsets is None:
            return self._base + indices * self.info.clip_bytes
        k = self._clips_per_chunk
        return self._chunk_offsets[indices // k] + (indices % k) * self.info.clip_bytes

    def _pread(self, view: memoryview, offset: int) -> None:
        done = pread_full(self._fd, view, offset)
        if done < len(view):
            raise DatasetError(f"{self._where()}: unexpected end of file at byte {offset + done} (truncated?)")

    def _pread_rows(self, pieces, indices, rows) -> None:
        for begin, end, offset in pieces:
            self._pread(memoryview(rows[begin:end]).cast("B"), int(offset))

    def _inflate_rows(self, pieces, indices, rows) -> None:
        itemsize = self.info.dtype.itemsize
        for row in pieces:
            chunk = int(indices[row])
            raw = self._buffer(int(self._chunk_sizes[chunk]))
            self._pread(raw, int(self._chunk_offsets[chunk]))
            try:
                clip = np.frombuffer(self._decompress(raw, self.info.clip_bytes), dtype=np.uint8)
            except Exception as exc:  # zlib.error, zstandard.ZstdError: the chunk's bytes are not what its filter wrote
                what = "inflate" if self.method == "pread+inflate" else "decompress (zstd)"
                raise DatasetError(f"{self._where()}: chunk {chunk} of 'X' does not {what} (corrupt?): {exc}") from exc
            if clip.size != self.info.clip_bytes:
                raise DatasetError(f"{self._where()}: chunk {chunk} of 'X' inflates to {clip.size} bytes, expected {self.info.clip_bytes}")
            if self._shuffled and itemsize > 1:  # HDF5's shuffle stores byte k of every element together
                clip = clip.reshape(itemsize, -1).T
            rows[row] = clip.reshape(-1)

    # --- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if self._jpeg is not None:
            self._jpeg.close()
            self._jpeg = None
        super().close()  # the pool, then the descriptor
        self._file.close()
