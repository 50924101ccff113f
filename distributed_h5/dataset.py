"""The HDF5 video layout: open a file read-only, validate it, describe it.

The layout:

* ``X``: a numeric dataset of shape (samples, frames, channels, rows, cols);
* ``Y``: a dataset of shape (samples, classes) holding one-hot labels;
* root attribute ``sample_count``: how many leading samples are in use (<= samples).
* optional ``groups``: one integer >= 0 per row, the source video of the clip (clips of one
  source video stay on one side of a ``split="groups"`` split);
* optional ``subset``: one integer per row, 0 train or 1 validation (an official split list,
  used by ``split="file"``).

Every malformed file raises :class:`DatasetError`, naming the file, the object and what
was found against what was expected. Files are only ever opened read-only. Imports h5py
and numpy only (no TensorFlow, Keras, Horovod or JAX).

Beyond the layout, :func:`validate` refuses data that would silently read as fill values:
``X`` or ``Y`` whose storage was never written (wholly or for some rows in use), a virtual
dataset whose source file or dataset is missing, and external raw storage that is missing;
``allow_unwritten=True`` accepts them. An external link (``X`` stored in another file) is
followed; one whose target cannot be opened is a :class:`DatasetError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from .sharding import SPLITS

LABEL_BLOCK = 65536  # rows of Y validated per read, so label loading needs bounded memory
PROBE_CLIPS = 8  # clips read at open (first, last and spread between) to catch unreadable data early
BAD_ROWS_SHOWN = 5  # bad label rows named in the error


class DatasetError(ValueError):
    """The HDF5 file does not hold a valid video dataset."""


OPTIONAL_INDEX_DATASETS = ("groups", "subset")  # one integer per row of X, checked when present


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
    has_groups: bool = False  # a 'groups' dataset (source video per clip)
    has_subset: bool = False  # a 'subset' dataset (0 train, 1 validation)

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


def _link_target(file: h5py.File, link: h5py.ExternalLink) -> str | None:
    """The file an external link points to, found as HDF5 looks for it, or None if there is none."""
    if os.path.isabs(link.filename):
        return link.filename if os.path.exists(link.filename) else None
    prefixes = [os.environ.get("HDF5_EXT_PREFIX"), os.path.dirname(os.path.abspath(file.filename)), os.getcwd()]
    found = (os.path.join(prefix, link.filename) for prefix in prefixes if prefix)
    return next((candidate for candidate in found if os.path.exists(candidate)), None)


def _dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """``file[name]`` as a dataset, following links, or a :class:`DatasetError` saying why not."""
    path = file.filename
    link = file.get(name, getlink=True)
    if link is None:
        raise DatasetError(f"{path}: dataset '{name}' is missing; expected datasets 'X' and 'Y'")
    try:
        obj = file[name]
    except (KeyError, OSError) as exc:
        if isinstance(link, h5py.ExternalLink):
            target = _link_target(file, link)
            reason = "no such file" if target is None else f"{target} has no object '{link.path}' or is not HDF5"
            raise DatasetError(
                f"{path}: '{name}' is an external link to '{link.path}' in {link.filename}, which cannot be "
                f"opened ({reason}); relative targets are looked for next to {path}"
            ) from exc
        raise DatasetError(f"{path}: '{name}' cannot be opened (a dangling link?): {exc}") from exc
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{path}: '{name}' is a {type(obj).__name__}, expected a dataset")
    return obj


def _virtual_source_problem(dset: h5py.Dataset, locking: bool) -> str | None:
    """Why some source of a virtual dataset cannot be read, or None if every source can."""
    holder = dset.file.filename
    for source in dset.virtual_sources():
        if source.file_name == ".":  # a source in the same file
            if source.dset_name not in dset.file:
                return f"its source dataset '{source.dset_name}' is missing from the same file"
            continue
        if os.path.isabs(source.file_name):
            candidates = [source.file_name]
        else:
            prefixes = [os.environ.get("HDF5_VDS_PREFIX"), os.path.dirname(os.path.abspath(holder)), os.getcwd()]
            candidates = [os.path.join(prefix, source.file_name) for prefix in prefixes if prefix]
        found = next((candidate for candidate in candidates if os.path.isfile(candidate)), None)
        if found is None:
            return f"its source file {source.file_name} is missing"
        try:
            with h5py.File(found, "r", locking=locking) as other:
                if source.dset_name not in other:
                    return f"its source dataset '{source.dset_name}' is missing from {found}"
        except OSError as exc:
            return f"its source file {found} cannot be opened: {exc}"
    return None


def _unwritten_rows(dset: h5py.Dataset, rows_in_use: int) -> str | None:
    """Which of the first ``rows_in_use`` rows of ``dset`` have no storage, in words, or None."""
    status = dset.id.get_space_status()
    if status == h5py.h5d.SPACE_STATUS_ALLOCATED:
        return None
    if status == h5py.h5d.SPACE_STATUS_NOT_ALLOCATED:
        return "was never written (its storage is not allocated, so every read gives the fill value)"
    # Partly allocated chunked storage: the rows in use must all be covered.
    chunks = dset.chunks
    per_row = int(np.prod([-(-extent // chunk) for extent, chunk in zip(dset.shape[1:], chunks[1:])]))
    allocated = np.zeros(-(-rows_in_use // chunks[0]), dtype=np.int64)

    def count(info) -> None:
        if info.chunk_offset[0] < rows_in_use:
            allocated[info.chunk_offset[0] // chunks[0]] += 1

    if hasattr(dset.id, "chunk_iter"):  # HDF5 >= 1.12.3
        dset.id.chunk_iter(count)
    else:
        for i in range(dset.id.get_num_chunks()):
            count(dset.id.get_chunk_info(i))
    missing = np.flatnonzero(allocated < per_row)
    if missing.size == 0:
        return None
    first = int(missing[0]) * chunks[0]
    return (f"has rows never written: {missing.size} chunk row(s) of {chunks[0]} rows among the "
            f"{rows_in_use} in use, the first at row {first} (they would read as the fill value)")


def check_storage(file: h5py.File, sample_count: int, *, locking: bool = False) -> None:
    """Raise :class:`DatasetError` if the first ``sample_count`` rows of X or Y would not read real data."""
    path = file.filename
    for name in ("X", "Y"):
        dset = file[name]
        where = f"dataset '{name}'" if dset.file.filename == path else f"dataset '{name}' (in {dset.file.filename})"
        plist = dset.id.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            problem = _virtual_source_problem(dset, locking)
            if problem:
                raise DatasetError(f"{path}: {where} is a virtual dataset and {problem}, so it would read as the "
                                   "fill value; pass allow_unwritten=True (train --allow-unwritten) to read it anyway")
            continue
        external = [plist.get_external(i)[0].decode() for i in range(plist.get_external_count())]
        if external:
            folder = os.path.dirname(os.path.abspath(dset.file.filename))
            missing = [name_ for name_ in external
                       if not os.path.exists(name_) and not os.path.exists(os.path.join(folder, name_))]
            if missing:
                raise DatasetError(f"{path}: {where} is stored in external raw file {missing[0]}, which is missing")
            continue
        problem = _unwritten_rows(dset, sample_count)
        if problem:
            raise DatasetError(f"{path}: {where} {problem}; pass allow_unwritten=True (train --allow-unwritten) "
                               "to read it anyway")


def probe_indices(sample_count: int, count: int = PROBE_CLIPS) -> np.ndarray:
    """The clips checked at open: the first, the last and some spread between them, sorted and distinct."""
    return np.unique(np.linspace(0, sample_count - 1, min(count, sample_count)).round().astype(np.int64))


def read_clips(file: h5py.File, indices: np.ndarray) -> np.ndarray:
    """``X[indices]`` through h5py, one hyperslab per clip, or a :class:`DatasetError` if unreadable.

    Catches corrupt or truncated chunks and filters this HDF5 cannot decode (an unregistered
    plugin, say) on the clips asked for.
    """
    x = file["X"]
    out = np.empty((len(indices), *x.shape[1:]), dtype=x.dtype)
    for row, index in enumerate(indices):
        try:
            x.read_direct(out, np.s_[int(index) : int(index) + 1], np.s_[row : row + 1])
        except (OSError, ValueError) as exc:
            filters = _filter_names(x)
            raise DatasetError(
                f"{file.filename}: clip {int(index)} of 'X' cannot be read (corrupt or truncated chunk, or a filter "
                f"this HDF5 cannot decode; filters: {filters}): {_one_line(exc)}"
            ) from exc
    return out


def _filter_names(dset: h5py.Dataset) -> str:
    plist = dset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(i)
        names.append(name.decode(errors="replace") or str(code))
    return ", ".join(names) or "none"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def validate(file: h5py.File, *, allow_unwritten: bool = False, locking: bool = False) -> DatasetInfo:
    """Check ``file`` against the layout and return what it holds.

    Args:
        allow_unwritten: accept X or Y storage that was never written, and virtual datasets
            with missing sources (they read as the fill value). Off by default.
        locking: HDF5 file locking for the source files of a virtual dataset.
    """
    path = file.filename
    x, y = (_dataset(file, name) for name in ("X", "Y"))
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
    for name in OPTIONAL_INDEX_DATASETS:
        if name in file:
            _check_index_dataset(file, name, x.shape[0])
    if not allow_unwritten:
        check_storage(file, int(sample_count), locking=locking)
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
        has_groups="groups" in file,
        has_subset="subset" in file,
    )


def describe(path: str | os.PathLike, *, labels: bool = False, clips: bool = False, locking: bool = False,
             allow_unwritten: bool = False) -> DatasetInfo:
    """Open, validate and close ``path``; raise :class:`DatasetError` if it is not a valid dataset.

    Args:
        labels: also check every row of ``Y`` in use is one-hot (reads Y in blocks), so bad
            rows are reported by row before any model is built.
        clips: also read a few clips (:func:`probe_indices`) to catch corrupt chunks and
            filters this HDF5 cannot decode.
        locking, allow_unwritten: see :func:`open_file` and :func:`validate`.
    """
    with open_file(path, locking=locking) as file:
        info = validate(file, allow_unwritten=allow_unwritten, locking=locking)
        if labels:
            read_labels(file, info.sample_count)
        if clips:
            read_clips(file, probe_indices(info.sample_count))
        return info


def read_labels(file: h5py.File, sample_count: int) -> np.ndarray:
    """The class index of each of the first ``sample_count`` rows of ``Y``, checking each row is one-hot."""
    y = file["Y"]
    labels = np.empty(sample_count, dtype=np.int32)
    bad_rows, bad_count, first_bad = [], 0, None
    for start in range(0, sample_count, LABEL_BLOCK):
        try:
            block = y[start : min(start + LABEL_BLOCK, sample_count)]
        except OSError as exc:
            raise DatasetError(f"{file.filename}: dataset 'Y' cannot be read (corrupt?): {_one_line(exc)}") from exc
        ones = block == 1
        bad = np.flatnonzero((ones.sum(axis=1) != 1) | ((block != 0) & ~ones).any(axis=1))
        if bad.size:  # keep scanning, to say how many rows are bad in all
            if first_bad is None:
                first_bad = block[bad[0]].tolist()
            bad_rows += (start + bad[: BAD_ROWS_SHOWN - len(bad_rows)]).tolist()
            bad_count += bad.size
        labels[start : start + len(block)] = ones.argmax(axis=1)
    if bad_count:
        more = f" and {bad_count - len(bad_rows)} more" if bad_count > len(bad_rows) else ""
        raise DatasetError(
            f"{file.filename}: row {bad_rows[0]} of 'Y' is {first_bad}, expected one-hot (a single 1, the rest 0); "
            f"{bad_count} bad row(s) of the {sample_count} in use: {', '.join(map(str, bad_rows))}{more}"
        )
    return labels


def _check_index_dataset(file: h5py.File, name: str, rows: int) -> None:
    """``groups`` or ``subset``: a 1-D integer dataset with one row per row of X (values are
    checked when they are read, by :func:`read_groups` and :func:`read_subset`)."""
    dset = file[name]
    what = "one source-video id per clip" if name == "groups" else "0 train or 1 validation per clip"
    if not isinstance(dset, h5py.Dataset):
        raise DatasetError(f"{file.filename}: '{name}' is a {type(dset).__name__}, expected a dataset ({what})")
    if dset.shape != (rows,):
        raise DatasetError(f"{file.filename}: dataset '{name}' has shape {dset.shape}, expected ({rows},): {what}, "
                           "one per row of X")
    if dset.dtype.kind not in "iu":
        raise DatasetError(f"{file.filename}: dataset '{name}' has dtype {dset.dtype}, expected an integer dtype ({what})")


def _read_index(file: h5py.File, name: str, sample_count: int) -> np.ndarray:
    _check_index_dataset(file, name, file["X"].shape[0])
    try:
        return file[name][:sample_count].astype(np.int64)
    except OSError as exc:
        raise DatasetError(f"{file.filename}: dataset '{name}' cannot be read (corrupt?): {_one_line(exc)}") from exc


def _bad_values(file: h5py.File, name: str, values: np.ndarray, bad: np.ndarray, expected: str) -> DatasetError:
    rows = np.flatnonzero(bad)
    return DatasetError(f"{file.filename}: row {rows[0]} of '{name}' is {values[rows[0]]}, expected {expected}; "
                        f"{rows.size} bad row(s) of the {values.size} in use")


def read_groups(file: h5py.File, sample_count: int) -> np.ndarray:
    """The ``groups`` of the first ``sample_count`` rows (int64, each >= 0), or a :class:`DatasetError`."""
    groups = _read_index(file, "groups", sample_count)
    if (groups < 0).any():
        raise _bad_values(file, "groups", groups, groups < 0, "an integer >= 0 (a source-video id)")
    return groups


def read_subset(file: h5py.File, sample_count: int) -> np.ndarray:
    """The ``subset`` of the first ``sample_count`` rows (uint8, 0 train, 1 validation), or a :class:`DatasetError`."""
    subset = _read_index(file, "subset", sample_count)
    bad = (subset != 0) & (subset != 1)
    if bad.any():
        raise _bad_values(file, "subset", subset, bad, "0 (train) or 1 (validation)")
    return subset.astype(np.uint8)


def load_split(file: h5py.File, split: str | None, sample_count: int) -> tuple[str, np.ndarray | None]:
    """``(split, array)``: the split to use and the per-sample array it needs (None for ``"random"``).

    ``split=None`` picks ``"groups"`` when the file has a ``groups`` dataset, else ``"random"``.
    ``"groups"`` and ``"file"`` need the ``groups`` and ``subset`` datasets; a file without
    them is a :class:`DatasetError`, an unknown name a ValueError.
    """
    if split is None:
        split = "groups" if "groups" in file else "random"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None. Received: split={split!r}")
    if split == "random":
        return split, None
    name = "groups" if split == "groups" else "subset"
    if name not in file:
        writer = "`distributed-h5 convert" + (" --split-file" if split == "file" else "") + "` writes it"
        raise DatasetError(f"{file.filename}: split={split!r} needs a '{name}' dataset, which this file lacks "
                           f"({writer}); use split='random'" + (" or 'groups'" if "groups" in file else ""))
    return split, (read_groups if split == "groups" else read_subset)(file, sample_count)
