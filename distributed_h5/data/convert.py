"""``distributed-h5 convert``: video files to the package's HDF5 layout, in parallel with MPI.

Input is a class-per-folder tree (``SRC/<class>/<video>``, as UCF101, HMDB51 and Kinetics
ship) or a CSV of ``path,label`` lines. Videos are decoded with PyAV, which brings its
own FFmpeg. Each clip is ``frames`` frames sampled uniformly over the video, fitted to
``size`` (centre crop or pad, keeping the aspect ratio), stored as uint8 channels-first.

Work is cut into parts of ``part_videos`` consecutive videos, independent of the number of
ranks. Rank ``r`` of ``n`` converts parts ``r, r + n, ...`` into part files of its own
(no two processes ever write one HDF5 file); rank 0 then joins them, in part order, into
one file. So every good video appears exactly once, in the same order for any ``n``.
Part files are written under temporary names and renamed when complete, and the output
likewise (:func:`outputs.atomic_write`): an interrupted run leaves no file that looks valid, and ``resume=True`` keeps
the completed parts. Memory stays at one decoded clip per rank: only the sampled frames
are scaled and kept, whatever the video's length.

Listing never follows directory symlinks (``all -> .`` would duplicate every video) and
never skips a folder it cannot read in silence: both are reported with the failed videos,
and ``--strict`` fails on them.

Beside each clip the output records the source video it came from (``groups``, see
:func:`group_key`), so that a split can keep clips of one source video on one side, and
with ``split_file`` which side of an official split it is on (``subset``, see
:func:`read_split_file`). Imports h5py, numpy, tqdm, PyAV and, under an MPI launcher,
mpi4py; no TensorFlow.
"""

from __future__ import annotations

import csv
import errno
import io
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from tqdm import tqdm

from ..engines import launcher as runtime
from . import jpeg
from .checks import positive_int, positive_pair
from .synthetic import CHUNKINGS, CODECS, COMPRESSIONS, compression_options
from .outputs import atomic_write, check_output, printable

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"}
# A folder of frame images is a video too (mmaction2's "rawframes": SRC/<class>/<video>/img_00001.jpg ...),
# its frames in the order of the numbers in their names.
FRAME_SUFFIXES = {".jpg", ".jpeg", ".png"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}
PART_VIDEOS = 16  # videos per part file: the unit of work and of resume
FITS = ("crop", "pad")
SHORT_POLICIES = ("pad", "skip")
PROGRESS_SECONDS = 0.2  # how often ranks that are done check whether the others are
SPLIT_SIDES = ("validation", "train")  # which side the videos of a split file are on
# UCF101 names its clips v_<Class>_g<NN>_c<MM>.avi: the clips of group NN of a class are cut
# from one long source video (same actor, background, viewpoint), and its official splits
# keep each group on one side.
UCF101_NAME = re.compile(r"(?:^|/)v_([^/]+?)_g(\d+)_c\d+\.[^/.]+$")
GROUP_RULE = ("UCF101-style names v_<Class>_g<NN>_c<MM>.<ext>: one group per (class, NN), the class "
              "compared case-insensitively; any other name: one group per video file")


@dataclass(frozen=True)
class Video:
    path: str  # as listed: relative to SRC for folders, as written in the CSV otherwise
    label: int


@dataclass
class Clip:
    frames: np.ndarray | None  # (frames, channels, rows, cols) uint8; None when ``encoded`` holds them
    frame_count: int
    frame_rate: float  # 0 when the source does not say (a folder of frames)
    encoded: list[bytes] | None = None  # JPEG frames taken as they are (rawframes that already fit)


@dataclass
class Summary:
    converted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unlisted: list[tuple[str, str]] = field(default_factory=list)  # (folder or link, reason): not searched for videos
    rank: int = 0  # of the process holding this summary: rank 0 reports


class VideoError(Exception):
    """A video that cannot be converted; the message is the reason."""


# --- listing -------------------------------------------------------------------------------
class Listing(NamedTuple):
    videos: list[Video]  # in a deterministic order: by class, then path
    class_names: list[str]
    root: Path  # the folder video paths are relative to
    problems: list[tuple[str, str]]  # (path, reason): folders that could not be read, links not followed


