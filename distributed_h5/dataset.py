"""The HDF5 video layout: open a file read-only, validate it, describe it.

The layout:

* ``X``: a numeric dataset of shape (samples, frames, channels, rows, cols);
* ``Y``: a dataset of shape (samples, classes) holding one-hot labels;
* root attribute ``sample_count``: how many leading samples are in use (<= samples).

Every malformed file raises :class:`DatasetError`, naming the file, the object and what
was found against what was expected. Files are only ever opened read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

LABEL_BLOCK = 65536  # rows of Y validated per read, so label loading needs bounded memory


class DatasetError(ValueError):
    """The HDF5 file does not hold a valid video dataset."""


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`describe` finds in a valid file."""

    path: str
    sample_count: int
    rows: int  # rows of X and Y; sample_count may be smaller
    clip_shape: tuple[int, int, int, int]  # (frames, channels, rows, cols)
    dtype: np.dtype
    classes: int
    chunks: tuple[int, ...] | None
    compression: str | None
    file_bytes: int

    @property
    def clip_bytes(self) -> int:
        return int(np.prod(self.clip_shape)) * self.dtype.itemsize


def open_file(path: str | os.PathLike, *, locking: bool = False) -> h5py.File:
    """Open ``path`` read-only, turning every failure into a :class:`DatasetError`.

    HDF5 file locking is off by default: it fails on many parallel file systems, and
    nothing here writes. Pass ``locking=True`` to turn it back on.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a directory, expected an HDF5 file")
    try:
        return h5py.File(path, "r", locking=locking)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be opened as HDF5 (not HDF5, truncated or corrupt): {exc}") from exc


def validate(file: h5py.File) -> DatasetInfo:
    """Check ``file`` against the layout and return what it holds."""
    path = file.filename
    for name in ("X", "Y"):
        if name not in file:
            raise DatasetError(f"{path}: dataset '{name}' is missing; expected datasets 'X' and 'Y'")
        if not isinstance(file[name], h5py.Dataset):
            raise DatasetError(f"{path}: '{name}' is a {type(file[name]).__name__}, expected a dataset")
    x, y = file["X"], file["Y"]
    if x.ndim != 5:
        raise DatasetError(
            f"{path}: dataset 'X' has shape {x.shape}, expected 5 dimensions (samples, frames, channels, rows, cols)"
        )
    if y.ndim != 2:
        raise DatasetError(f"{path}: dataset 'Y' has shape {y.shape}, expected 2 dimensions (samples, classes)")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{path}: 'X' has {x.shape[0]} rows but 'Y' has {y.shape[0]}; expected equal row counts")
    for name, dset in (("X", x), ("Y", y)):
        if dset.dtype.kind not in "uif":
            raise DatasetError(f"{path}: dataset '{name}' has dtype {dset.dtype}, expected a numeric dtype")
    if "sample_count" not in file.attrs:
        raise DatasetError(f"{path}: root attribute 'sample_count' is missing; expected an integer in [1, {x.shape[0]}]")
    sample_count = file.attrs["sample_count"]
    if isinstance(sample_count, np.ndarray) and sample_count.shape in ((), (1,)):
        sample_count = sample_count.reshape(-1)[0]
    if not isinstance(sample_count, (int, np.integer)) or isinstance(sample_count, (bool, np.bool_)):
        shown = sample_count.item() if isinstance(sample_count, np.generic) else sample_count
        raise DatasetError(
            f"{path}: attribute 'sample_count' is {shown!r} ({type(sample_count).__name__}), expected an integer"
        )
    if not 1 <= sample_count <= x.shape[0]:
        raise DatasetError(f"{path}: attribute 'sample_count' is {sample_count}, expected an integer in [1, {x.shape[0]}]")
    return DatasetInfo(
        path=path,
        sample_count=int(sample_count),
        rows=x.shape[0],
        clip_shape=tuple(x.shape[1:]),
        dtype=x.dtype,
        classes=y.shape[1],
        chunks=x.chunks,
        compression=x.compression,
        file_bytes=os.path.getsize(path),
    )


def describe(path: str | os.PathLike, *, locking: bool = False) -> DatasetInfo:
    """Open, validate and close ``path``; raise :class:`DatasetError` if it is not a valid dataset."""
    with open_file(path, locking=locking) as file:
        return validate(file)


def read_labels(file: h5py.File, sample_count: int) -> np.ndarray:
    """The class index of each of the first ``sample_count`` rows of ``Y``, checking each row is one-hot."""
    y = file["Y"]
    labels = np.empty(sample_count, dtype=np.int32)
    for start in range(0, sample_count, LABEL_BLOCK):
        try:
            block = y[start : min(start + LABEL_BLOCK, sample_count)]
        except OSError as exc:
            raise DatasetError(f"{file.filename}: dataset 'Y' cannot be read (corrupt?): {exc}") from exc
        ones = block == 1
        bad = np.flatnonzero((ones.sum(axis=1) != 1) | ((block != 0) & ~ones).any(axis=1))
        if bad.size:
            row = start + int(bad[0])
            raise DatasetError(
                f"{file.filename}: row {row} of 'Y' is {block[bad[0]].tolist()}, expected one-hot "
                f"(a single 1, the rest 0); {bad.size} such rows in [{start}, {start + len(block)})"
            )
        labels[start : start + len(block)] = ones.argmax(axis=1)
    return labels
