"""A learnable synthetic video dataset in the package's HDF5 layout.

Each clip is uint8 noise with a bright square moving across it; the direction of motion
is the class (class k of K moves at angle 2*pi*k/K), so a model must look at several
frames to classify it. Clips are self-describing: the first four pixels of frame 0,
channel 0, row 0 hold the sample index as little-endian bytes (see :func:`clip_index`),
which lets tests check that clips and labels stay aligned through any reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from . import jpeg
from .checks import positive_int, positive_pair
from .outputs import atomic_write, check_output

CHUNKINGS = ("clip", "none")
COMPRESSIONS = ("none", "gzip", "lzf", "zstd")  # zstd: hdf5plugin's filter, level 3
CODECS = ("raw", "jpeg")  # X as stored clips (any of COMPRESSIONS), or JPEG frames (data/jpeg.py)
BLOCK_BYTES = 64 << 20  # clips generated and written at a time, so memory stays bounded


def compression_options(compression: str) -> dict:
    """h5py's ``create_dataset`` arguments for one of :data:`COMPRESSIONS`."""
    if compression == "zstd":
        import hdf5plugin

        return dict(hdf5plugin.Zstd(clevel=3))
    return {"compression": None if compression == "none" else compression}


def clip_index(clips: np.ndarray) -> np.ndarray:
    """The sample index stored in each clip of a (n, frames, channels, rows, cols) batch."""
    return np.ascontiguousarray(clips[:, 0, 0, 0, :4]).view("<u4").reshape(-1).astype(np.int64)