def _kind(entry: os.DirEntry) -> tuple[str, str]:
    """What a directory entry is to the listing: ``("dir" | "file" | "other" | "skipped", reason)``.

    Skipped, with the reason: a name that is not UTF-8 (the output stores names as UTF-8), a
    directory symlink (never followed: ``all -> .`` would duplicate videos, a link out of the
    tree would pull in videos from elsewhere) and a symlink that cannot be followed (a loop, or
    to nothing).
    """
    if printable(entry.name) != entry.name:
        return "skipped", "the name is not valid UTF-8 (the output stores names as UTF-8); rename it; not converted"
    try:
        if entry.is_symlink():
            target = printable(os.readlink(entry.path))
            try:
                os.stat(entry.path)
            except OSError as exc:
                return "skipped", f"a symlink (to {target}) that cannot be followed ({exc.strerror}); not followed"
            if entry.is_dir():
                return "skipped", f"a directory symlink (to {target}); not followed"
        elif entry.is_dir(follow_symlinks=False):
            return "dir", ""
        return ("file" if entry.is_file() else "other"), ""
    except OSError as exc:
        return "skipped", f"cannot be read ({exc.strerror}); not converted"


def _scan(folder: Path, source: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """The video files under ``folder``, sorted by path; what is not searched goes to ``problems``
    (unreadable folders, and the entries :func:`_kind` skips), and the listing goes on."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        problems.append((printable(str(folder.relative_to(source))),
                         f"folder cannot be read ({exc.strerror}); its videos are not converted"))
        return []
    found = []
    for entry in entries:
        path = Path(entry.path)
        kind, reason = _kind(entry)
        if kind == "skipped":
            problems.append((printable(str(path.relative_to(source))), reason))
        elif kind == "dir":
            found += [path] if _holds_frames(path) else _scan(path, source, problems)
        elif kind == "file" and path.suffix.lower() in VIDEO_SUFFIXES:
            found.append(path)
    return found


def _holds_frames(folder: Path) -> bool:
    """Whether ``folder`` is a video as a folder of frame images (any image file directly in it)."""
    try:
        return any(entry.is_file() and Path(entry.name).suffix.lower() in FRAME_SUFFIXES
                   for entry in os.scandir(folder))
    except OSError:
        return False  # _scan lists it as a folder that cannot be read


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a rawframes folder, in the order of the numbers in their names
    (``img_2.jpg`` before ``img_10.jpg``), then by name."""
    def key(path: Path):
        numbers = re.findall(r"\d+", path.stem)
        return (int(numbers[-1]) if numbers else -1, path.name)

    return sorted((Path(entry.path) for entry in os.scandir(folder)
                   if entry.is_file() and Path(entry.name).suffix.lower() in FRAME_SUFFIXES), key=key)


def list_videos(source: str | os.PathLike, classes_from: str = "folders") -> Listing:
    """The videos, the class names, the folder video paths are relative to, and what could not be listed."""
    source = Path(source)
    problems: list[tuple[str, str]] = []
    if classes_from == "folders":
        if not source.is_dir():
            raise ValueError(f"SRC must be a folder of class folders with classes_from='folders'. Received: {source}")
        names = []
        for entry in sorted(os.scandir(source), key=lambda entry: entry.name):
            kind, reason = _kind(entry)
            if kind == "skipped":  # not a class (see _kind); its videos are not converted
                problems.append((printable(entry.name), reason))
            elif kind == "dir":
                names.append(entry.name)
        if not names:
            raise ValueError(f"{source} has no class folders; expected SRC/<class>/<video>")
        videos = [Video(str(path.relative_to(source)), label)
                  for label, name in enumerate(names)
                  for path in _scan(source / name, source, problems)]
        return Listing(videos, names, source, problems)
    table = Path(classes_from)
    if not table.is_file():
        raise ValueError(f"classes_from must be 'folders' or a CSV file of path,label. Received: {classes_from!r}")
    try:
        with table.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    except UnicodeDecodeError:
        try:  # again, whole, for the position in the file (the decoder saw it a block at a time)
            table.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ValueError(f"--classes-from {table}: line {line} is not valid UTF-8 ({exc.reason} at byte "
                             f"{exc.start}); save the CSV as UTF-8") from exc
        raise
    if rows and rows[0][:2] == ["path", "label"]:
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows) if len(row) != 2]
    if bad:
        raise ValueError(f"{table}: line {bad[0] + 1} is {rows[bad[0]]}, expected path,label")
    names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(names)}
    return Listing([Video(path, index[label]) for path, label in rows], names,
                   source if source.is_dir() else table.parent, problems)


# --- source videos and official splits ----------------------------------------------------
def group_key(path: str) -> str:
    """The source video a clip file comes from, as a string key (see :data:`GROUP_RULE`).

    Example:
        >>> group_key("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c03.avi"), group_key("cats/cat_1.mp4")
        ('applyeyemakeup/g08', 'cats/cat_1.mp4')
    """
    match = UCF101_NAME.search(path.replace("\\", "/"))
    if match is None:
        return path
    return f"{match.group(1).lower()}/g{int(match.group(2)):02d}"


