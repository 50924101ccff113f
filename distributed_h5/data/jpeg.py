"""JPEG clip storage: every frame of ``X`` as JPEG bytes in one contiguous dataset. Imports numpy, h5py, simplejpeg.

The layout (``codec="jpeg"``): ``X`` is a group, not a dataset, with attributes

* ``codec = "jpeg"``, ``quality`` (1-100), ``subsampling`` (``"444"`` or ``"420"``; one
  channel has no chroma and is stored ``"444"``), ``dtype = "uint8"``;
* ``shape = (samples, frames, channels, rows, cols)``: the clips it decodes to, as a raw ``X``;

and two datasets:

* ``bytes``: 1-D uint8, contiguous (not chunked, no filter): every frame's JPEG (JFIF) bytes
  one after another, clip-major, frame-minor;
* ``offsets``: ``samples * frames + 1`` uint64 byte offsets into ``bytes``: frame ``t`` of
  clip ``i`` (key ``k = i * frames + t``) is ``bytes[offsets[k]:offsets[k + 1]]``;
  ``offsets[0] == 0`` and ``offsets[-1] == len(bytes)``.

Frames are RGB (3 channels) or grayscale (1), 8 bits, baseline JPEG. Because ``bytes`` is
contiguous, a frame's place in the file is ``bytes.id.get_offset() + offsets[k]``:
:class:`JpegClips` reads it with ``os.pread`` (no HDF5 call, no lock) and decodes it with
libjpeg-turbo (simplejpeg releases the GIL) in threads, straight into the caller's array.

A plain h5py + Pillow user reads frame ``t`` of clip ``i`` as a (rows, cols, channels)
array (rows, cols for one channel) in three lines::

    x = h5py.File("clips.h5", "r")["X"]
    k = i * x.attrs["shape"][1] + t  # frame t of clip i
    frame = np.asarray(PIL.Image.open(io.BytesIO(x["bytes"][x["offsets"][k] : x["offsets"][k + 1]])))

Writing streams clip by clip (:class:`JpegWriter`): the encoded bytes go to an unlinked
scratch file beside the output and are copied into the contiguous ``bytes`` at close, when
their total is known. The copy moves the compressed bytes once (about 1/7 of raw at q90):
0.3 ms per 16x112x112 clip against 4 ms to encode it (``python -m distributed_h5.bench.jpeg``),
where learning the sizes first would mean encoding twice.
Errors here are ``ValueError``, one line naming the file, clip and frame; the dataset layer
turns them into ``DatasetError``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import simplejpeg

from .checks import positive_int
from .preads import DescriptorReader, default_threads, pread_full, runs

CODEC = "jpeg"
SUBSAMPLINGS = ("444", "420")
DEFAULT_QUALITY = 90
DEFAULT_SUBSAMPLING = "444"
CHANNELS = {1: "GRAY", 3: "RGB"}  # channels of X -> the JPEG colour space stored
COPY_BLOCK_BYTES = 16 << 20  # scratch bytes copied into 'bytes' per write at close
OFFSETS_BLOCK = 1 << 20  # offsets checked per read by validate_jpeg_x: bounded memory


def is_jpeg_x(obj) -> bool:
    """True when ``obj`` (an h5py object, e.g. ``file["X"]``) is a JPEG-clip group."""
    return isinstance(obj, h5py.Group) and obj.attrs.get("codec") == CODEC


def check_options(quality, subsampling) -> None:
    if not isinstance(quality, (int, np.integer)) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in [1, 100]. Received: quality={quality!r}")
    if subsampling not in SUBSAMPLINGS:
        raise ValueError(f"subsampling must be one of {SUBSAMPLINGS}. Received: subsampling={subsampling!r}")


def _check_clip_shape(clip_shape) -> tuple[int, int, int, int]:
    clip_shape = tuple(int(n) for n in clip_shape)
    if len(clip_shape) != 4 or min(clip_shape) < 1 or clip_shape[1] not in CHANNELS:
        raise ValueError("clip_shape must be (frames, channels, rows, cols), all >= 1, with 1 or 3 channels. "
                         f"Received: clip_shape={clip_shape!r}")
    return clip_shape


def encode_clip(clip: np.ndarray, quality: int = DEFAULT_QUALITY,
                subsampling: str = DEFAULT_SUBSAMPLING) -> list[bytes]:
    """Each frame of ``clip`` (frames, channels, rows, cols) uint8, 1 or 3 channels, as JPEG bytes.

    Example:
        >>> frames = encode_clip(np.zeros((16, 3, 112, 112), np.uint8), quality=90)
        >>> len(frames), frames[0][:2]
        (16, b'\\xff\\xd8')
    """
    check_options(quality, subsampling)
    clip = np.asarray(clip)
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[1] not in CHANNELS:
        raise ValueError("clip must be a uint8 array (frames, channels, rows, cols) with 1 or 3 channels. "
                         f"Received: {clip.dtype} {clip.shape}")
    colorspace = CHANNELS[clip.shape[1]]
    # JPEG stores pixels interleaved (rows, cols, channels); X is channels-first.
    return [simplejpeg.encode_jpeg(np.ascontiguousarray(frame.transpose(1, 2, 0)), int(quality), colorspace,
                                   subsampling if colorspace == "RGB" else "444")
            for frame in clip]


class JpegWriter:
    """Writes clips, one at a time or in blocks, as the JPEG layout ``file[name]``; created at :meth:`close`.

    Nothing appears in ``file`` before :meth:`close`: a failed or interrupted conversion leaves
    no partial ``X``. The encoded bytes wait in an unlinked scratch file in ``scratch_dir``
    (default: the folder of ``file``, so they use the output's file system) and the byte offsets
    in memory (8 bytes per frame, as :class:`JpegClips` holds them).

    Args:
        file: an h5py File or Group open for writing.
        clip_shape: (frames, channels, rows, cols); 1 or 3 channels.
        quality, subsampling: JPEG quality (default 90) and chroma subsampling ("444" default, or "420").
        samples: clips expected; :meth:`close` refuses another count. None: as many as appended.
        name: the group to create (default "X").
        threads: encoder threads for :meth:`extend` (simplejpeg releases the GIL).
        scratch_dir: where the scratch file lives.

    Example:
        >>> with h5py.File(path, "w") as file, JpegWriter(file, (16, 3, 112, 112)) as writer:  # doctest: +SKIP
        ...     for clip in clips:
        ...         writer.append(clip)
    """

    def __init__(self, file: h5py.Group, clip_shape: Sequence[int], *, quality: int = DEFAULT_QUALITY,
                 subsampling: str = DEFAULT_SUBSAMPLING, samples: int | None = None, name: str = "X",
                 threads: int = 1, scratch_dir: str | os.PathLike | None = None):
        check_options(quality, subsampling)
        self.clip_shape = _check_clip_shape(clip_shape)
        if samples is not None and (not isinstance(samples, (int, np.integer)) or samples < 0):
            raise ValueError(f"samples must be None or an integer >= 0. Received: samples={samples!r}")
        positive_int("threads", threads)
        if name in file:
            raise ValueError(f"{file.file.filename}: '{name}' already exists; expected a new name")
        self.file, self.name, self.samples = file, name, samples
        self.quality, self.subsampling = int(quality), subsampling if self.clip_shape[1] == 3 else "444"
        folder = scratch_dir if scratch_dir is not None else os.path.dirname(os.path.abspath(file.file.filename))
        self._scratch = tempfile.TemporaryFile(dir=folder, prefix=".jpeg-bytes-")  # unlinked: never left behind
        self._lengths = np.zeros(1024 * self.clip_shape[0], dtype=np.int64)
        self.clips = 0  # clips appended so far
        self.group: h5py.Group | None = None  # the group, once closed
        self._open = True
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="distributed_h5-encode") if threads > 1 else None

    def append(self, clip: np.ndarray) -> None:
        """Encode one clip (frames, channels, rows, cols) uint8 and append it."""
        clip = np.asarray(clip)
        if clip.shape != self.clip_shape:
            raise ValueError(f"clip must have shape {self.clip_shape}. Received: {clip.shape}")
        self._append_frames(encode_clip(clip, self.quality, self.subsampling))

    def extend(self, clips: np.ndarray) -> None:
        """Encode a block of clips (n, frames, channels, rows, cols) uint8, in the writer's threads, and append them."""
        clips = np.asarray(clips)
        if clips.shape[1:] != self.clip_shape or clips.ndim != 5:
            raise ValueError(f"clips must have shape (n, *{self.clip_shape}). Received: {clips.shape}")
        encode = lambda clip: encode_clip(clip, self.quality, self.subsampling)  # noqa: E731
        for frames in (self._pool.map(encode, clips) if self._pool else map(encode, clips)):
            self._append_frames(frames)

    def append_encoded(self, frames: Sequence[bytes]) -> None:
        """Append one clip already encoded (one JPEG per frame), copied without re-encoding.

        Each frame's header must give the clip's rows, cols and channels; its quality and
        subsampling are taken as they are (the group's attributes describe what was encoded here).
        """
        if len(frames) != self.clip_shape[0]:
            raise ValueError(f"clip {self.clips}: expected {self.clip_shape[0]} encoded frames. "
                             f"Received: {len(frames)}")
        rows, cols = self.clip_shape[2:]
        for t, data in enumerate(frames):
            try:
                height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            except ValueError as exc:
                raise ValueError(f"clip {self.clips} frame {t}: not a JPEG ({exc})") from exc
            channels = 1 if colorspace == "Gray" else 3
            if (height, width, channels) != (rows, cols, self.clip_shape[1]):
                raise ValueError(f"clip {self.clips} frame {t}: JPEG of {height}x{width}, {channels} channel(s); "
                                 f"expected {rows}x{cols}, {self.clip_shape[1]}")
        self._append_frames(frames)

    def append_from(self, group: h5py.Group) -> None:
        """Append every clip of another JPEG-clip group (a part written by another rank), bytes copied as they are.

        The group must be valid (:func:`validate_jpeg_x`) with this writer's clip shape, quality
        and subsampling. Memory: one block of bytes and the group's offsets.
        """
        where = f"{group.file.filename}: '{group.name}'"
        problems = validate_jpeg_x(group) if is_jpeg_x(group) else ["not a JPEG-clip group (attribute codec='jpeg')"]
        if problems:
            raise ValueError(f"{where}: {problems[0]}")
        samples, *clip_shape = (int(n) for n in group.attrs["shape"])
        found = (tuple(clip_shape), int(group.attrs["quality"]), str(group.attrs["subsampling"]))
        if found != (self.clip_shape, self.quality, self.subsampling):
            raise ValueError(f"{where}: clips {found[0]}, quality {found[1]}, subsampling {found[2]!r}; expected "
                             f"{self.clip_shape}, {self.quality}, {self.subsampling!r} as this writer's")
        if self.samples is not None and self.clips + samples > self.samples:
            raise ValueError(f"{self.file.file.filename}: '{self.name}' expects {self.samples} clips; "
                             f"{self.clips} + {samples} from {where} are more")
        lengths = np.diff(group["offsets"][:].astype(np.int64))
        start, frames = self.clips * self.clip_shape[0], lengths.size
        while start + frames > self._lengths.size:
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        data = group["bytes"]
        for begin in range(0, data.size, COPY_BLOCK_BYTES):
            self._scratch.write(data[begin : begin + COPY_BLOCK_BYTES].tobytes())
        self._lengths[start : start + frames] = lengths
        self.clips += samples

    def _append_frames(self, frames: Sequence[bytes]) -> None:
        if self.samples is not None and self.clips >= self.samples:
            raise ValueError(f"{self.file.file.filename}: '{self.name}' expects {self.samples} clips; "
                             f"received more")
        start = self.clips * self.clip_shape[0]
        if start + len(frames) > self._lengths.size:  # doubling: appends cost amortised O(1)
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        for t, data in enumerate(frames):
            self._scratch.write(data)
            self._lengths[start + t] = len(data)
        self.clips += 1

    def close(self) -> h5py.Group:
        """Create ``file[name]``: the contiguous ``bytes``, the ``offsets`` and the attributes. Returns the group.

        A second call returns the same group."""
        if not self._open:
            if self.group is None:
                raise ValueError(f"{self.file.file.filename}: the writer of '{self.name}' was discarded")
            return self.group
        try:
            if self.samples is not None and self.clips != self.samples:
                raise ValueError(f"{self.file.file.filename}: '{self.name}' expects {self.samples} clips; "
                                 f"{self.clips} were appended")
            frames = self.clips * self.clip_shape[0]
            offsets = np.zeros(frames + 1, dtype=np.uint64)
            np.cumsum(self._lengths[:frames], out=offsets[1:])
            total = int(offsets[-1])
            group = self.file.create_group(self.name)
            group.attrs.update(codec=CODEC, quality=np.int64(self.quality), subsampling=self.subsampling,
                               dtype="uint8", shape=np.array((self.clips, *self.clip_shape), dtype=np.int64))
            group.create_dataset("offsets", data=offsets)
            data = group.create_dataset("bytes", shape=(total,), dtype=np.uint8)  # contiguous: no chunks, no filter
            self._scratch.seek(0)
            for start in range(0, total, COPY_BLOCK_BYTES):
                block = np.frombuffer(self._scratch.read(min(COPY_BLOCK_BYTES, total - start)), dtype=np.uint8)
                data[start : start + block.size] = block
            self.group = group
            return group
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop what was appended (closing the scratch file); nothing is written to ``file``."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._scratch.close()
        self._open = False

    def __enter__(self) -> JpegWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        elif self._open:
            self.discard()


def write_jpeg_x(file: h5py.Group, clips: Iterable[np.ndarray], shape: Sequence[int], *,
                 quality: int = DEFAULT_QUALITY, subsampling: str = DEFAULT_SUBSAMPLING, name: str = "X",
                 threads: int = 1) -> h5py.Group:
    """Write ``clips`` as the JPEG layout ``file[name]`` and return the group.

    ``clips`` yields clips (frames, channels, rows, cols) or blocks of them (n, frames, ...),
    uint8, ``shape[0]`` clips in all; ``shape`` is (samples, frames, channels, rows, cols).
    Streams: memory holds one block and the offsets. See :class:`JpegWriter`.

    Example:
        >>> with h5py.File(path, "w") as file:                                         # doctest: +SKIP
        ...     write_jpeg_x(file, clips, (100, 16, 3, 112, 112), quality=90)
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 5:
        raise ValueError(f"shape must be (samples, frames, channels, rows, cols). Received: shape={shape!r}")
    with JpegWriter(file, shape[1:], quality=quality, subsampling=subsampling, samples=shape[0], name=name,
                    threads=threads) as writer:
        for item in clips:
            if np.ndim(item) == 5:
                writer.extend(item)
            else:
                writer.append(item)
        return writer.close()


def _attr_problems(group: h5py.Group) -> list[str]:
    attrs = group.attrs
    problems = [f"attribute '{key}' is missing" for key in ("codec", "quality", "subsampling", "dtype", "shape")
                if key not in attrs]
    if problems:
        return problems
    if attrs["codec"] != CODEC:
        problems.append(f"attribute codec is {attrs['codec']!r}, expected {CODEC!r}")
    if attrs["dtype"] != "uint8":
        problems.append(f"attribute dtype is {attrs['dtype']!r}, expected 'uint8'")
    if attrs["subsampling"] not in SUBSAMPLINGS:
        problems.append(f"attribute subsampling is {attrs['subsampling']!r}, expected one of {SUBSAMPLINGS}")
    quality = attrs["quality"]
    if not np.issubdtype(np.asarray(quality).dtype, np.integer) or np.ndim(quality) or not 1 <= quality <= 100:
        problems.append(f"attribute quality is {quality!r}, expected an integer in [1, 100]")
    shape = np.asarray(attrs["shape"])
    if (not np.issubdtype(shape.dtype, np.integer) or shape.shape != (5,) or shape.min() < 0 or shape[1:].min() < 1
            or shape[2] not in CHANNELS):
        problems.append(f"attribute shape is {attrs['shape']!r}, expected 5 integers (samples, frames, channels, "
                        "rows, cols), all >= 1 but samples >= 0, with 1 or 3 channels")
    return problems


def _frame_name(key: int, frames: int) -> str:
    return f"clip {key // frames} frame {key % frames}"


def validate_jpeg_x(group: h5py.Group, probe: Iterable[int] = ()) -> list[str]:
    """The problems of a JPEG-clip group, one line each (empty when it is valid); reads no frame bytes
    unless asked.

    Checks the attributes, that ``bytes`` is 1-D uint8 and contiguous with its storage written
    and inside the file, and that ``offsets`` (samples * frames + 1 of them, read in blocks)
    start at 0, strictly increase (no empty frame) and end at ``len(bytes)``. Problems name the
    clip and frame where they are found. Every frame of the clips in ``probe`` is then decoded
    (e.g. :func:`dataset.probe_indices`), and each that fails or has the wrong size is named.
    """
    problems = _attr_problems(group)
    if problems:
        return problems
    samples, frames, channels, rows, cols = (int(n) for n in group.attrs["shape"])
    data, offsets = group.get("bytes"), group.get("offsets")
    for label, dset in (("bytes", data), ("offsets", offsets)):
        if not isinstance(dset, h5py.Dataset):
            problems.append(f"'{label}' is missing, expected a 1-D dataset")
        elif dset.ndim != 1:
            problems.append(f"'{label}' has shape {dset.shape}, expected 1-D")
    if problems:
        return problems
    if data.dtype != np.uint8:
        problems.append(f"'bytes' has dtype {data.dtype}, expected uint8")
    plist = data.id.get_create_plist()
    if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or plist.get_external_count():
        problems.append("'bytes' is not contiguous in the file (chunked, filtered or external); "
                        "expected one contiguous dataset so frames can be read at their offsets")
    elif data.size:
        base = data.id.get_offset()
        if base is None:
            problems.append("'bytes' was never written (its storage is not allocated)")
        elif base + data.size > os.path.getsize(data.file.filename):
            problems.append(f"'bytes' ends at byte {base + data.size} but {data.file.filename} has "
                            f"{os.path.getsize(data.file.filename)} bytes (truncated?)")
    if not np.issubdtype(offsets.dtype, np.integer):
        problems.append(f"'offsets' has dtype {offsets.dtype}, expected uint64")
    keys = samples * frames
    if offsets.shape[0] != keys + 1:
        problems.append(f"'offsets' has {offsets.shape[0]} entries, expected samples * frames + 1 = {keys + 1}")
    if problems:
        return problems
    previous = None
    for start in range(0, keys + 1, OFFSETS_BLOCK):
        block = offsets[start : start + OFFSETS_BLOCK].astype(np.int64)
        if previous is None and block[0] != 0:
            return [f"'offsets' starts at {block[0]}, expected 0"]
        values = block if previous is None else np.r_[previous, block]
        first = start if previous is None else start - 1  # the key of values[0]
        bad = np.flatnonzero(np.diff(values) <= 0)
        if bad.size:
            key, j = first + int(bad[0]), int(bad[0])
            return [f"{_frame_name(key, frames)} has {values[j + 1] - values[j]} bytes (offsets[{key}] = {values[j]}, "
                    f"offsets[{key + 1}] = {values[j + 1]}); expected > 0: 'offsets' must strictly increase"]
        previous = block[-1]
    if previous != data.size:
        return [f"'offsets' ends at {previous} but 'bytes' has {data.size} bytes; expected them equal"]
    for clip in probe:
        problems.extend(_probe_clip(group, int(clip), frames, (rows, cols, channels)))
    return problems


def _probe_clip(group: h5py.Group, clip: int, frames: int, shape: tuple[int, int, int]) -> list[str]:
    span = group["offsets"][clip * frames : (clip + 1) * frames + 1].astype(np.int64)
    data = group["bytes"][span[0] : span[-1]]
    problems = []
    for t in range(frames):
        try:
            image = simplejpeg.decode_jpeg(data[span[t] - span[0] : span[t + 1] - span[0]], CHANNELS[shape[2]])
        except ValueError as exc:
            problems.append(f"clip {clip} frame {t} does not decode as JPEG (corrupt?): {exc}")
            continue
        if image.shape != shape:
            problems.append(f"clip {clip} frame {t} decodes to {image.shape}, expected (rows, cols, channels) {shape}")
    return problems


class JpegClips(DescriptorReader):
    """Decodes clips of a JPEG-layout ``X`` into a caller's array, in threads, without HDF5 on the hot path.

    At open, :func:`validate_jpeg_x` checks the group, the offsets are read once and the file
    offset of ``bytes`` is found; the HDF5 file is then closed. A read is ``os.pread`` of each
    run of needed frames on the reader's own descriptor and one libjpeg-turbo decode per frame
    (simplejpeg, which releases the GIL) into a per-thread scratch, transposed into ``out``
    (X is channels-first; JPEG interleaves); each thread takes the next clip not yet taken. One
    :meth:`read` at a time (the scratch is the reader's); open one per process; it is not picklable.

    Args:
        path: the HDF5 file.
        name: the group (default "X"); an external link is followed, and its file is read.
        threads: decoder threads (default: the usable cores, at most 4).
        locking: HDF5 file locking while opening (off, as :func:`dataset.open_file`).

    Example:
        >>> with JpegClips("clips.h5", threads=2) as clips:                              # doctest: +SKIP
        ...     batch = clips.read(np.array([3, 4, 9]))                  # (3, frames, channels, rows, cols)
        ...     windows = clips.read(np.array([3, 4]), frames=np.array([[0, 2], [5, 7]]))   # 2 frames each
    """

    def __init__(self, path: str | os.PathLike, *, name: str = "X", threads: int | None = None,
                 locking: bool = False):
        threads = default_threads() if threads is None else threads
        positive_int("threads", threads)
        self.path = os.fspath(path)
        self._fd = self._pool = None
        with h5py.File(self.path, "r", locking=locking) as file:
            group = file.get(name)
            if not is_jpeg_x(group):
                raise ValueError(f"{self.path}: '{name}' is not a JPEG-clip group (attribute codec='jpeg')")
            problems = validate_jpeg_x(group)
            if problems:
                more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
                raise ValueError(f"{self.path}: '{name}': {problems[0]}{more}")
            self.name = name
            self.samples, *clip_shape = (int(n) for n in group.attrs["shape"])
            self.clip_shape: tuple[int, int, int, int] = tuple(clip_shape)
            self.quality, self.subsampling = int(group.attrs["quality"]), str(group.attrs["subsampling"])
            self.offsets = group["offsets"][:].astype(np.int64)  # byte offsets within 'bytes', one per frame + 1
            data = group["bytes"]
            self.data_path = data.file.filename  # the file that holds the bytes (another one behind a link)
            self._base = data.id.get_offset() or 0
        frames, channels, rows, cols = self.clip_shape
        self._colorspace = CHANNELS[channels]
        self._frame_shape = (rows, cols, channels)
        self.threads = threads
        self._scratch = [np.empty(self._frame_shape, dtype=np.uint8) for _ in range(threads)]
        self._fd = os.open(self.data_path, os.O_RDONLY)
        if threads > 1:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="distributed_h5-jpeg")

    def clip_bytes(self, index: int) -> int:
        """Stored JPEG bytes of clip ``index``, all its frames."""
        frames = self.clip_shape[0]
        return int(self.offsets[(index + 1) * frames] - self.offsets[index * frames])

    def read(self, indices: np.ndarray, out: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
        """Clips ``indices`` decoded into ``out`` (n, F', channels, rows, cols) uint8; returns ``out``.

        Args:
            indices: clip indices in [0, samples), any order (sorted reads fastest).
            out: C-contiguous uint8 of that shape, allocated when None.
            frames: None for every frame (F' = frames), or an integer array (n, F') of frame
                indices per clip (a temporal window, any order): only those frames are read and decoded.
        """
        indices = np.asarray(indices, dtype=np.int64)
        stored = self.clip_shape[0]
        if indices.ndim != 1 or indices.size == 0:
            raise ValueError(f"indices must be a non-empty 1-D array. Received: shape {indices.shape}")
        if indices.min() < 0 or indices.max() >= self.samples:
            raise ValueError(f"indices must be in [0, {self.samples}). "
                             f"Received: min {indices.min()}, max {indices.max()}")
        if frames is None:
            frames = np.broadcast_to(np.arange(stored), (indices.size, stored))
        frames = np.asarray(frames, dtype=np.int64)
        if frames.ndim != 2 or frames.shape[0] != indices.size or frames.shape[1] == 0:
            raise ValueError(f"frames must be None or an integer array (len(indices), frames per clip) = "
                             f"({indices.size}, F'). Received: shape {frames.shape}")
        if frames.min() < 0 or frames.max() >= stored:
            raise ValueError(f"frames must be in [0, {stored}). Received: min {frames.min()}, max {frames.max()}")
        shape = (indices.size, frames.shape[1], *self.clip_shape[1:])
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}. "
                             f"Received: {out.dtype} {out.shape}")
        keys = (indices[:, None] * stored + frames).reshape(-1)  # one per output frame, in output order
        # Every run of frames adjacent in the file, asked of the disk at once (see preads.advise).
        starts, ends = runs(keys)
        first, last = keys[starts], keys[ends - 1]
        self._advise(zip((self._base + self.offsets[first]).tolist(),
                             (self.offsets[last + 1] - self.offsets[first]).tolist()))
        flat = out.reshape(-1, *self.clip_shape[1:])
        per = frames.shape[1]  # output frames per clip
        if self._pool is None or indices.size == 1:
            self._decode_share(0, keys, 0, keys.size, flat)
            return out
        # Each thread takes the next clip not yet taken and decodes it into its rows of out: the
        # threads finish together even when one core is slower (another process, a busy sibling).
        rows, lock, failed = iter(range(indices.size)), threading.Lock(), []

        def work(worker: int) -> None:
            while not failed:
                with lock:
                    row = next(rows, None)
                if row is None:
                    return
                try:
                    self._decode_share(worker, keys, row * per, (row + 1) * per, flat)
                except BaseException:
                    failed.append(row)  # the others stop at their next clip
                    raise

        futures = [self._pool.submit(work, worker) for worker in range(min(self.threads, indices.size))]
        for future in futures:
            future.result()
        return out

    def _decode_share(self, worker: int, keys: np.ndarray, begin: int, end: int, flat: np.ndarray) -> None:
        """Decode output frames [begin, end): one pread per run of frames adjacent in the file."""
        share = keys[begin:end]
        for run_start, run_end in zip(*(bounds.tolist() for bounds in runs(share))):
            first, last = int(share[run_start]), int(share[run_end - 1])
            starts = self.offsets[first : last + 2]
            view = self._pread(int(starts[0]), int(starts[-1] - starts[0]))
            relative = (starts - starts[0]).tolist()
            for step in range(run_end - run_start):
                self._decode(worker, view[relative[step] : relative[step + 1]], first + step,
                             flat[begin + run_start + step])

    def _pread(self, offset: int, size: int) -> memoryview:
        view = self._buffer(size)
        done = pread_full(self._fd, view, self._base + offset)
        if done < size:
            raise ValueError(f"{self.data_path}: unexpected end of file at byte {self._base + offset + done} "
                             f"reading '{self.name}/bytes' (truncated?)")
        return view

    def _decode(self, worker: int, data: memoryview, key: int, target: np.ndarray) -> None:
        frames = self.clip_shape[0]
        channels = self._frame_shape[2]
        # One channel decodes straight into out; RGB is interleaved in JPEG and planar in X.
        scratch = target.reshape(self._frame_shape) if channels == 1 else self._scratch[worker]
        try:
            image = simplejpeg.decode_jpeg(data, self._colorspace, buffer=scratch)
        except ValueError as exc:
            self._wrong_size(data, key)  # a frame larger than the buffer fails the same way: say so
            raise ValueError(f"{self.path}: clip {key // frames} frame {key % frames} of '{self.name}' "
                             f"does not decode as JPEG (corrupt?): {exc}") from exc
        if image.shape != self._frame_shape:
            self._wrong_size(data, key)
        if channels != 1:
            target[...] = image.transpose(2, 0, 1)

    def _wrong_size(self, data: memoryview, key: int) -> None:
        """Raise the error for a frame whose header gives another size than X's; return if it cannot tell."""
        try:
            rows, cols, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return
        shape = (rows, cols, 1 if colorspace == "Gray" else 3)
        if shape != self._frame_shape:
            frames = self.clip_shape[0]
            raise ValueError(f"{self.path}: clip {key // frames} frame {key % frames} of '{self.name}' is a JPEG of "
                             f"(rows, cols, channels) {shape}, expected {self._frame_shape}")
