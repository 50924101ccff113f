"""``distributed-h5 bench au``: accelerator utilisation as MLPerf Storage measures it. No framework import.

The driver imports no framework; each rank imports what its loader needs (TensorFlow for
``distributed_h5`` and ``tfdata``, PyTorch for ``torch-dataloader``, Horovod for
``--gradient-mb``).

The method is DLIO's, which MLPerf Storage runs: every rank is one emulated accelerator, a
real process that takes its shard's batches from a loader and "computes" on each by
sleeping for a real accelerator's step time. Then

    AU = compute time / total time,

per rank, where the total starts when the first batch has arrived (MLPerf Storage leaves
the first step's I/O out of AU) and includes every later wait for data and any gradient
allreduce. A system passes at AU >= 0.90. The loaders, all on the same file, with the same
shard plan (:class:`~distributed_h5.sharding.ShardPlan`, all of the file for training) and
batch size, each written the way its users write it:

``distributed_h5``
    the package's training input path, exactly what ``train_model`` runs: a
    :class:`~distributed_h5.feeding.Feeder` over a
    :class:`~distributed_h5.sequence.ShardedSequence`, iterated through ``Feeder.dataset()``
    (the ``tf.data`` pipeline ``train_model`` hands to Keras), with ``train_model``'s defaults;
``torch-dataloader``
    PyTorch ``DataLoader(num_workers=k, pin_memory=False)`` over an h5py ``Dataset`` whose
    ``__getitem__`` reads one clip (:class:`PeerClips`: JPEG clips decoded by simplejpeg), the
    file opened lazily in each worker;
``tfdata``
    ``tf.data.Dataset.from_generator`` over h5py reads of each batch, ``prefetch(AUTOTUNE)``;
    clips that need decoding (JPEG, zstd) are read and decoded one per call of a
    ``map(num_parallel_calls=AUTOTUNE)``, tf.data's recipe for per-item work;
``seed``
    the original tutorial's generator: ``X[sorted_batch]``, ``Y[sorted_batch]`` per batch
    (h5py fancy indexing), read when the step asks for it.

Each run reads at most one epoch of its shard, so a cold run (``--cold``: the file's pages
are dropped from the page cache before every run) never reads a page twice.

Run ``python -m distributed_h5.bench.au --worker ...`` is one rank; the driver starts them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields

LOADERS = ("distributed_h5", "torch-dataloader", "tfdata", "seed")
AU_TARGET = 0.90  # MLPerf Storage's pass mark
FIELDS = ("file", "loader", "cache", "ranks", "batch_size", "compute_ms", "gradient_mb", "steps", "au", "au_min",
          "samples_per_second", "mb_per_second", "data_wait_ms", "allreduce_ms", "settings")


# --- the arithmetic (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class RankTimes:
    """One rank's timed steps: seconds waited for each batch, computed, and allreduced, and
    ``elapsed``: wall seconds from the first batch's arrival to the end of the last step."""

    waits: tuple[float, ...]
    computes: tuple[float, ...]
    allreduces: tuple[float, ...]
    elapsed: float

    @property
    def steps(self) -> int:
        return len(self.computes)


def accelerator_utilisation(times: RankTimes) -> float:
    """MLPerf Storage's AU of one rank: compute over total, the first step's I/O left out."""
    return sum(times.computes) / times.elapsed if times.elapsed > 0 else 0.0


def run_steps(batches: Iterable, *, compute_seconds: float, max_steps: int, seconds: float,
              allreduce: Callable[[bool], bool] | None = None, clock: Callable[[], float] = time.perf_counter,
              sleep: Callable[[float], None] = time.sleep) -> RankTimes:
    """Be one emulated accelerator: per step, take the next batch, then sleep ``compute_seconds``.

    Stops after ``max_steps``, or after the step during which ``seconds`` had passed since the
    first batch arrived (at least 2 steps, so that AU counts some I/O). ``allreduce``, if given,
    is the step's gradient allreduce; it takes this rank's wish to stop and returns whether
    any rank wishes to, so that all ranks run the same steps.
    """
    iterator = iter(batches)
    waits, computes, allreduces = [], [], []
    first = end = None
    for step in range(max_steps):
        asked = clock()
        next(iterator)
        arrived = clock()
        first = arrived if first is None else first
        sleep(compute_seconds)
        computed = clock()
        stop = step >= 1 and computed - first >= seconds
        if allreduce is not None:
            stop = allreduce(stop)
        end = clock()
        waits.append(arrived - asked)
        computes.append(computed - arrived)
        allreduces.append(end - computed)
        if stop:
            break
    if first is None:
        raise ValueError(f"max_steps must be >= 1. Received: max_steps={max_steps}")
    return RankTimes(tuple(waits), tuple(computes), tuple(allreduces), end - first)