def group_ids(paths: list[str]) -> np.ndarray:
    """One integer per path, equal for paths of one source video: 0, 1, ... in order of first appearance."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(group_key(path), len(ids)) for path in paths], dtype=np.int64)


def _split_entry(line: str) -> str:
    """The video path of a split-file line: ``path`` or ``path label`` (UCF101's trainlist adds a class number)."""
    parts = line.split()
    if len(parts) > 1 and parts[-1].lstrip("-").isdigit():
        parts = parts[:-1]
    entry = " ".join(parts).replace("\\", "/")
    return entry[2:] if entry.startswith("./") else entry


def read_split_file(split_file: str | os.PathLike, videos: list[Video]) -> np.ndarray:
    """The positions in ``videos`` of the videos ``split_file`` lists, sorted.

    One video per line, as UCF101's ``testlist01.txt`` and ``trainlist01.txt`` (a trailing
    class number is ignored); blank lines and ``#`` comments are skipped. An entry matches a
    video's path relative to SRC exactly, else case-insensitively (UCF101's lists spell some
    class folders differently from the archive); an entry without ``/`` matches a file name
    (HMDB51's lists), which must then be unique. Raises ValueError (one line) when the file
    cannot be read, lists nothing, or lists a video that is not among ``videos``.
    """
    try:
        with open(split_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"--split-file {split_file}: cannot be read ({reason})") from exc
    entries = [(number, _split_entry(line)) for number, line in enumerate(lines, 1)
               if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ValueError(f"--split-file {split_file}: lists no videos; expected one video path relative to SRC per "
                         "line (as UCF101's testlist01.txt)")
    exact = {video.path.replace("\\", "/"): i for i, video in enumerate(videos)}
    folded: dict[str, list[int]] = {}
    names: dict[str, list[int]] = {}
    for path, i in exact.items():
        folded.setdefault(path.lower(), []).append(i)
        names.setdefault(path.rsplit("/", 1)[-1], []).append(i)
    found, missing = set(), []
    for number, entry in entries:
        if entry in exact:
            found.add(exact[entry])
            continue
        candidates = names.get(entry, []) if "/" not in entry else folded.get(entry.lower(), [])
        if len(candidates) == 1:
            found.add(candidates[0])
        else:
            missing.append((number, entry, len(candidates)))
    if missing:
        number, entry, count = missing[0]
        why = f"matches {count} videos" if count > 1 else f"is not among the {len(videos)} videos found"
        raise ValueError(f"--split-file {split_file}: line {number}: {entry!r} {why}; {len(missing)} of the "
                         f"{len(entries)} listed entries do not match exactly one video (paths are relative to SRC)")
    return np.array(sorted(found), dtype=np.int64)


def subsets_from_split(listed: np.ndarray, video_count: int, side: str) -> np.ndarray:
    """Per video: 1 (validation) or 0 (train), the ``listed`` positions on ``side``, the rest on the other."""
    if side not in SPLIT_SIDES:
        raise ValueError(f"split_side must be one of {SPLIT_SIDES}. Received: split_side={side!r}")
    subset = np.zeros(video_count, dtype=np.uint8) if side == "validation" else np.ones(video_count, dtype=np.uint8)
    subset[listed] = 1 if side == "validation" else 0
    return subset


# --- decoding ------------------------------------------------------------------------------
def _scaled_size(height: int, width: int, size: tuple[int, int], fit: str) -> tuple[int, int]:
    """(height, width) to scale a frame to before :func:`_fit`, keeping its aspect ratio."""
    rows, cols = size
    if fit == "crop":  # the short side fits; the long side is then cut
        scale = max(rows / height, cols / width)
        return max(rows, round(height * scale)), max(cols, round(width * scale))
    scale = min(rows / height, cols / width)  # the long side fits; the short side is then padded
    return min(rows, max(1, round(height * scale))), min(cols, max(1, round(width * scale)))


def _fit(image: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    """Centre-crop (or zero-pad) a scaled (rows, cols, channels) image to ``size``."""
    rows, cols = size
    height, width = image.shape[:2]
    if fit == "crop":
        top, left = (height - rows) // 2, (width - cols) // 2
        return image[top : top + rows, left : left + cols]
    out = np.zeros((rows, cols, image.shape[2]), dtype=np.uint8)
    top, left = (rows - height) // 2, (cols - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def sample_positions(frame_count: int, frames: int) -> np.ndarray:
    """The positions of the decoded frames that make a clip of ``frames``: uniform over the
    video, and for a video shorter than ``frames``, every frame then its last one repeated."""
    if frame_count >= frames:
        return np.linspace(0, frame_count - 1, frames).round().astype(int)
    return np.minimum(np.arange(frames), frame_count - 1)


def _decode_pass(path, *, frames: int, size: tuple[int, int], channels: int, fit: str,
                 frame_count: int | None = None) -> tuple[int, int, float, dict[int, np.ndarray]]:
    """Decode every frame once, but scale and keep only those a clip needs.

    The positions come from ``frame_count``, or else the container's own count (0 when it
    has none). Returns (frames decoded, the count the positions assumed, frame rate,
    {position: fitted image}); the caller decodes again if the two counts differ.
    """
    import av

    pixel_format = "rgb24" if channels == 3 else "gray"
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        assumed = stream.frames if frame_count is None else frame_count
        wanted = set(sample_positions(assumed, frames).tolist()) if assumed > 0 else set()
        kept, count = {}, 0
        for frame in container.decode(stream):
            if count in wanted:  # scale with FFmpeg (swscale) only the frames the clip uses
                height, width = _scaled_size(frame.height, frame.width, size, fit)
                image = frame.reformat(width=width, height=height, format=pixel_format).to_ndarray()
                kept[count] = _fit(image.reshape(height, width, channels), size, fit)
            count += 1
    return count, assumed, rate, kept


def _decode_frames(folder: Path, *, frames: int, size: tuple[int, int], channels: int, fit: str, short: str,
                   keep_jpeg: bool) -> Clip:
    """A clip from a folder of frame images: ``frames`` of them sampled as from a video. With
    ``keep_jpeg``, JPEG frames whose header already gives ``size`` and ``channels`` are taken
    as they are, bytes and all (no decode, no re-encode); any other frame is decoded and fitted."""
    import simplejpeg
    from PIL import Image

    files = frame_files(folder)
    if not files:
        raise VideoError("no frames")
    if len(files) < frames and short == "skip":
        raise VideoError(f"{len(files)} frames, fewer than {frames}")
    chosen = [files[i] for i in sample_positions(len(files), frames)]
    try:
        data = [path.read_bytes() for path in chosen]
    except OSError as exc:
        raise VideoError(f"a frame cannot be read: {exc}") from exc
    if keep_jpeg and all(path.suffix.lower() in JPEG_SUFFIXES for path in chosen):
        try:
            headers = [simplejpeg.decode_jpeg_header(frame) for frame in data]
        except ValueError:
            headers = []
        fits = all((height, width) == tuple(size) and (colorspace == "Gray") == (channels == 1)
                   for height, width, colorspace, _ in headers)
        if headers and fits:
            return Clip(None, len(files), 0.0, encoded=data)
    images = []
    for path, frame in zip(chosen, data):
        try:
            with Image.open(io.BytesIO(frame)) as image:
                image = image.convert("RGB" if channels == 3 else "L")
                height, width = _scaled_size(image.height, image.width, size, fit)
                scaled = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
        except Exception as exc:  # Pillow raises many types for a broken image
            raise VideoError(f"frame {path.name} cannot be decoded: {type(exc).__name__}: {exc}") from exc
        images.append(_fit(scaled.reshape(height, width, channels), size, fit))
    clip = np.stack(images).transpose(0, 3, 1, 2)
    return Clip(np.ascontiguousarray(clip), len(files), 0.0)


def decode(path: str | os.PathLike, *, frames: int, size: tuple[int, int], channels: int = 3, fit: str = "crop",
           short: str = "pad", keep_jpeg: bool = False) -> Clip:
    """``frames`` frames sampled uniformly over the video at ``path`` (:func:`sample_positions`), fitted to ``size``.

    Memory stays at one clip whatever the video's length: only the sampled frames are
    scaled and kept. Their positions come from the container's frame count; when it has
    none or it is wrong, the video is decoded a second time with the count the first pass found.

    ``path`` may be a folder of frame images (mmaction2's rawframes): see :func:`_decode_frames`;
    ``keep_jpeg`` then takes JPEG frames that already fit as they are (``Clip.encoded``).

    Raises :class:`VideoError` for a video that cannot be decoded, has no frames, or (with
    ``short="skip"``) has fewer than ``frames``.
    """
    options = dict(frames=frames, size=size, channels=channels, fit=fit)
    if Path(path).is_dir():  # a folder of frames
        return _decode_frames(Path(path), short=short, keep_jpeg=keep_jpeg, **options)
    try:
        count, assumed, rate, kept = _decode_pass(path, **options)
        if count and count != assumed:
            again, _, rate, kept = _decode_pass(path, frame_count=count, **options)
            if again != count:
                raise VideoError(f"decodes to {count} frames, then to {again}")
    except VideoError:
        raise
    except Exception as exc:  # PyAV raises many types (InvalidDataError, OSError, ...) for broken files
        raise VideoError(f"cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if count == 0:
        raise VideoError("no frames")
    if count < frames and short == "skip":
        raise VideoError(f"{count} frames, fewer than {frames}")
    clip = np.stack([kept[i] for i in sample_positions(count, frames)]).transpose(0, 3, 1, 2)  # (F, C, rows, cols)
    return Clip(np.ascontiguousarray(clip), count, rate)


# --- the job -------------------------------------------------------------------------------
def _check_not_an_input(out, source, classes_from: str, split_file) -> None:
    """Refuse (ValueError, one line) an ``out`` that would overwrite an input: SRC itself, a path
    inside SRC (with ``classes_from="folders"``, where SRC is searched), the labels CSV or the
    split file. Paths are compared resolved, so a symlink or ``..`` does not slip through."""
    target = Path(out).resolve()
    folder = Path(source).resolve()
    fix = "convert would overwrite its own input; write OUT elsewhere"
    if target == folder:
        raise ValueError(f"output {out} is SRC itself; {fix}")
    if classes_from == "folders" and folder in target.parents:
        raise ValueError(f"output {out} lies inside SRC {source}, the folder searched for videos (the file, or its "
                         f"parts folder, would be listed next time); {fix}")
    for flag, given in (("--classes-from", classes_from if classes_from != "folders" else None),
                        ("--split-file", split_file)):
        if given is not None and target == Path(given).resolve():
            raise ValueError(f"output {out} is the {flag} file {given}; {fix}")


def _check_not_a_video(out: Path, videos: list[Video], root: Path, table: str) -> None:
    """Refuse an ``out`` that is one of the videos a CSV lists (compared resolved)."""
    target = out.resolve()
    for video in videos:
        if (root / video.path).resolve() == target:
            raise ValueError(f"output {out} is the video {video.path} listed in {table}; convert would overwrite its "
                             "own input; write OUT elsewhere")


def _world():
    """(rank, size, comm) when a launcher started several tasks, else (0, 1, None) without touching
    MPI. Refuses (RuntimeError) when MPI sees one process where the launcher started several."""
    comm = runtime.mpi_comm()
    rank, size = runtime.world()
    return rank, size, comm


RESERVE_SLACK = 256 * 1024  # bytes reserved beyond the clips for HDF5's metadata, and per clip below
RESERVE_PER_CLIP = 4096
NOT_RESERVABLE = {getattr(errno, name) for name in ("EOPNOTSUPP", "ENOTSUP", "EINVAL", "ENOSYS") if hasattr(errno, name)}


def _reserve(partial: Path, data_bytes: int, clips: int) -> None:
    """Fail with an OSError (naming the folder and the bytes) unless the space to write ``partial``
    can be allocated now.

    HDF5 cannot recover from a write that fails for space or quota: the file's close fails,
    and h5py then crashes the process when it frees the file. So the bytes are allocated
    (``posix_fallocate``, which quotas count) in a scratch file first, then released for the
    real write. File systems that cannot allocate ahead (``fallocate`` itself, not glibc's
    emulation, which would write every block) are not checked.
    """
    size = data_bytes + RESERVE_SLACK + RESERVE_PER_CLIP * clips
    scratch = partial.with_name(partial.name + ".space")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _fallocate(fd, size)
    except OSError as exc:
        if exc.errno not in NOT_RESERVABLE:
            raise OSError(exc.errno, f"{exc.strerror}: {size} bytes are needed to write {partial.name}") from exc
    finally:
        os.close(fd)
        scratch.unlink(missing_ok=True)


def _fallocate(fd: int, size: int) -> None:
    """Linux ``fallocate(fd, 0, 0, size)``: allocates, or fails with EOPNOTSUPP where the file system cannot."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):  # not Linux/glibc: nothing to check with
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS)) from None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if call(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _write_part(path: Path, videos: list[tuple[int, Video]], root: Path, options: dict, on_video) -> list[tuple[str, str]]:
    """Convert ``videos`` (global index, video) into the part file ``path``; return the failures."""
    frames, (rows, cols), channels = options["frames"], options["size"], options["channels"]
    partial = path.with_name(path.name + ".partial")
    failures, index, counts, rates = [], [], [], []
    jpeg_frames = options["codec"] == "jpeg"  # encoded once here; the join copies the bytes
    _reserve(partial, 0 if jpeg_frames else len(videos) * frames * channels * rows * cols, len(videos))
    with atomic_write(path, partial=partial), h5py.File(partial, "w") as file:
        if jpeg_frames:
            writer = jpeg.JpegWriter(file, (frames, channels, rows, cols), quality=options["quality"],
                                     subsampling=options["subsampling"])
        else:
            x = file.create_dataset("X", shape=(0, frames, channels, rows, cols),
                                    maxshape=(None, frames, channels, rows, cols), dtype=np.uint8,
                                    chunks=(1, frames, channels, rows, cols))
        for number, video in videos:
            try:
                clip = decode(root / video.path, frames=frames, size=(rows, cols), channels=channels,
                              fit=options["fit"], short=options["short"], keep_jpeg=jpeg_frames)
            except VideoError as exc:
                failures.append((video.path, str(exc)))
            else:
                if jpeg_frames and clip.encoded is not None:
                    writer.append_encoded(clip.encoded)  # rawframes that already fit: their bytes as they are
                elif jpeg_frames:
                    writer.append(clip.frames)
                else:
                    x.resize(len(index) + 1, axis=0)
                    x[len(index)] = clip.frames
                index.append(number)
                counts.append(clip.frame_count)
                rates.append(clip.frame_rate)
            on_video()
        if jpeg_frames:
            writer.close()
        file.create_dataset("index", data=np.array(index, dtype=np.int64))
        file.create_dataset("frame_counts", data=np.array(counts, dtype=np.int64))
        file.create_dataset("frame_rates", data=np.array(rates, dtype=np.float64))
        file.attrs["failures"] = json.dumps(failures)
    return failures


def _part_jpeg_bytes(part: Path) -> int:
    with h5py.File(part, "r") as file:
        return int(file["X"]["bytes"].size)


def _join(out: Path, parts: list[Path], videos: list[Video], class_names: list[str], options: dict,
          subsets: np.ndarray | None = None, split_note: str = "") -> int:
    """Rank 0: copy the parts, in order, into ``out`` (written as ``out.partial``, then renamed)."""
    index = []
    for part in parts:
        with h5py.File(part, "r") as file:
            index.append(file["index"][:])
    index = np.concatenate(index)
    total = int(index.size)
    if total == 0:
        return 0
    frames, (rows, cols), channels = options["frames"], options["size"], options["channels"]
    partial = out.with_name(out.name + ".partial")
    chunks = (1, frames, channels, rows, cols) if options["chunks"] == "clip" else None
    compressed = options["compression"] != "none"
    jpeg_frames = options["codec"] == "jpeg"
    if jpeg_frames:  # the parts' JPEG bytes, summed: what the join writes
        data_bytes = sum(_part_jpeg_bytes(part) for part in parts)
    else:  # compressed, the size is not known before writing; the reservation then covers only the rest
        data_bytes = 0 if compressed else total * frames * channels * rows * cols
    _reserve(partial, data_bytes, total)
    with atomic_write(out, partial=partial), h5py.File(partial, "w") as file:
        if jpeg_frames:
            x = jpeg.JpegWriter(file, (frames, channels, rows, cols), quality=options["quality"],
                                subsampling=options["subsampling"], samples=total)
        else:
            x = file.create_dataset("X", shape=(total, frames, channels, rows, cols), dtype=np.uint8,
                                    chunks=chunks, **compression_options(options["compression"]))
        labels = np.array([videos[i].label for i in index])
        one_hot = np.zeros((total, len(class_names)), dtype=np.uint8)  # per row: no classes**2 identity
        one_hot[np.arange(total), labels] = 1
        file.create_dataset("Y", data=one_hot)
        paths = [videos[i].path for i in index]
        file.create_dataset("source_paths", data=np.array(paths, dtype=h5py.string_dtype()))
        groups = file.create_dataset("groups", data=group_ids(paths))
        groups.attrs["rule"] = GROUP_RULE
        if subsets is not None:  # 0 train, 1 validation, as the split file says
            subset = file.create_dataset("subset", data=subsets[index])
            subset.attrs["values"] = "0 train, 1 validation"
            subset.attrs["split_file"] = split_note
        start = 0
        counts, rates = [], []
        for part in parts:
            with h5py.File(part, "r") as source:
                clips = source["X"]
                if jpeg_frames:  # the frames' bytes, copied as they are
                    x.append_from(clips)
                    rows_copied = int(clips.attrs["shape"][0])
                else:
                    for row in range(clips.shape[0]):  # one clip at a time: memory stays at one clip
                        x[start + row] = clips[row]
                    rows_copied = clips.shape[0]
                start += rows_copied
                counts.append(source["frame_counts"][:])
                rates.append(source["frame_rates"][:])
        if jpeg_frames:
            x.close()
        file.create_dataset("frame_counts", data=np.concatenate(counts))
        file.create_dataset("frame_rates", data=np.concatenate(rates))
        file.attrs["class_names"] = np.array(class_names, dtype=h5py.string_dtype())
        file.attrs["sample_count"] = np.int64(total)
        file.attrs["generator"] = "distributed_h5.convert"
    return total


def convert(source: str | os.PathLike, out: str | os.PathLike, *, frames: int, size: tuple[int, int],
            classes_from: str = "folders", channels: int = 3, fit: str = "crop", short: str = "pad",
            chunks: str = "clip", compression: str = "none", resume: bool = False,
            part_videos: int = PART_VIDEOS, progress: bool = True, split_file: str | os.PathLike | None = None,
            split_side: str = "validation", codec: str = "raw", quality: int = jpeg.DEFAULT_QUALITY,
            subsampling: str = jpeg.DEFAULT_SUBSAMPLING) -> Summary:
    """Convert the videos under ``source`` into ``out``; run in every process of an MPI job, or alone.

    Returns the summary (on rank 0; other ranks get theirs): how many videos were converted,
    which failed and which folders or links were not searched, with the reason. Failed
    videos never stop the run. ValueError before any work if ``out`` cannot be written or
    ``split_file`` is bad.

    ``split_file`` (UCF101/HMDB51-style list, see :func:`read_split_file`) puts the videos
    it lists on ``split_side`` (``"validation"``, the default, for a test list; ``"train"``
    for a train list) and the others on the other side, recorded as the ``subset`` dataset.

    ``codec="jpeg"`` stores every frame as a JPEG of ``quality`` and ``subsampling``
    (:mod:`distributed_h5.data.jpeg`), encoded once in the parts and copied by the join.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    if fit not in FITS or short not in SHORT_POLICIES:
        raise ValueError(f"fit must be one of {FITS} and short one of {SHORT_POLICIES}. Received: {fit!r}, {short!r}")
    if chunks not in CHUNKINGS or compression not in COMPRESSIONS:
        raise ValueError(f"chunks must be one of {CHUNKINGS} and compression one of {COMPRESSIONS}. "
                         f"Received: {chunks!r}, {compression!r}")
    if compression != "none" and chunks == "none":
        raise ValueError(f"compression={compression!r} needs chunks='clip'")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}. Received: codec={codec!r}")
    if codec == "jpeg":
        if compression != "none":
            raise ValueError(f"codec='jpeg' stores JPEG frames, which compression={compression!r} cannot apply to; "
                             "use compression='none'")
        jpeg.check_options(quality, subsampling)
    if split_side not in SPLIT_SIDES:
        raise ValueError(f"split_side must be one of {SPLIT_SIDES}. Received: split_side={split_side!r}")
    positive_int("frames", frames)
    positive_pair("size", size, meaning="rows, cols")
    positive_int("part_videos", part_videos)
    _check_not_an_input(out, source, classes_from, split_file)
    out = check_output(out)  # on every rank, so each reports the same line before any work
    try:
        import av  # noqa: F401  (decode needs it; without this check every video would fail alike)
    except ImportError as exc:
        raise RuntimeError(f"convert needs PyAV: pip install av (or `make install`): {exc}") from exc
    rank, size_, comm = _world()
    videos, class_names, root, unlisted = list_videos(source, classes_from)
    if not videos:
        raise ValueError(f"no video files found under {source}")
    if classes_from != "folders":  # a CSV may list videos anywhere: OUT must not be one of them
        _check_not_a_video(out, videos, root, classes_from)
    subsets = None
    if split_file is not None:  # on every rank, so each reports the same line before any work
        subsets = subsets_from_split(read_split_file(split_file, videos), len(videos), split_side)
        if subsets.min() == subsets.max():
            side = "validation" if subsets[0] else "train"
            raise ValueError(f"--split-file {split_file}: puts all {len(videos)} videos on the {side} side; list the "
                             f"{'validation' if side == 'train' else 'train'} videos or fewer of them "
                             "(--split-side says which side the list names)")
    options = dict(frames=frames, size=tuple(size), channels=channels, fit=fit, short=short, chunks=chunks,
                   compression=compression, codec=codec, quality=quality, subsampling=subsampling)
    # Parts are only reusable for the same videos and the same clip options.
    fingerprint = hashlib.sha256(json.dumps([[v.path, v.label] for v in videos] + [options, part_videos], default=list)
                                 .encode()).hexdigest()[:16]
    parts_dir = out.with_name(out.name + f".parts-{fingerprint}")
    part_count = -(-len(videos) // part_videos)
    parts = [parts_dir / f"part-{p:06d}.h5" for p in range(part_count)]
    counters = [parts_dir / f".progress-{r}" for r in range(size_)]

    def videos_done() -> int:  # in parts on disk, whichever rank wrote them
        return sum(min(part_videos, len(videos) - p * part_videos) for p in range(part_count) if parts[p].exists())

    bar = None
    try:
        resumed = 0
        if rank == 0:
            if not resume and parts_dir.exists():
                shutil.rmtree(parts_dir)
            parts_dir.mkdir(parents=True, exist_ok=True)
            for counter in counters:  # left by an interrupted run
                counter.unlink(missing_ok=True)
            resumed = videos_done()  # no rank writes a part before the barrier below
        if comm is not None:
            comm.Barrier()

        # Rank 0's bar counts every rank's videos: each rank writes how many it has done to its
        # counter file after every video, and rank 0 adds them up.
        bar = tqdm(total=len(videos), unit="video", desc=f"converting on {size_} rank(s)",
                   disable=not progress or rank != 0, initial=resumed)
        done_here = 0

        def show_progress() -> None:
            bar.n = resumed + videos_counted(counters)
            bar.refresh()

        def on_video() -> None:
            nonlocal done_here
            done_here += 1
            _count_videos(counters[rank], done_here)
            if rank == 0:
                show_progress()

        for p in range(rank, part_count, size_):
            if parts[p].exists():  # completed before an interruption (resume)
                continue
            _write_part(parts[p], list(enumerate(videos))[p * part_videos : (p + 1) * part_videos], root, options, on_video)
        if comm is not None:
            # Every part is on disk before rank 0 joins them. A non-blocking barrier polled
            # gently: rank 0 keeps its bar moving with the others' videos, and ranks that are
            # done do not busy-wait on cores that ranks still decoding need.
            request = comm.Ibarrier()
            while not request.Test():
                if rank == 0:
                    show_progress()
                time.sleep(PROGRESS_SECONDS)
        if rank == 0:
            bar.n = videos_done()
        bar.close()
        summary = Summary(unlisted=unlisted)
        if rank == 0:
            for part in parts:
                with h5py.File(part, "r") as file:
                    summary.failed += [tuple(item) for item in json.loads(file.attrs["failures"])]
            summary.converted = _join(out, parts, videos, class_names, options, subsets,
                                      f"{Path(split_file).name} lists the {split_side} videos" if split_file else "")
    except Exception as exc:  # an interruption (KeyboardInterrupt, a kill) keeps the parts for --resume; an error not
        if bar is not None:
            bar.close()
        if rank == 0:
            shutil.rmtree(parts_dir, ignore_errors=True)
        if isinstance(exc, OSError) or "errno = " in str(exc):  # a full disk, say (h5py raises RuntimeError at
            # a close that fails to write, and its message names a temporary file, or none)
            raise OSError(f"output {out}: writing failed in {out.parent} ({_reason(exc)}); nothing was left "
                          "behind") from exc
        raise
    if rank == 0:  # the parts are joined, or held nothing
        shutil.rmtree(parts_dir, ignore_errors=True)
    if comm is not None:
        summary = comm.bcast(summary, root=0)
        summary.rank = rank
    return summary


def _reason(exc: Exception) -> str:
    """Why a write failed, in a few words: h5py puts the errno deep in a long message."""
    if getattr(exc, "strerror", None):
        return exc.strerror
    text = " ".join(str(exc).split())
    found = re.search(r"errno = (\d+)", text)
    return os.strerror(int(found.group(1))) if found else text


def _count_videos(counter: Path, count: int) -> None:
    """Record that this rank has converted ``count`` videos in this run (replaced whole, never half-written)."""
    # Rewritten after every video and read only while the run lasts: whole, not durable (no fsync).
    with atomic_write(counter, partial=counter.with_name(counter.name + ".tmp"), durable=False) as partial:
        partial.write_text(str(count))


def videos_counted(counters: list[Path]) -> int:
    """The videos all ranks have converted in this run, from their counter files (missing: none yet)."""
    total = 0
    for counter in counters:
        try:
            total += int(counter.read_text())
        except (FileNotFoundError, ValueError):
            pass
    return total


def report(summary: Summary, out: str) -> str:
    lines = [f"converted {summary.converted} video(s) into {out}" if summary.converted else
             f"no video could be converted; {out} was not written"]
    if summary.unlisted:
        lines.append(f"{len(summary.unlisted)} folder(s) or link(s) not searched for videos:")
        lines += [f"  {path}: {reason}" for path, reason in summary.unlisted]
    if summary.failed:
        lines.append(f"{len(summary.failed)} video(s) not converted:")
        lines += [f"  {path}: {reason}" for path, reason in summary.failed]
    return "\n".join(lines)

