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

Beyond the layout, :func:`validate` refuses data that would silently read as fill values
(zeros), for the rows in use (< ``sample_count``): ``X`` or ``Y`` whose storage was never
allocated (wholly or for some chunks), a virtual dataset whose source file or dataset is
missing or whose mappings leave some row uncovered, external raw storage that is missing,
not a regular file (``/dev/zero``) or shorter than those rows, and storage allocated but
never written that the file system reports as a hole; ``allow_unwritten=True`` accepts them.
HDF5 cannot tell a written zero from the fill value it wrote itself (chunks written in part,
storage filled at allocation): those are accepted. Nothing is allocated in proportion to
rows declared but not in use. Only regular files are opened (a FIFO would block). An
external link (``X`` stored in another file) is followed; one whose target cannot be opened
is a :class:`DatasetError`. ``X`` is read in native byte order (a big-endian file is converted).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import h5py
import hdf5plugin  # noqa: F401  (registers Zstandard and the other filters with HDF5, for reads through h5py)
import numpy as np

from . import jpeg
from .sharding import SPLITS

LABEL_BLOCK_BYTES = 16 << 20  # bytes of Y validated per read, so label loading needs bounded memory
LABEL_BLOCK = 65536  # and at most this many rows
PROBE_CLIPS = 8  # clips read at open (first, last and spread between) to catch unreadable data early
BAD_ROWS_SHOWN = 5  # bad label rows named in the error
BYTES_PER_SAMPLE = 16  # memory each sample in use costs before any clip: its label and its place in the orders


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
    codec: str = "raw"  # "raw" (X a dataset, any HDF5 filter) or "jpeg" (X a group of JPEG frames: data/jpeg.py)

    @property
    def clip_bytes(self) -> int:
        return int(np.prod(self.clip_shape)) * self.dtype.itemsize


FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_regular_file(path: str) -> str | None:
    """What ``path`` is, in words, when it is not a regular file (symlinks followed); None when it is one.

    Checked before any open: opening a FIFO for reading blocks until some writer opens it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
    resolved = os.path.realpath(path)
    return f"is {kind}" + (f" (the link resolves to {resolved})" if resolved != os.path.abspath(path) else "")


def open_file(path: str | os.PathLike, *, locking: bool = False) -> h5py.File:
    """Open ``path`` read-only, turning every failure into a :class:`DatasetError`.

    Anything but a regular file (after following symlinks) is refused before it is opened:
    a FIFO would block forever. HDF5 file locking is off by default: it fails on many
    parallel file systems, and nothing here writes. Pass ``locking=True`` to turn it back on.
    """
    path = os.fspath(path)
    problem = not_a_regular_file(path)
    if problem == "no such file":
        raise DatasetError(f"{path}: no such file")
    if problem:
        raise DatasetError(f"{path}: {problem}, expected an HDF5 file (a regular file)")
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
    if isinstance(link, h5py.ExternalLink):
        target = _link_target(file, link)
        problem = target and not_a_regular_file(target)
        if problem:  # HDF5 would open it, and a FIFO blocks
            raise DatasetError(f"{path}: '{name}' is an external link to {target}, which {problem}; "
                               "expected an HDF5 file (a regular file)")
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
    if name == "X" and jpeg.is_jpeg_x(obj):  # the JPEG layout: a group (see data/jpeg.py)
        return obj
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{path}: '{name}' is a {type(obj).__name__}, expected a dataset")
    return obj


def x_layout(path: str, x) -> tuple[tuple[int, ...], np.dtype, tuple | None, str | None, str]:
    """``(shape, dtype, chunks, compression, codec)`` of X, a dataset or a JPEG-clip group."""
    if not jpeg.is_jpeg_x(x):
        return x.shape, x.dtype, x.chunks, x.compression, "raw"
    problems = jpeg.validate_jpeg_x(x)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatasetError(f"{path}: 'X' holds JPEG clips, and {problems[0]}{more}")
    return tuple(int(n) for n in x.attrs["shape"]), np.dtype(np.uint8), None, "jpeg", "jpeg"


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


ALLOW = "pass allow_unwritten=True (train --allow-unwritten) to read it anyway"


def _unwritten_rows(dset: h5py.Dataset, rows_in_use: int) -> str | None:
    """Which of the first ``rows_in_use`` rows of ``dset`` have no storage, in words, or None.

    Memory grows with the chunks allocated, never with the rows declared (X may declare 2**40).
    """
    status = dset.id.get_space_status()
    if status == h5py.h5d.SPACE_STATUS_ALLOCATED:
        return None
    if status == h5py.h5d.SPACE_STATUS_NOT_ALLOCATED:
        return "was never written (its storage is not allocated, so every read gives the fill value)"
    # Partly allocated chunked storage: the rows in use must all be covered.
    chunks = dset.chunks
    per_row = int(np.prod([-(-extent // chunk) for extent, chunk in zip(dset.shape[1:], chunks[1:])]))
    chunk_rows = -(-rows_in_use // chunks[0])
    allocated = []  # the chunk row of each allocated chunk in use

    def record(info) -> None:
        if info.chunk_offset[0] < rows_in_use:
            allocated.append(info.chunk_offset[0] // chunks[0])

    _each_chunk(dset, record)
    found, counts = np.unique(np.asarray(allocated, dtype=np.int64), return_counts=True)
    complete = found[counts >= per_row]
    if complete.size == chunk_rows:
        return None
    gaps = np.flatnonzero(complete != np.arange(complete.size))  # complete is sorted and distinct
    first = int(gaps[0]) if gaps.size else int(complete.size)
    return (f"has rows never written: {chunk_rows - complete.size} chunk row(s) of {chunks[0]} rows among the "
            f"{rows_in_use} in use, the first at row {first * chunks[0]} (they would read as the fill value)")


def _each_chunk(dset: h5py.Dataset, visit) -> None:
    """Call ``visit`` with the StoreInfo of every allocated chunk of ``dset``."""
    if hasattr(dset.id, "chunk_iter"):  # HDF5 >= 1.12.3: one C-level pass
        dset.id.chunk_iter(visit)
    else:
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))


MAX_HOLES = 100_000  # holes looked at per file: a file is rarely this fragmented, and each costs two lseeks


def _holes(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The (start, end) byte ranges of ``path`` that were never written (holes of a sparse file).

    Empty where the file system cannot tell (it then reports the whole file as data).
    """
    starts, ends = [], []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        position = 0
        while position < size and len(starts) < MAX_HOLES:
            try:
                hole = os.lseek(fd, position, os.SEEK_HOLE)
            except OSError:  # SEEK_HOLE unsupported here
                break
            if hole >= size:
                break
            try:
                position = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after the hole
                position = size
            starts.append(hole)
            ends.append(position)
    finally:
        os.close(fd)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def _inside(hole_starts: np.ndarray, hole_ends: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each byte range [starts, ends) lies wholly inside one hole (holes sorted, disjoint)."""
    which = np.searchsorted(hole_starts, starts, side="right") - 1
    return (which >= 0) & (ends <= hole_ends[np.maximum(which, 0)])


def _rows_in_holes(dset: h5py.Dataset, rows_in_use: int) -> str | None:
    """Rows in use whose allocated storage was never written, found as holes of a sparse file, in words.

    HDF5 allocates contiguous storage (and early-allocated chunks) without writing it when the
    fill value is the default; the file is then extended over it, which leaves a hole the file
    system reports. A whole clip (contiguous) or a whole chunk inside a hole was never written.
    """
    hole_starts, hole_ends = _holes(dset.file.filename)
    if hole_starts.size == 0:
        return None
    plist = dset.id.get_create_plist()
    row_bytes = int(np.prod(dset.shape[1:])) * dset.dtype.itemsize
    if plist.get_layout() == h5py.h5d.CONTIGUOUS:
        base = dset.id.get_offset()
        if base is None:
            return None
        # The rows wholly inside each hole: per hole, not per row (sample_count may be huge).
        first_rows = np.maximum(0, -(-(hole_starts - base) // row_bytes))
        last_rows = np.minimum(rows_in_use, (hole_ends - base) // row_bytes)  # exclusive
        spans = last_rows > first_rows
        if not spans.any():
            return None
        count, first = int((last_rows - first_rows)[spans].sum()), int(first_rows[spans].min())
        return _hole_message(count, "clip(s)", rows_in_use, first)
    if plist.get_layout() == h5py.h5d.CHUNKED:
        found = []

        def record(info) -> None:
            if info.chunk_offset[0] < rows_in_use and info.byte_offset is not None:
                found.append((info.chunk_offset[0], info.byte_offset, info.size))

        _each_chunk(dset, record)
        if not found:
            return None
        first_rows, offsets, sizes = np.asarray(found, dtype=np.int64).T
        unwritten = np.unique(first_rows[_inside(hole_starts, hole_ends, offsets, offsets + sizes)])
        what = f"chunk row(s) of {dset.chunks[0]} rows"
        if unwritten.size:
            return _hole_message(unwritten.size, what, rows_in_use, int(unwritten[0]))
    return None


def _hole_message(count: int, what: str, rows_in_use: int, first: int) -> str:
    return (f"has storage allocated but never written (a hole in the file): {count} {what} among the "
            f"{rows_in_use} rows in use, the first at row {first} (they read as zeros; if those clips really are "
            "all zeros, the file was copied sparse or the file system stores zeros as holes)")


def _external_problem(dset: h5py.Dataset, plist, rows_in_use: int) -> str | None:
    """Why the external raw files of ``dset`` cannot give the first ``rows_in_use`` rows, or None.

    They must be regular files (``/dev/zero`` reads as zeros, a FIFO blocks) holding every byte
    of the rows in use; HDF5 reads a missing byte as zero.
    """
    folder = os.path.dirname(os.path.abspath(dset.file.filename))
    row_bytes = int(np.prod(dset.shape[1:])) * dset.dtype.itemsize
    needed, covered = rows_in_use * row_bytes, 0
    for i in range(plist.get_external_count()):
        if covered >= needed:
            break
        name, offset, size = plist.get_external(i)
        name = name.decode()
        found = _external_file(name, folder)
        if not os.path.lexists(found):
            beside = os.path.join(folder, name)
            if not os.path.isabs(name) and os.path.lexists(beside):
                return (f"is stored in external raw file {name}, which HDF5 looks for as {os.path.abspath(found)}, "
                        f"where it is missing; it is in {folder}: run from there or set "
                        "HDF5_EXTFILE_PREFIX='${ORIGIN}' (the file's folder)")
            return f"is stored in external raw file {name}, which is missing"
        problem = not_a_regular_file(found)
        if problem:
            return (f"is stored in external raw file {name}, which {problem}, expected a regular file holding the "
                    f"clips (it would read as anything, /dev/zero as zeros); {ALLOW}")
        wanted = needed - covered if size == h5py.h5f.UNLIMITED else min(size, needed - covered)
        available = max(0, os.path.getsize(found) - offset)
        if available < wanted:
            first = (covered + available) // row_bytes
            return (f"is stored in external raw file {name}, which has {os.path.getsize(found)} bytes; the "
                    f"{rows_in_use} rows in use need {wanted} bytes of it from byte {offset}, so rows {first} to "
                    f"{rows_in_use - 1} would read as zeros (is it truncated?); {ALLOW}")
        covered += wanted
    return None


def _external_file(name: str, folder: str) -> str:
    """Where HDF5 opens external raw file ``name`` of a dataset in a file in ``folder``: relative
    names under ``HDF5_EXTFILE_PREFIX`` (``${ORIGIN}`` is that folder) when set, else the working directory."""
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX")
    if os.path.isabs(name) or not prefix:
        return name
    return os.path.join(prefix.replace("${ORIGIN}", folder), name)


MAX_MAPPED_INTERVALS = 10_000_000  # strided mappings expanded into row intervals, at most


def _virtual_unmapped(dset: h5py.Dataset, rows_in_use: int) -> str | None:
    """Rows in use of a virtual dataset that no mapping covers whole, in words, or None.

    A mapping covers a row when it selects all of the row (every frame, channel, row and col);
    rows covered only in part by several mappings are counted as not covered.
    """
    extent = dset.shape
    starts, ends = [], []
    for source in dset.virtual_sources():
        space = source.vspace
        kind = space.get_select_type()
        if kind == h5py.h5s.SEL_ALL:
            starts.append(0)
            ends.append(extent[0])
            continue
        if kind != h5py.h5s.SEL_HYPERSLABS:
            continue
        if space.is_regular_hyperslab():
            first, stride, count, block = space.get_regular_hyperslab()
            full = all(
                first[d] == 0 and (count[d] == h5py.h5s.UNLIMITED or
                                   (count[d] == 1 or stride[d] == block[d]) and count[d] * block[d] >= extent[d])
                for d in range(1, len(extent)))
            if not full:
                continue
            if count[0] == h5py.h5s.UNLIMITED:  # grows with its sources (printf-style VDS)
                starts.append(first[0])
                ends.append(extent[0])
            elif count[0] == 1 or stride[0] == block[0]:
                starts.append(first[0])
                ends.append(first[0] + count[0] * block[0])
            else:
                shown = min(count[0], max(0, -(-(rows_in_use - first[0]) // stride[0])), MAX_MAPPED_INTERVALS)
                block_starts = first[0] + stride[0] * np.arange(shown, dtype=np.int64)
                starts.extend(block_starts.tolist())
                ends.extend((block_starts + block[0]).tolist())
        else:
            for low, high in space.get_select_hyper_blocklist():  # inclusive corners of each block
                if all(low[d] == 0 and high[d] + 1 >= extent[d] for d in range(1, len(extent))):
                    starts.append(int(low[0]))
                    ends.append(int(high[0]) + 1)
    order = np.argsort(starts, kind="stable")
    covered_to, unmapped, first = 0, 0, None
    for start, end in zip(np.asarray(starts, dtype=np.int64)[order], np.asarray(ends, dtype=np.int64)[order]):
        if start >= rows_in_use:
            break
        if start > covered_to:
            first = covered_to if first is None else first
            unmapped += start - covered_to
        covered_to = max(covered_to, int(end))
    if covered_to < rows_in_use:
        first = covered_to if first is None else first
        unmapped += rows_in_use - covered_to
    if not unmapped:
        return None
    return (f"maps no source to {unmapped} of the {rows_in_use} rows in use, the first at row {first} "
            "(they would read as the fill value)")


def check_storage(file: h5py.File, sample_count: int, *, locking: bool = False) -> None:
    """Raise :class:`DatasetError` if the first ``sample_count`` rows of X or Y would not read real data.

    Refused: storage never allocated (wholly, or chunks of rows in use); a virtual dataset with
    a missing source or rows in use that no mapping covers; external raw storage that is missing,
    not a regular file or too short; allocated storage never written that the file system
    reports as a hole (a whole clip or chunk). Not detectable: chunks written only in part and
    storage filled with the fill value at allocation (see the README).
    """
    path = file.filename
    for name in ("X", "Y"):
        dset = file[name]
        if jpeg.is_jpeg_x(dset):  # its bytes' storage was checked with its offsets (jpeg.validate_jpeg_x)
            continue
        where = f"dataset '{name}'" if dset.file.filename == path else f"dataset '{name}' (in {dset.file.filename})"
        plist = dset.id.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            problem = _virtual_source_problem(dset, locking)
            if problem:
                raise DatasetError(f"{path}: {where} is a virtual dataset and {problem}, so it would read as the "
                                   f"fill value; {ALLOW}")
            problem = _virtual_unmapped(dset, sample_count)
            if problem:
                raise DatasetError(f"{path}: {where} is a virtual dataset that {problem}; {ALLOW}")
            continue
        if plist.get_external_count():
            problem = _external_problem(dset, plist, sample_count)
            if problem:
                raise DatasetError(f"{path}: {where} {problem}")
            continue
        problem = _unwritten_rows(dset, sample_count) or _rows_in_holes(dset, sample_count)
        if problem:
            raise DatasetError(f"{path}: {where} {problem}; {ALLOW}")


def probe_indices(sample_count: int, count: int = PROBE_CLIPS) -> np.ndarray:
    """The clips checked at open: the first, the last and some spread between them, sorted and distinct."""
    return np.unique(np.linspace(0, sample_count - 1, min(count, sample_count)).round().astype(np.int64))


def read_clips(file: h5py.File, indices: np.ndarray) -> np.ndarray:
    """``X[indices]`` through h5py, one hyperslab per clip, or a :class:`DatasetError` if unreadable.

    Catches corrupt or truncated chunks and filters this HDF5 cannot decode (an unregistered
    plugin, say) on the clips asked for.
    """
    x = file["X"]
    if jpeg.is_jpeg_x(x):
        try:
            with jpeg.JpegClips(file.filename, threads=1) as clips:
                return clips.read(np.asarray(indices, dtype=np.int64))
        except ValueError as exc:  # a frame that does not decode, named by clip and frame
            raise DatasetError(str(exc)) from exc
    out = np.empty((len(indices), *x.shape[1:]), dtype=native(x.dtype))
    for row, index in enumerate(indices):
        try:
            x.read_direct(out, np.s_[int(index) : int(index) + 1], np.s_[row : row + 1])
        except (OSError, ValueError) as exc:
            filters = _filter_names(x)
            raise DatasetError(
                f"{file.filename}: clip {int(index)} of 'X' cannot be read (corrupt or truncated chunk, or a filter "
                f"this HDF5 cannot decode; filters: {filters}): {_one_line(exc)}"
            ) from exc
        if out.dtype.kind == "f" and not np.isfinite(out[row]).all():
            raise non_finite_clip(x.file.filename, int(index), int((~np.isfinite(out[row])).sum()))
    return out


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order: what X is read as (a big-endian file is converted on reading)."""
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def non_finite_clip(path: str, index: int, count: int, batch_clips: int = 1) -> DatasetError:
    """The error for clip ``index`` of X holding ``count`` NaN or infinite values."""
    more = f" ({batch_clips} clips of this batch do)" if batch_clips > 1 else ""
    return DatasetError(
        f"{path}: clip {index} of dataset 'X' has {count} non-finite value(s) (NaN or infinity){more}; training on it "
        "would make the loss NaN. Rewrite the clips that hold them with finite values "
        "(`distributed-h5 inspect --verify` reads every clip and names the first), or drop them from the file"
    )


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
    x_shape, x_dtype, chunks, compression, codec = x_layout(path, x)
    if len(x_shape) != 5:
        raise DatasetError(
            f"{path}: dataset 'X' has shape {x_shape}, expected 5 dimensions (samples, frames, channels, rows, cols)"
        )
    if y.ndim != 2:
        raise DatasetError(f"{path}: dataset 'Y' has shape {y.shape}, expected 2 dimensions (samples, classes)")
    if x_shape[0] != y.shape[0]:
        raise DatasetError(f"{path}: 'X' has {x_shape[0]} rows but 'Y' has {y.shape[0]}; expected equal row counts")
    if x_shape[0] == 0:
        raise DatasetError(f"{path}: the file has no samples ('X' and 'Y' have 0 rows); expected at least one clip "
                           "in X with its label in Y, and sample_count >= 1")
    for name, dtype in (("X", x_dtype), ("Y", y.dtype)):
        if dtype.kind not in "uif":
            raise DatasetError(f"{path}: dataset '{name}' has dtype {dtype}, expected a numeric dtype")
    if "sample_count" not in file.attrs:
        raise DatasetError(f"{path}: root attribute 'sample_count' is missing; expected an integer in [1, {x_shape[0]}]")
    sample_count = file.attrs["sample_count"]
    if isinstance(sample_count, np.ndarray) and sample_count.shape in ((), (1,)):
        sample_count = sample_count.reshape(-1)[0]
    if not isinstance(sample_count, (int, np.integer)) or isinstance(sample_count, (bool, np.bool_)):
        shown = sample_count.item() if isinstance(sample_count, np.generic) else sample_count
        raise DatasetError(
            f"{path}: attribute 'sample_count' is {shown!r} ({type(sample_count).__name__}), expected an integer"
        )
    if not 1 <= sample_count <= x_shape[0]:
        raise DatasetError(f"{path}: attribute 'sample_count' is {sample_count}, expected an integer in [1, {x_shape[0]}]")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if sample_count * BYTES_PER_SAMPLE > memory:
        raise DatasetError(
            f"{path}: attribute 'sample_count' is {sample_count}, more samples than this machine can index (their "
            f"labels and order alone need {sample_count * BYTES_PER_SAMPLE / 2**30:.0f} GiB, it has "
            f"{memory / 2**30:.0f} GiB); expected the number of clips written to X, which declares {x_shape[0]} rows")
    for name in OPTIONAL_INDEX_DATASETS:
        if name in file:
            _check_index_dataset(file, name, x_shape[0])
    if not allow_unwritten:
        check_storage(file, int(sample_count), locking=locking)
    return DatasetInfo(
        path=path,
        sample_count=int(sample_count),
        rows=x_shape[0],
        clip_shape=tuple(x_shape[1:]),
        dtype=native(x_dtype),  # what the reader gives: big-endian X is converted as it is read
        classes=y.shape[1],
        chunks=chunks,
        compression=compression,
        file_bytes=os.path.getsize(path),
        has_groups="groups" in file,
        has_subset="subset" in file,
        codec=codec,
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
    # Rows per read bounded by bytes too: 65536 rows of 200,000 classes would be 13 GB.
    block_rows = max(1, min(LABEL_BLOCK, LABEL_BLOCK_BYTES // max(1, y.shape[1] * y.dtype.itemsize)))
    for start in range(0, sample_count, block_rows):
        try:
            block = y[start : min(start + block_rows, sample_count)]
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