@dataclass
class Row:
    file: str
    loader: str
    cache: str
    ranks: int
    batch_size: int
    compute_ms: float
    gradient_mb: float
    steps: int
    au: float
    au_min: float
    samples_per_second: float
    mb_per_second: float
    data_wait_ms: float
    allreduce_ms: float
    settings: str


def summarise(times: Sequence[RankTimes], *, file: str, loader: str, cache: str, batch_size: int,
              compute_ms: float, clip_bytes: int, gradient_mb: float = 0.0, settings: str = "") -> Row:
    """One row from every rank's times: AU averaged over ranks (as MLPerf Storage reports it)
    and the lowest rank's; samples/s and MB/s of all ranks together; data wait per step
    (after the first) and allreduce per step, averaged over ranks."""
    if not times:
        raise ValueError("times must hold at least one rank's RankTimes")
    per_rank = [accelerator_utilisation(t) for t in times]
    samples_per_second = sum(t.steps * batch_size / t.elapsed for t in times if t.elapsed > 0)

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    return Row(
        file=file, loader=loader, cache=cache, ranks=len(times), batch_size=batch_size, compute_ms=compute_ms,
        gradient_mb=gradient_mb, steps=min(t.steps for t in times), au=mean(per_rank), au_min=min(per_rank),
        samples_per_second=samples_per_second, mb_per_second=samples_per_second * clip_bytes / 1e6,
        data_wait_ms=1e3 * mean(mean(t.waits[1:]) for t in times),
        allreduce_ms=1e3 * mean(mean(t.allreduces) for t in times), settings=settings)


def most_ranks_kept(rows: Iterable[Row], target: float = AU_TARGET) -> dict[tuple[str, str, str], int]:
    """For each (file, loader, cache): the largest rank count measured at AU >= ``target`` (0 if none)."""
    kept: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row.file, row.loader, row.cache)
        kept.setdefault(key, 0)
        if row.au >= target:
            kept[key] = max(kept[key], row.ranks)
    return kept


