"""Checkpoints: where training stands, what it was trained with, and the files that hold them.

Imports Keras only to save and load models. The one record of a run's progress is a
:class:`Position`: ``epoch`` epochs complete plus ``sample`` samples of the next epoch's
order trained. Everything else (which batches remain, the learning rate) is recomputed from
it and the plan, so a checkpoint resumes on any rank count and any batch size.

A checkpoint is a ``.keras`` file (model and optimizer state, loadable with plain
``keras.models.load_model``) that also holds ``distributed_h5.json``, readable with plain
Python::

    import json, zipfile
    json.loads(zipfile.ZipFile("epoch-0003.keras").read("distributed_h5.json"))

File names, in one directory that only rank 0 writes:

* ``epoch-NNNN.keras`` after each epoch; ``epoch-NNNN-sample-SSSSSSSSS.keras`` mid-epoch
  (on a stop signal); the newest ``keep`` are kept;
* ``best.keras``: the best epoch by the monitored metric;
* ``PREEMPTED``: written beside a mid-epoch checkpoint taken on a stop signal, removed by the
  run that resumes; ``slurm/train.sbatch`` requeues the job when it finds it (exit statuses
  are unreliable once a launcher kills the ranks that have not exited yet);
* ``.lock``: held (``flock``) by the job training into the directory, with its host and PID.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.outputs import atomic_write

RECORD = "distributed_h5.json"
FORMAT = 1
PATTERN = re.compile(r"^epoch-(\d{4,})(?:-sample-(\d{9,}))?\.keras$")
BEST = "best.keras"
PREEMPTED_MARKER = "PREEMPTED"
LOCK = ".lock"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal after checkpointing; run again with resume
# Fields that, changed on resume, would silently train on another split or file.
CHECKED_FIELDS = ("seed", "validation_ratio", "sample_count", "fingerprint", "split")
# A run's vocabularies, here (no Keras) so the CLI offers them before it picks Keras' backend:
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # RunConfig.precision: Keras dtype policies
MODELS = ("video", "r2plus1d_18")  # the reference models of distributed_h5.models.build_model
OPTIMIZERS = ("adam", "sgd")  # build_model's optimizers for them


@dataclass(frozen=True, order=True)
class Position:
    """``epoch`` epochs complete, plus ``sample`` samples of epoch ``epoch``'s order trained."""

    epoch: int
    sample: int = 0


@dataclass(frozen=True)
class RunConfig:
    """What a checkpoint was trained with. ``fingerprint`` identifies the data (X's shape and
    dtype, and a hash of the labels in use), independent of where the file lies."""

    seed: int
    validation_ratio: float
    sample_count: int
    fingerprint: str
    path: str
    file_bytes: int
    remainder: str
    batch_size: int
    ranks: int
    global_batch: int
    base_batch: int  # the global batch the given learning rate is for (see callbacks.LearningRate)
    precision: str
    engine: str
    version: str
    split: str = "random"  # sharding.SPLITS; records from before splits existed were random
    # Clip sampling and augmentation (distributed_h5.augment.Augment); not checked on resume:
    # changing them changes what is trained on, not which samples, and is a legitimate choice.
    clip_frames: int | None = None
    frame_stride: int = 1
    crop: tuple[int, int] | None = None
    flip: bool = False
    scale: tuple[int, int] | None = None

    def differences(self, other: RunConfig, allowed=()) -> list[str]:
        """``field: old -> new`` for each checked field that differs and is not ``allowed``."""
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in CHECKED_FIELDS
                if name not in allowed and getattr(self, name) != getattr(other, name)]