def make_clips(indices: np.ndarray, labels: np.ndarray, *, frames: int, channels: int, size: tuple[int, int],
               classes: int, rng: np.random.Generator) -> np.ndarray:
    """Clips for ``indices`` with the motion of ``labels``, shape (n, frames, channels, rows, cols), uint8."""
    n, (rows, cols) = len(indices), size
    side = max(2, min(rows, cols) // 4)
    speed = max(1.0, min(rows, cols) / (2 * frames))
    angle = 2 * np.pi * labels / classes
    start = rng.uniform(0, 1, (n, 2)) * (rows, cols)
    t = np.arange(frames)
    top = np.floor(start[:, :1] + speed * np.sin(angle)[:, None] * t).astype(np.int64)  # (n, frames)
    left = np.floor(start[:, 1:] + speed * np.cos(angle)[:, None] * t).astype(np.int64)
    in_rows = (np.arange(rows)[None, None, :] - top[:, :, None]) % rows < side  # wraps at the edges
    in_cols = (np.arange(cols)[None, None, :] - left[:, :, None]) % cols < side
    square = in_rows[:, :, None, :, None] & in_cols[:, :, None, None, :]  # (n, frames, 1, rows, cols)
    clips = rng.integers(0, 96, (n, frames, channels, rows, cols), dtype=np.uint8)
    clips[np.broadcast_to(square, clips.shape)] = 255
    if cols >= 4:
        clips[:, 0, 0, 0, :4] = np.asarray(indices, dtype="<u4").view(np.uint8).reshape(n, 4)
    return clips


def make_synthetic(
    path: str | os.PathLike,
    *,
    samples: int,
    frames: int = 16,
    channels: int = 3,
    size: tuple[int, int] = (64, 64),
    classes: int = 4,
    chunks: str = "clip",
    compression: str = "none",
    seed: int = 0,
    sample_count: int | None = None,
    progress: bool = True,
    codec: str = "raw",
    quality: int = jpeg.DEFAULT_QUALITY,
    subsampling: str = jpeg.DEFAULT_SUBSAMPLING,
) -> Path:
    """Write a synthetic dataset to ``path`` and return it.

    The file is written under a temporary name (``path.partial``) and renamed when complete
    (:func:`outputs.atomic_write`), so an interrupted run never leaves a file that looks valid,
    nor the temporary one.
    ValueError, before any work, if ``path`` cannot be written (see :func:`outputs.check_output`).

    Args:
        samples: rows of X and Y.
        frames, channels, size: clip shape (frames, channels, rows, cols) with size = (rows, cols).
        classes: number of classes (directions of motion).
        chunks: ``"clip"`` (one clip per HDF5 chunk) or ``"none"`` (contiguous).
        compression: ``"none"``, ``"gzip"``, ``"lzf"`` or ``"zstd"`` (lossless, hdf5plugin's filter,
            decoded in the reader's threads); needs ``chunks="clip"``.
        seed: makes the file reproducible.
        sample_count: the ``sample_count`` attribute (default: ``samples``).
        codec: ``"raw"`` (default) or ``"jpeg"``: every frame a JPEG of ``quality`` (1-100,
            default 90) and chroma ``subsampling`` (``"444"`` default, or ``"420"``); see
            :mod:`distributed_h5.data.jpeg`. JPEG is lossy: :func:`clip_index`'s pixels do not
            survive it, so its clips do not carry their index.

    Example:
        >>> make_synthetic("demo.h5", samples=64, frames=8, size=(32, 32))  # doctest: +SKIP
    """
    for name, value in (("samples", samples), ("frames", frames), ("channels", channels), ("classes", classes)):
        positive_int(name, value)
    size = positive_pair("size", size, meaning="rows, cols")
    if chunks not in CHUNKINGS:
        raise ValueError(f"chunks must be one of {CHUNKINGS}. Received: chunks={chunks!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}")
    if compression != "none" and chunks == "none":
        raise ValueError(f"compression={compression!r} needs chunked storage; use chunks='clip'")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}. Received: codec={codec!r}")
    if codec == "jpeg" and compression != "none":
        raise ValueError(f"codec='jpeg' stores JPEG frames, which compression={compression!r} cannot apply to; "
                         "use compression='none'")
    sample_count = samples if sample_count is None else sample_count
    if not 1 <= sample_count <= samples:
        raise ValueError(f"sample_count must be in [1, {samples}]. Received: sample_count={sample_count!r}")

    path = check_output(path)  # before any work: a missing or read-only directory, or a directory as OUT
    clip_shape = (frames, channels, *size)
    block = max(1, BLOCK_BYTES // int(np.prod(clip_shape)))
    labels = np.random.default_rng((seed, 0)).integers(0, classes, samples)
    with atomic_write(path, partial=path.with_name(path.name + ".partial")) as partial, h5py.File(partial, "w") as file:
        if codec == "jpeg":  # frames encoded in threads; X appears, contiguous, when all are written
            x = jpeg.JpegWriter(file, clip_shape, quality=quality, subsampling=subsampling, samples=samples,
                                threads=jpeg.default_threads())
            write = lambda rows, clips: x.extend(clips)  # noqa: E731  (rows come in order)
        else:
            x = file.create_dataset(
                "X",
                shape=(samples, *clip_shape),
                dtype=np.uint8,
                chunks=(1, *clip_shape) if chunks == "clip" else None,
                **compression_options(compression),
            )
            write = x.__setitem__
        y = file.create_dataset("Y", shape=(samples, classes), dtype=np.uint8)
        label_block = max(1, BLOCK_BYTES // classes)  # one-hot rows built per block: never a classes**2 identity
        for start in range(0, samples, label_block):
            stop = min(start + label_block, samples)
            one_hot = np.zeros((stop - start, classes), dtype=np.uint8)
            one_hot[np.arange(stop - start), labels[start:stop]] = 1
            y[start:stop] = one_hot
        with tqdm(total=samples, unit="clip", desc=f"writing {path.name}", disable=not progress) as bar:
            for start in range(0, samples, block):
                stop = min(start + block, samples)
                rng = np.random.default_rng((seed, 1, start))
                write(slice(start, stop), make_clips(np.arange(start, stop), labels[start:stop], frames=frames,
                                                     channels=channels, size=size, classes=classes, rng=rng))
                bar.update(stop - start)
        if codec == "jpeg":
            x.close()
        file.attrs["sample_count"] = np.int64(sample_count)
        file.attrs["generator"] = "distributed_h5.synthetic"
    return path