# --- the page cache ------------------------------------------------------------------------
def evict(path: str) -> None:
    """Drop ``path``'s pages from the page cache (no special rights needed for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read_rate(path: str, nbytes: int = 256 << 20) -> float:
    """GB/s of one raw sequential read of the first ``nbytes`` of ``path``."""
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    try:
        done, start = 0, time.perf_counter()
        while done < nbytes:
            got = os.preadv(fd, [view[: min(len(buffer), nbytes - done)]], done)
            if got == 0:
                break
            done += got
        return done / (time.perf_counter() - start) / 1e9
    finally:
        os.close(fd)


def check_eviction(path: str) -> tuple[float, float]:
    """(warm, cold) GB/s of a raw sequential read, cold right after :func:`evict`; evicts again."""
    sequential_read_rate(path)
    warm_rate = sequential_read_rate(path)
    evict(path)
    cold_rate = sequential_read_rate(path)
    evict(path)
    return warm_rate, cold_rate


def concurrent_read(path: str, readers: int, block: int, seconds: float = 3.0, batch: int = 16,
                    seed: int = 0) -> tuple[int, float]:
    """(bytes, seconds) that ``readers`` threads read from ``path`` right after :func:`evict`, in
    ``block``-byte pieces at random block offsets, every block of the file at most once, for at
    most ``seconds`` (or the whole file); evicts again. Each reader does what a rank's reader
    does with a batch, without the decoding: it takes ``batch`` blocks, announces them to the
    kernel (:func:`~distributed_h5.data.preads.advise`), then reads them in order.

    The storage figure the codec arithmetic needs: what as many ranks as measured draw at once
    (on a user's machine, ``fio --rw=randread --bs=B --iodepth=16 --numjobs=N`` comes close). It
    can be several times one sequential stream (:func:`sequential_read_rate`).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from ..data.preads import advise, readahead_bytes

    for name, value in (("readers", readers), ("block", block), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
    size = os.path.getsize(path)
    offsets = (np.random.default_rng(seed).permutation(-(-size // block)) * block).tolist()
    taken, lock = 0, threading.Lock()
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        window = readahead_bytes(fd)
        start = time.perf_counter()

        def read() -> int:
            nonlocal taken
            view, done = memoryview(bytearray(block)), 0
            while time.perf_counter() - start < seconds:
                with lock:
                    mine, taken = sorted(offsets[taken : taken + batch]), taken + batch
                if not mine:
                    break
                advise(fd, ((offset, block) for offset in mine), window)
                for offset in mine:
                    done += os.preadv(fd, [view], offset)
            return done

        with ThreadPoolExecutor(readers) as pool:
            done = sum(pool.map(lambda _: read(), range(readers)))
        return done, time.perf_counter() - start
    finally:
        os.close(fd)
        evict(path)


# --- the loaders (inside a rank) ------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    file: str
    loader: str
    batch_size: int
    compute_ms: float
    seconds: float
    gradient_mb: float = 0.0
    seed: int = 0
    threads: int | None = None  # distributed_h5: reader threads (None: train_model's default)
    feeder_workers: int = 1  # distributed_h5: Feeder threads (train_model's default)
    feeder_prefetch: int = 1  # distributed_h5: Feeder.dataset()'s tf.data prefetch (train_model's default, 1)
    torch_workers: int = 1  # torch-dataloader: num_workers (1 beat 2 at 8 ranks on 2 cores)


def _plan(config: Config, rank: int, size: int):
    from ..data.dataset import describe
    from ..data.sharding import ShardPlan

    info = describe(config.file)
    # All of the file is training data: every loader reads the same shard of the same order.
    return info, ShardPlan(info.sample_count, validation_ratio=0.0, seed=config.seed, rank=rank, size=size,
                           batch_size=config.batch_size)


def settings(config: Config) -> str:
    """How each loader is set up, in words, for the CSV and the docs."""
    from ..data.reader import default_threads

    return {
        "distributed_h5": f"Feeder(workers={config.feeder_workers}, prefetch={config.feeder_prefetch}) over "
                          f"ShardedSequence(threads={config.threads or default_threads()}), through Feeder.dataset() "
                          "as train_model",
        "torch-dataloader": f"DataLoader(num_workers={config.torch_workers}, prefetch_factor=2, pin_memory=False), "
                            "one h5py read per clip (JPEG: then simplejpeg per frame), labels loaded once per worker",
        "tfdata": "from_generator, one h5py read per clip into the batch, prefetch(AUTOTUNE); for clips that need "
                  "decoding (JPEG: simplejpeg per frame; zstd: h5py with hdf5plugin), map(read and decode one clip, "
                  "num_parallel_calls=AUTOTUNE), batch, prefetch(AUTOTUNE)",
        "seed": "X[sorted_batch], Y[sorted_batch] per batch, read when the step asks",
    }[config.loader]


def open_loader(config: Config, rank: int, size: int):
    """(batches, steps in one epoch of this rank's shard, clip bytes, close) for ``config.loader``."""
    info, plan = _plan(config, rank, size)
    batches = plan.batches(0)
    if config.loader == "distributed_h5":
        from ..feeding import Feeder
        from ..sequence import ShardedSequence

        sequence = ShardedSequence(config.file, batch_size=config.batch_size, validation_ratio=0.0, seed=config.seed,
                                   rank=rank, size=size, threads=config.threads)
        feeder = Feeder.for_sequence(sequence, workers=config.feeder_workers, prefetch=config.feeder_prefetch)
        return feeder.dataset(), feeder.steps(0), info.clip_bytes, sequence.close
    if config.loader == "torch-dataloader":
        return _torch_loader(config, batches), len(batches), info.clip_bytes, lambda: None
    if config.loader == "tfdata":
        return _tfdata_loader(config, info, batches), len(batches), info.clip_bytes, lambda: None
    if config.loader == "seed":
        return _seed_loader(config, batches), len(batches), info.clip_bytes, lambda: None
    raise ValueError(f"loader must be one of {LOADERS}. Received: {config.loader!r}")


class PeerClips:
    """How an h5py user reads one clip of ``X`` without this package, for the peer loaders:
    one h5py read per clip. A raw or compressed ``X`` is a dataset (``hdf5plugin`` imported, as
    its users must, so that h5py decodes zstd); a JPEG-clip ``X`` (``distributed_h5.data.jpeg``'s
    layout) is the clip's frame bytes read in one slice of ``X/bytes`` at ``X/offsets`` (small:
    loaded once, like the labels), each frame decoded by simplejpeg (libjpeg-turbo, the same
    decoder and settings as the package's reader) into the channels-first clip."""

    def __init__(self, path: str):
        import h5py
        import hdf5plugin  # noqa: F401  (registers the zstd filter with h5py)
        import numpy as np

        self.file = h5py.File(path, "r", locking=False)
        x = self.file["X"]
        self.jpeg = isinstance(x, h5py.Group) and x.attrs.get("codec") == "jpeg"
        if self.jpeg:
            self.frames, channels, rows, cols = (int(n) for n in x.attrs["shape"][1:])
            self.clip_shape, self.dtype = (self.frames, channels, rows, cols), np.dtype(np.uint8)
            self.colorspace = {1: "GRAY", 3: "RGB"}[channels]
            self.offsets, self.bytes = x["offsets"][:].astype(np.int64), x["bytes"]
        else:
            self.x, self.clip_shape, self.dtype = x, x.shape[1:], x.dtype
        self.labels = np.argmax(self.file["Y"][: int(self.file.attrs["sample_count"])], axis=1)  # small: loaded once

    @property
    def decodes(self) -> bool:
        """Whether a clip needs decoding (JPEG, or any HDF5 filter): work worth running in parallel."""
        return self.jpeg or self.x.id.get_create_plist().get_nfilters() > 0

    def read(self, index: int, out) -> None:
        """Clip ``index`` into ``out`` (frames, channels, rows, cols)."""
        import numpy as np

        if not self.jpeg:
            self.x.read_direct(out[None], np.s_[index : index + 1])
            return
        import simplejpeg

        starts = self.offsets[index * self.frames : (index + 1) * self.frames + 1]
        data = self.bytes[starts[0] : starts[-1]]  # the clip's frames: one h5py read
        relative = (starts - starts[0]).tolist()
        for frame in range(self.frames):
            image = simplejpeg.decode_jpeg(data[relative[frame] : relative[frame + 1]], self.colorspace)
            out[frame] = image.transpose(2, 0, 1)

    def clip(self, index: int):
        import numpy as np

        out = np.empty(self.clip_shape, dtype=self.dtype)
        self.read(int(index), out)
        return out

    def close(self) -> None:
        self.file.close()


class ClipDataset:
    """The common PyTorch recipe: one clip per ``__getitem__`` (:class:`PeerClips`: an h5py read,
    and for JPEG clips a simplejpeg decode of each frame), the file opened lazily in each worker
    process (an h5py handle must not cross a fork)."""

    def __init__(self, path: str):
        self.path, self.clips = path, None

    def __len__(self):
        import h5py

        with h5py.File(self.path, "r", locking=False) as file:
            return int(file.attrs["sample_count"])

    def __getitem__(self, index):
        if self.clips is None:
            self.clips = PeerClips(self.path)
        return self.clips.clip(index), int(self.clips.labels[index])


def _torch_loader(config: Config, batches):
    try:
        from torch.utils.data import DataLoader
    except ImportError as exc:
        raise RuntimeError("the torch-dataloader loader needs PyTorch: pip install 'distributed_h5[bench-torch]'") from exc
    return DataLoader(ClipDataset(config.file), batch_sampler=[b.tolist() for b in batches],
                      num_workers=config.torch_workers, pin_memory=False, prefetch_factor=2)


def _tfdata_loader(config: Config, info, batches):
    import numpy as np
    import tensorflow as tf

    clips = PeerClips(config.file)
    if clips.decodes:
        # Clips that need decoding: tf.data's recipe for per-item Python work, a parallel map.
        return _tfdata_parallel_map(config, info, batches, clips)

    def generate():
        for batch in batches:
            # One read per clip: on a file chunked by clip it is far faster than fancy indexing.
            out = np.empty((batch.size, *info.clip_shape), dtype=info.dtype)
            for row, index in enumerate(batch):
                clips.read(int(index), out[row])
            one_hot = np.zeros((batch.size, info.classes), dtype=np.float32)  # per batch: no classes**2 identity
            one_hot[np.arange(batch.size), clips.labels[batch]] = 1
            yield out, one_hot

    signature = (tf.TensorSpec((config.batch_size, *info.clip_shape), tf.as_dtype(info.dtype)),
                 tf.TensorSpec((config.batch_size, info.classes), tf.float32))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(tf.data.AUTOTUNE)


def _tfdata_parallel_map(config: Config, info, batches, clips: PeerClips):
    """Read and decode each clip in ``map(num_parallel_calls=AUTOTUNE)``, in the plan's order, then batch."""
    import numpy as np
    import tensorflow as tf

    order = np.concatenate(batches).astype(np.int64)

    def load(index, label):
        clip = tf.numpy_function(clips.clip, [index], tf.as_dtype(info.dtype), stateful=False)
        clip.set_shape(info.clip_shape)
        return clip, tf.one_hot(label, info.classes, dtype=tf.float32)

    return (tf.data.Dataset.from_tensor_slices((order, clips.labels[order]))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(config.batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def _seed_loader(config: Config, batches):
    import h5py

    with h5py.File(config.file, "r", locking=False) as file:
        x, y = file["X"], file["Y"]
        for batch in batches:
            yield x[batch], y[batch]


# --- one rank --------------------------------------------------------------------------------
def _barrier(scratch: str, rank: int, size: int, timeout: float = 600.0) -> None:
    """Wait until every rank is ready, so that no rank starts with the cores to itself."""
    open(os.path.join(scratch, f"ready.{rank}"), "w").close()
    deadline = time.monotonic() + timeout
    while sum(name.startswith("ready.") for name in os.listdir(scratch)) < size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: the other ranks were not ready after {timeout:.0f} s")
        time.sleep(0.002)


def rank_main(config: Config, rank: int, size: int, scratch: str) -> None:
    """Run one rank and write its times to ``scratch/times.RANK.json``."""
    allreduce = None
    if config.gradient_mb > 0:
        import horovod.tensorflow as hvd
        import numpy as np

        hvd.init()
        rank, size = hvd.rank(), hvd.size()
        gradient = np.zeros(max(1, int(config.gradient_mb * 1e6 / 4)), dtype=np.float32)

        def allreduce(stop: bool) -> bool:
            # The stop wish rides in the gradient, so all ranks stop after the same step.
            gradient[0] = float(stop)
            return bool(np.asarray(hvd.allreduce(gradient, op=hvd.Sum, name="au.gradient"))[0] > 0)

    loader, epoch_steps, clip_bytes, close = open_loader(config, rank, size)
    try:
        _barrier(scratch, rank, size)
        times = run_steps(loader, compute_seconds=config.compute_ms / 1e3, max_steps=epoch_steps,
                          seconds=config.seconds, allreduce=allreduce)
    finally:
        close()
    with open(os.path.join(scratch, f"times.{rank}.json"), "w") as handle:
        json.dump({"clip_bytes": clip_bytes, **asdict(times)}, handle)


# --- the driver ------------------------------------------------------------------------------
def wait_or_kill(processes: list, timeout: float) -> None:
    """Wait for every process until ``timeout`` seconds from now; kill (and reap) those still running."""
    try:
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_point(config: Config, ranks: int, *, timeout: float | None = None) -> tuple[list[RankTimes], int]:
    """Start ``ranks`` processes of one loader and return their times and the clip bytes."""
    timeout = timeout or 300 + 10 * config.seconds
    with tempfile.TemporaryDirectory(prefix="dh5-au-") as scratch:
        worker = [sys.executable, "-m", "distributed_h5.bench.au", "--worker", json.dumps(asdict(config)),
                  "--scratch", scratch]
        env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", TF_CPP_MIN_LOG_LEVEL="3")
        logs = [open(os.path.join(scratch, f"log.{rank}"), "w+") for rank in range(ranks)]
        if config.gradient_mb > 0:
            # Gloo, not MPI: Open MPI busy-polls, which takes the cores from CPU ranks.
            from .scaling import horovodrun

            commands = [[horovodrun(), "-np", str(ranks), "--gloo", *worker]]
        else:
            commands = [[*worker, "--rank", str(rank), "--size", str(ranks)] for rank in range(ranks)]
        processes = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                     for command, log in zip(commands, logs)]
        wait_or_kill(processes, timeout)
        failed = [(i, p.returncode) for i, p in enumerate(processes) if p.returncode != 0]
        if failed:
            index, code = failed[0]
            logs[index].seek(0)
            tail = logs[index].read()[-3000:]
            raise RuntimeError(f"{config.loader} on {ranks} ranks: process {index} exited {code}"
                               f"{' (killed after ' + str(int(timeout)) + ' s)' if code < 0 else ''}:\n{tail}")
        for log in logs:
            log.close()
        times, clip_bytes = [], 0
        for rank in range(ranks):
            with open(os.path.join(scratch, f"times.{rank}.json")) as handle:
                record = json.load(handle)
            clip_bytes = record.pop("clip_bytes")
            times.append(RankTimes(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}))
        return times, clip_bytes


def check_loaders(loaders: Sequence[str]) -> None:
    unknown = [name for name in loaders if name not in LOADERS]
    if unknown or not loaders:
        raise ValueError(f"--loaders must be a comma-separated list of {', '.join(LOADERS)}. "
                         f"Received: {','.join(loaders) or '(empty)'}")


# What a loader needs beyond the package's own dependencies: (module, name, how to add it).
NEEDS = {"torch-dataloader": ("torch", "PyTorch", "pip install torch, or pip install 'distributed_h5[bench-torch]'")}


def missing(loaders: Sequence[str]) -> dict[str, str]:
    """``{loader: why it cannot run here and how to add what it needs}`` for the ``loaders`` that
    cannot run in this environment (checked in the driver, before any rank starts)."""
    from importlib.util import find_spec

    return {name: f"{NEEDS[name][1]} is not installed ({NEEDS[name][2]})"
            for name in loaders if name in NEEDS and find_spec(NEEDS[name][0]) is None}


def bench_au(files: Sequence[str], ranks: Sequence[int], *, loaders: Sequence[str] = LOADERS,
             compute_ms: float = 30.0, batch_size: int = 16, cold: bool = False, gradient_mb: float = 0.0,
             seconds: float = 5.0, threads: int | None = None, feeder_workers: int = 1, feeder_prefetch: int = 1,
             torch_workers: int = 1, log: Callable[[str], None] = print) -> list[Row]:
    """One row per (file, loader, rank count); the page cache warmed (or, ``cold``, emptied) before each run."""
    from .io import warm

    check_loaders(loaders)
    rows = []
    for file in files:
        if cold:
            warm_rate, cold_rate = check_eviction(file)
            log(f"{os.path.basename(file)}: raw sequential read of 256 MB: {warm_rate:.2f} GB/s warm, "
                f"{cold_rate:.2f} GB/s right after eviction")
            if cold_rate > 0.5 * warm_rate:
                log("warning: eviction did not slow the read: the cold figures may be served from memory")
        for loader in loaders:
            config = Config(file, loader, batch_size, compute_ms, seconds, gradient_mb=gradient_mb, threads=threads,
                            feeder_workers=feeder_workers, feeder_prefetch=feeder_prefetch, torch_workers=torch_workers)
            for count in ranks:
                evict(file) if cold else warm(file)
                times, clip_bytes = run_point(config, count)
                row = summarise(times, file=os.path.basename(file), loader=loader, cache="cold" if cold else "warm",
                                batch_size=batch_size, compute_ms=compute_ms, clip_bytes=clip_bytes,
                                gradient_mb=gradient_mb, settings=settings(config))
                log(line(row))
                rows.append(row)
    return rows


# --- output ----------------------------------------------------------------------------------
HEADER = (f"{'file':<12}{'loader':<18}{'cache':<6}{'ranks':>6}{'AU':>7}{'AU min':>8}{'samples/s':>11}"
          f"{'MB/s':>9}{'wait ms':>9}{'allred. ms':>11}{'steps':>7}")


def line(row: Row) -> str:
    return (f"{row.file[:11]:<12}{row.loader:<18}{row.cache:<6}{row.ranks:>6}{row.au:>7.3f}{row.au_min:>8.3f}"
            f"{row.samples_per_second:>11.1f}{row.mb_per_second:>9.0f}{row.data_wait_ms:>9.2f}"
            f"{row.allreduce_ms:>11.2f}{row.steps:>7}")


def table(rows: Sequence[Row]) -> str:
    return "\n".join([HEADER, *(line(row) for row in rows)])


def verdict(rows: Sequence[Row]) -> str:
    """The largest rank count at which each loader keeps AU >= 0.90, one line each."""
    kept = most_ranks_kept(rows)
    measured = {key: sorted({r.ranks for r in rows if (r.file, r.loader, r.cache) == key}) for key in kept}
    return "\n".join(f"{file} {cache:<4} {loader:<18} keeps AU >= {AU_TARGET:.2f} up to {count} of "
                     f"{measured[(file, loader, cache)]} emulated accelerators"
                     for (file, loader, cache), count in kept.items())


def write_csv(rows: Sequence[Row], path: str) -> None:
    from ..data.outputs import write_rows

    write_rows(path, FIELDS, rows)


def read_csv(path: str) -> list[Row]:
    """Rows written by :func:`write_csv`."""
    if not os.path.isfile(path):
        raise ValueError(f"--from-csv: no such file: {path}")
    convert = {field.name: {"str": str, "int": int, "float": float}[field.type] for field in fields(Row)}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in FIELDS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a bench au CSV (missing columns: {', '.join(missing)})")
        return [Row(**{k: convert[k](row[k]) for k in FIELDS}) for row in reader]


def plot(rows: Sequence[Row], path: str) -> None:
    """AU against emulated accelerators, one line per loader, one panel per cache state."""
    from ..data.outputs import pyplot, save_figure

    plt = pyplot(path)
    caches = [cache for cache in ("warm", "cold") if any(r.cache == cache for r in rows)]
    fig, axes = plt.subplots(1, len(caches), figsize=(5.5 * len(caches), 4), squeeze=False)
    markers = dict(zip(LOADERS, "osD^"))
    for axis, cache in zip(axes[0], caches):
        chosen = [r for r in rows if r.cache == cache]
        for loader in dict.fromkeys(r.loader for r in chosen):
            points = sorted((r.ranks, r.au) for r in chosen if r.loader == loader)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=markers.get(loader, "x"), label=loader)
        ranks = sorted({r.ranks for r in chosen})
        first = chosen[0]
        axis.axhline(AU_TARGET, color="k", linestyle="--", linewidth=0.8, label=f"AU {AU_TARGET:.2f}")
        axis.set(xlabel="emulated accelerators (ranks)", ylabel="accelerator utilisation",
                 title=f"{cache} page cache, {first.compute_ms:g} ms/step, batch {first.batch_size}", ylim=(0, 1.05))
        axis.set_xticks(ranks, [str(r) for r in ranks])
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(fig, path, dpi=120)  # the format from the name


# --- python -m distributed_h5.bench.au --worker ------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distributed_h5.bench.au")
    parser.add_argument("--worker", required=True, help="the Config as JSON")
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--size", type=int, default=1)
    args = parser.parse_args(argv)
    rank_main(Config(**json.loads(args.worker)), args.rank, args.size, args.scratch)


if __name__ == "__main__":
    main()