def fingerprint(path: str | os.PathLike, sample_count: int) -> str:
    """A SHA-256 of X's shape and dtype, the first ``sample_count`` rows of Y, and the clips
    :func:`dataset.probe_indices` names (the first, the last and six spread between, as the
    reader's open-time probe reads them): cheap, and the same for a copy of the file anywhere
    (a node-local staged copy, say, or one rechunked or recompressed: only values are hashed).
    Two files with the same labels and other clips at those rows differ; a file changed only
    in clips between them does not."""
    import h5py

    from .data.dataset import probe_indices, read_clips, x_layout

    digest = hashlib.sha256()
    with h5py.File(path, "r", locking=False) as file:
        y = file["Y"]
        x_shape, x_dtype = x_layout(path, file["X"])[:2]  # X may be a dataset or a JPEG-clip group
        digest.update(f"{x_shape}|{x_dtype.str}|{y.shape}|{y.dtype.str}|{sample_count}".encode())
        block = max(1, min(65536, (16 << 20) // max(1, y.shape[1] * y.dtype.itemsize)))  # bounded memory per read
        for start in range(0, sample_count, block):
            digest.update(np.ascontiguousarray(y[start : min(start + block, sample_count)]).tobytes())
        digest.update(read_clips(file, probe_indices(sample_count)).tobytes())  # native order, C-contiguous
    return digest.hexdigest()[:16]


class ConfigMismatch(ValueError):
    """A resume whose run configuration differs from the checkpoint's."""


def check_config(saved: RunConfig | None, current: RunConfig, allowed=(), where: str = "") -> None:
    """Raise :class:`ConfigMismatch` naming each differing checked field, unless ``allowed``."""
    unknown = sorted(set(allowed) - set(CHECKED_FIELDS))
    if unknown:
        raise ValueError(f"allow_config_change takes {list(CHECKED_FIELDS)}. Received: {unknown}")
    if saved is None:
        return
    differences = saved.differences(current, allowed)
    if differences:
        fields = " ".join(d.split(":")[0] for d in differences)
        raise ConfigMismatch(
            f"cannot resume {where}: the run configuration differs from the checkpoint's ("
            + "; ".join(differences) + "), which would change the train/validation split or the data. "
            f"Use the checkpoint's values, start a fresh checkpoint directory, or pass "
            + " ".join(f"--allow-config-change {field}" for field in fields.split()) + " to resume anyway.")


def name_for(position: Position) -> str:
    return f"epoch-{position.epoch:04d}" + (f"-sample-{position.sample:09d}" if position.sample else "") + ".keras"


def list_checkpoints(directory) -> list[tuple[Position, Path]]:
    """``(position, path)`` of every checkpoint in ``directory`` named as above, oldest first."""
    if directory is None or not Path(directory).is_dir():
        return []
    found = [(Position(int(m.group(1)), int(m.group(2) or 0)), Path(directory) / name)
             for name in os.listdir(directory) if (m := PATTERN.match(name))]
    return sorted(found)


def read_record(path) -> dict:
    """The ``distributed_h5.json`` record inside a checkpoint (``{}`` for a plain ``.keras`` file).

    Raises ValueError when ``path`` is not a readable ``.keras`` file.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if RECORD not in archive.namelist():
                return {}
            return json.loads(archive.read(RECORD))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable .keras checkpoint ({exc})") from exc


def record_config(record: dict) -> RunConfig | None:
    config = record.get("config")
    if not config:
        return None
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in config.items() if k in fields})


def record_position(record: dict, fallback: Position) -> Position:
    position = record.get("position")
    return Position(int(position["epoch"]), int(position["sample"])) if position else fallback


def save(model, path: Path, position: Position, config: RunConfig | None, **extra) -> Path:
    """Write ``model`` (weights and optimizer state) and the record to ``path`` atomically:
    under a temporary name, then renamed, so a kill or a full disk mid-write leaves the
    previous checkpoint intact and no partial file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "position": dataclasses.asdict(position),
              "config": dataclasses.asdict(config) if config is not None else None, **extra}
    try:
        with atomic_write(path) as partial:
            model.save(partial)
            with zipfile.ZipFile(partial, "a") as archive:
                archive.writestr(RECORD, json.dumps(record, indent=1, sort_keys=True))
    except OSError as exc:  # a full disk, say: name the checkpoint (Keras' and zipfile's errors do not)
        raise OSError(exc.errno, f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    return path


# What a run leaves in its checkpoint or log directory besides PATTERN's checkpoints.
RUN_FILES = (BEST, PREEMPTED_MARKER, "training.csv", "training.png", "tensorboard")


def run_files(directory) -> list[Path]:
    """The files of a run in ``directory``: its checkpoints, logs and markers (sorted)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted([path for _, path in list_checkpoints(directory)]
                  + [directory / name for name in RUN_FILES if (directory / name).exists()])


def set_aside(directory, files) -> Path:
    """Move ``files`` (a previous run's) into a new ``replaced-YYYYmmdd-HHMMSS[-N]`` folder
    of ``directory`` and return it: ``--overwrite`` replaces a run without deleting it."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        aside = Path(directory) / (f"replaced-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            aside.mkdir()
            break
        except FileExistsError:
            continue
    for path in files:
        os.replace(path, aside / path.name)
    return aside


def prune(directory: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` position checkpoints (``best.keras`` is kept)."""
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)


def newest_intact(directory, log=print) -> tuple[Position, Path, dict] | None:
    """The newest checkpoint whose record and model can be read, skipping (and saying so)
    any that cannot: a corrupt newest file falls back to the one before."""
    for position, path in reversed(list_checkpoints(directory)):
        try:
            record = read_record(path)
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise ValueError(f"{path}: holds no model weights")
                archive.testzip()
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            log(f"distributed_h5: skipping unreadable checkpoint {path.name}: {exc}")
            continue
        return record_position(record, position), path, record
    return None


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock`` held while one job trains into ``DIR``.

    A second job on the same directory is refused with the holder's host and PID instead
    of replacing its checkpoints and logs. The lock goes away with the process, so a killed
    job never leaves a stale lock.
    """

    def __init__(self, directory):
        self.path = Path(directory) / LOCK
        self._fd = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RuntimeError(f"checkpoint directory {self.path.parent} is in use by {holder}; wait for that job "
                               "to end or use another --checkpoint-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def describe(path) -> str:
    """A readable summary of a checkpoint's record (``distributed-h5 inspect-checkpoint``)."""
    record = read_record(path)
    if not record:
        return f"{path}: a plain .keras file without a distributed_h5 record"
    lines = [f"checkpoint    {path}"]
    position = record.get("position") or {}
    lines.append(f"position      epoch {position.get('epoch')} complete + {position.get('sample')} samples of the next")
    for key in ("metrics", "best"):
        if record.get(key):
            lines.append(f"{key:<13} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in sorted(record[key].items())))
    for key, value in sorted((record.get("config") or {}).items()):
        lines.append(f"{key:<13} {value}")
    return "\n".join(lines)
