"""``distributed-h5``: the command line, a thin layer over the Python API.

A user mistake (bad file, bad argument, unwritable output) prints one line to stderr and
exits with status 2, never a traceback; under a launcher every rank prints the same line.
TensorFlow is imported only by the commands that need it, and then without its start-up
noise (:mod:`distributed_h5.quiet`; ``DH5_TF_LOG=1`` shows it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from .checkpoints import CHECKED_FIELDS, EXIT_PREEMPTED
from .engines.collective import BACKENDS, ENGINES
from .data.dataset import DatasetError
from .data.sharding import SPLITS

EXIT_USAGE = 2


def _finite_positive(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _finite_non_negative(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _unit(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative_int = _int_at_least(0)
SEED_MAX = 2**63 - 1  # numpy takes any seed >= 0, Keras' seed generators an int64, the augmentation keys 64 bits


def _seed(text: str) -> int:
    """``--seed``: an integer in [0, 2**63 - 1], what every random stream seeded from it accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}] (2**63 - 1), got {text}")
    return value


def _add_codec_arguments(command) -> None:
    from .data import jpeg
    from .data.synthetic import CODECS

    command.add_argument("--codec", choices=CODECS, default="raw",
                         help="raw: clips as stored pixels (default; --compression applies); jpeg: every frame a JPEG, "
                              "about 7x smaller at quality 90 on real video, decoded in the reader's threads")
    command.add_argument("--quality", type=_int_in(1, 100), default=jpeg.DEFAULT_QUALITY,
                         help=f"--codec jpeg: JPEG quality 1-100 (default {jpeg.DEFAULT_QUALITY})")
    command.add_argument("--subsampling", choices=jpeg.SUBSAMPLINGS, default=jpeg.DEFAULT_SUBSAMPLING,
                         help=f"--codec jpeg: chroma subsampling, 444 (full colour, default) or 420 (smaller)")


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text}")
        return value

    return parse


def _add_engine_argument(command) -> None:
    command.add_argument("--engine", choices=ENGINES, default=os.environ.get("DH5_ENGINE") or None,
                         help="horovod (Keras on TensorFlow; horovodrun, mpirun, srun) or jax (Keras on JAX; mpirun, "
                              "srun). Default: $DH5_ENGINE, else the one that fits $KERAS_BACKEND, else horovod")


def _checks(text: str) -> list[str]:
    from .doctor import CHECKS  # imports nothing heavy at module level

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"takes names from {','.join(CHECKS)}, got {','.join(unknown)}")
    return names


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and a pointer to --help), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from . import __version__

    return f"distributed-h5 {__version__}"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distributed-h5", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="what is installed and working, one line each")
    doctor.add_argument("--require", default="", type=_checks,
                        help="comma-separated checks that must pass, else exit status 1: "
                             "tensorflow,keras,horovod,gloo,nccl,mpi,gpu,jax,locking,slurm")
    doctor.add_argument("--dir", default=".", help="where to check that HDF5 file locking works (default: here)")

    make = commands.add_parser("make-synthetic", help="write a learnable synthetic video dataset")
    make.add_argument("out", help="output HDF5 file")
    make.add_argument("--samples", type=_positive, required=True, help="clips to write")
    make.add_argument("--frames", type=_positive, default=16)
    make.add_argument("--channels", type=_positive, default=3)
    make.add_argument("--size", type=_positive, nargs=2, default=(64, 64), metavar=("H", "W"))
    make.add_argument("--classes", type=_positive, default=4)
    make.add_argument("--chunks", choices=("clip", "none"), default="clip", help="one clip per chunk, or contiguous")
    make.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    make.add_argument("--sample-count", type=_positive, help="the sample_count attribute (default: --samples)")
    make.add_argument("--seed", type=_seed, default=0)
    _add_codec_arguments(make)

    convert = commands.add_parser("convert", help="video files to the HDF5 layout (parallel under mpirun or srun)")
    convert.add_argument("source", help="SRC/<class>/<video> folders, or the folder CSV paths are relative to")
    convert.add_argument("out", help="output HDF5 file")
    convert.add_argument("--frames", type=_positive, required=True, help="frames sampled uniformly per video")
    convert.add_argument("--size", type=_positive, nargs=2, required=True, metavar=("H", "W"))
    convert.add_argument("--classes-from", default="folders", help="'folders' (default) or a CSV of path,label")
    convert.add_argument("--channels", type=int, choices=(3, 1), default=3)
    convert.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep the aspect ratio by centre crop or pad")
    convert.add_argument("--short", choices=("pad", "skip"), default="pad",
                         help="videos with fewer frames: repeat the last frame, or skip them")
    convert.add_argument("--chunks", choices=("clip", "none"), default="clip")
    convert.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    _add_codec_arguments(convert)
    convert.add_argument("--resume", action="store_true", help="keep the parts an interrupted run completed")
    convert.add_argument("--part-videos", type=_positive, default=16, help="videos per part file (the unit of resume)")
    convert.add_argument("--strict", action="store_true",
                         help="exit non-zero if any video fails or any folder or link is not searched")
    convert.add_argument("--split-file", help="a UCF101/HMDB51-style list of video paths relative to SRC (one per "
                         "line, an optional class number after it): recorded per clip as the 'subset' dataset")
    convert.add_argument("--split-side", choices=("validation", "train"), default="validation",
                         help="the side the --split-file videos are on (default validation: a test list); "
                              "the other videos go to the other side")

    checkpoint = commands.add_parser("inspect-checkpoint", help="print what a checkpoint records (position, "
                                     "run configuration, metrics)")
    checkpoint.add_argument("checkpoint", help="a .keras checkpoint written by train")

    inspect = commands.add_parser("inspect", help="print a dataset's layout, or why it is invalid "
                                  "(of a .keras checkpoint: its record, as inspect-checkpoint does)")
    inspect.add_argument("file")
    inspect.add_argument("--verify", action="store_true",
                         help="read every clip in use, not only a few, to find any corrupt chunk (takes a full read)")

    train = commands.add_parser("train", help="train a video classifier (run under horovodrun, mpirun or srun)")
    train.add_argument("file")
    train.add_argument("--epochs", type=_positive, default=10)
    train.add_argument("--batch-size", type=_positive, default=32, help="clips per step on each rank")
    train.add_argument("--validation-ratio", type=float, default=0.3)
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--model", default="video",
                       help="'video' (the compact (2+1)D model), 'r2plus1d_18', or a compiled .keras model file")
    train.add_argument("--width", type=_positive, help="reference models: filters of the first block "
                       "(default 16 for video, 64 for r2plus1d_18)")
    train.add_argument("--depth", type=_positive, default=3, help="video model: blocks")
    train.add_argument("--dropout", type=_unit, default=0.3, help="reference models: dropout rate")
    train.add_argument("--batchnorm", action="store_true", help="video model: BatchNormalization after each conv")
    train.add_argument("--sync-bn", action="store_true",
                       help="BatchNorm statistics over the global batch (all ranks) instead of each rank's")
    train.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default="float32",
                       help="float32 (default; CPUs), mixed_bfloat16 (A100/H100) or mixed_float16 (V100, T4)")
    train.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="for the reference models")
    train.add_argument("--learning-rate", type=_finite_positive, default=1e-3,
                       help="the rate for one rank's batch, before scaling to the global batch")
    train.add_argument("--no-scale-lr", action="store_true", help="do not scale the rate to the global batch")
    train.add_argument("--warmup-epochs", type=_finite_non_negative, default=3)
    train.add_argument("--checkpoint-dir", help="rank 0 writes epoch-NNNN.keras and best.keras here")
    train.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in a --checkpoint-dir/--log-dir that holds another run, moving its files "
                            "into a replaced-* folder there (without it such a directory is refused)")
    train.add_argument("--keep-checkpoints", type=_positive, default=2, help="epoch checkpoints kept (default 2)")
    train.add_argument("--monitor", default="val_loss",
                       help="metric that picks best.keras: val_loss (min) or val_accuracy (max); 'none' for no best")
    train.add_argument("--allow-config-change", action="append", default=[],
                       choices=CHECKED_FIELDS,
                       help="resume although this field differs from the checkpoint's (repeatable)")
    train.add_argument("--log-dir", help="training.csv, training.png and TensorBoard logs (default: --checkpoint-dir)")
    train.add_argument("--remainder", choices=("pad", "drop"), default="pad")
    train.add_argument("--split", choices=SPLITS,
                       help="train/validation split: random clips, whole source videos (the file's 'groups'), or "
                            "the file's 'subset' from convert --split-file (default: groups when the file has them)")
    augment = train.add_argument_group(
        "clip sampling and augmentation (training: random per (seed, epoch, clip); validation: the centre view)")
    augment.add_argument("--clip-frames", type=_positive, metavar="T",
                         help="train on windows of T frames of each stored clip (default: all stored frames)")
    augment.add_argument("--frame-stride", type=_positive, default=1, metavar="S",
                         help="take every S-th frame in the window (default 1)")
    augment.add_argument("--crop", type=_positive, nargs=2, metavar=("H", "W"), help="a random H x W crop")
    augment.add_argument("--flip", action="store_true", help="flip horizontally with probability 0.5")
    augment.add_argument("--scale", type=_positive, nargs=2, metavar=("MIN", "MAX"),
                         help="scale the short side to a random size in [MIN, MAX] before the crop (needs --crop)")
    _add_engine_argument(train)
    train.add_argument("--elastic", action="store_true",
                       help="Horovod's elastic mode (launch/horovodrun.sh --elastic): a lost rank rolls every rank "
                            "back to the last commit and training goes on with the ranks that remain or join")
    train.add_argument("--commit-every", type=_positive, default=8,
                       help="--elastic: steps between in-memory commits (a lost rank costs the steps since the last)")
    train.add_argument("--threads", type=_positive, help="reader threads per rank")
    train.add_argument("--prefetch", type=_non_negative_int, default=0,
                       help="batches buffered in tf.data: 1 hides the hand-off of each batch into TensorFlow, "
                       "but data_wait_fraction then only bounds the wait from above (default 0: exact)")
    train.add_argument("--allow-unwritten", action="store_true",
                       help="train on a file whose X or Y was never written in places (read as the fill value)")
    train.add_argument("--tf-threads", type=_positive, default=os.environ.get("DH5_TF_THREADS"),
                       help="TensorFlow threads per rank, horovod engine (default: $DH5_TF_THREADS, else TensorFlow's)")
    train.add_argument("--stop-signal", choices=("USR1", "USR2", "TERM"),
                       help="on this signal all ranks stop at one step, rank 0 checkpoints, exit status 75")
    train.add_argument("--check-every", type=_positive, default=8,
                       help="steps between the ranks' agreement on stopping (signal, non-finite loss)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)

    evaluate = commands.add_parser("evaluate", help="a checkpoint's loss and accuracy on the validation subset "
                                   "(as training took it; run under horovodrun for several ranks)")
    predict = commands.add_parser("predict", help="every clip's predicted class into a CSV, and a confusion-matrix "
                                  "PNG beside it")
    for sub in (evaluate, predict):
        sub.add_argument("file")
        sub.add_argument("--checkpoint", required=True, help="a .keras checkpoint written by train")
        sub.add_argument("--views", type=_positive, nargs=2, default=(1, 1), metavar=("T", "S"),
                         help="T temporal windows x S spatial crops per clip, scores averaged (default 1 1: the "
                              "centre view training validated on)")
        sub.add_argument("--batch-size", type=_positive, help="clips per batch on each rank (default: the checkpoint's)")
        sub.add_argument("--threads", type=_positive, help="reader threads per rank")
        sub.add_argument("--tf-threads", type=_positive, default=os.environ.get("DH5_TF_THREADS"),
                         help="TensorFlow threads per rank (default: $DH5_TF_THREADS, else TensorFlow's)")
        _add_engine_argument(sub)
    for sub in (evaluate, predict):  # the split training took: predict reports its two sides apart
        sub.add_argument("--seed", type=_seed, help="split seed (default: the checkpoint's)")
        sub.add_argument("--validation-ratio", type=_unit, help="(default: the checkpoint's)")
        sub.add_argument("--split", choices=SPLITS, help="(default: the checkpoint's)")
    predict.add_argument("--out", required=True, help="the CSV to write; the PNG goes beside it as OUT-confusion.png")

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    benches = bench.add_subparsers(dest="bench", required=True)
    io = benches.add_parser("io", help="read throughput of each method against sequential slab reads")
    io.add_argument("files", nargs="+")
    io.add_argument("--batch-size", type=_positive, default=32)
    io.add_argument("--threads", type=_positive, help="reader threads for the parallel run (default: cores, at most 4)")
    io.add_argument("--seconds", type=float, default=10.0, help="time limit per method")
    io.add_argument("--csv", help="append one row per method to this CSV file")
    scaling = benches.add_parser("scaling", help="throughput and efficiency at several rank counts")
    scaling.add_argument("file")
    scaling.add_argument("--ranks", default="1,2", help="comma-separated rank counts (1 is always run, as the base)")
    scaling.add_argument("--batch-size", type=_positive, default=8, help="per-rank batch for weak scaling")
    scaling.add_argument("--global-batch", type=_positive, help="global batch for strong scaling (default: batch x max ranks)")
    scaling.add_argument("--steps", type=_positive, default=30, help="timed steps per run")
    scaling.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    scaling.add_argument("--width", type=_positive, help="model width (default 16 for video, 64 for r2plus1d_18)")
    scaling.add_argument("--depth", type=_positive, default=3, help="reference model depth")
    scaling.add_argument("--model", choices=("video", "r2plus1d_18"), default="video",
                         help="video: the reference (2+1)D model (--width, --depth); r2plus1d_18: R(2+1)D-18")
    scaling.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default="float32")
    scaling.add_argument("--launcher", choices=("horovodrun", "srun"), default="horovodrun",
                         help="srun inside a SLURM allocation (slurm/scaling.sbatch)")
    scaling.add_argument("--controller", choices=("gloo", "mpi"), default="gloo", help="Horovod controller for horovodrun")
    scaling.add_argument("--clip-frames", type=_positive, metavar="T", help="train's --clip-frames (default: all)")
    scaling.add_argument("--crop", type=_positive, nargs=2, metavar=("H", "W"), help="train's --crop")
    scaling.add_argument("--flip", action="store_true", help="train's --flip")
    scaling.add_argument("--csv", help="write one row per run here")
    scaling.add_argument("--plot", help="write a PNG of throughput and efficiency against ranks here")
    model = scaling.add_argument_group("projection beyond this machine (docs/BENCHMARKS.md explains the model)")
    model.add_argument("--from-csv", help="use the rows of an earlier --csv instead of measuring (FILE is then unused)")
    model.add_argument("--project", help="comma-separated rank counts to project, e.g. 8,64,512")
    model.add_argument("--compute-ms", type=float, help="per-step compute instead of the measured one (e.g. a GPU's)")
    model.add_argument("--gradient-mb", type=float, help="gradient MB per step instead of the reference model's")
    model.add_argument("--link-gbps", type=float, default=100.0, help="network per node, Gb/s (default 100)")
    model.add_argument("--latency-us", type=float, default=5.0, help="per-message latency, us (default 5)")
    model.add_argument("--shared-fs-gbps", type=float, default=20.0,
                       help="shared file system, aggregate GB/s (default 20)")
    model.add_argument("--local-gbps", type=float, default=2.0, help="node-local storage per node, GB/s (default 2)")
    model.add_argument("--ranks-per-node", type=_positive, default=8)
    model.add_argument("--commit-every", type=_positive, default=8,
                       help="projection: train --elastic's steps between commits, for what a lost rank costs")
    au = benches.add_parser("au", help="accelerator utilisation (MLPerf Storage's AU) of each loader at several rank counts")
    au.add_argument("files", nargs="*", metavar="FILE", help="HDF5 files (none with --from-csv)")
    au.add_argument("--ranks", default="1,2,4,8", help="comma-separated rank counts, one emulated accelerator each")
    au.add_argument("--compute-ms", type=float, default=30.0, help="emulated accelerator step time, ms (default 30)")
    au.add_argument("--batch-size", type=_positive, default=16, help="clips per rank per step (default 16)")
    au.add_argument("--cold", action="store_true", help="drop the file from the page cache before every run")
    au.add_argument("--gradient-mb", type=float, default=0.0, help="MB allreduced per step with Horovod Gloo (default 0)")
    au.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run, at most one epoch (default 5)")
    au.add_argument("--loaders", help="comma-separated loaders (default: those of distributed_h5, torch-dataloader, "
                                      "tfdata and seed that can run here)")
    au.add_argument("--threads", type=_positive, help="distributed_h5 reader threads (default: train_model's)")
    au.add_argument("--feeder-workers", type=_positive, default=1, help="distributed_h5 Feeder threads (default 1)")
    au.add_argument("--feeder-prefetch", type=_non_negative_int, default=0,
                    help="distributed_h5: batches buffered in tf.data (train --prefetch; default 0)")
    au.add_argument("--torch-workers", type=int, default=1, help="torch-dataloader num_workers (default 1)")
    au.add_argument("--csv", help="write one row per loader and rank count here")
    au.add_argument("--plot", help="write a PNG of AU against rank count here")
    au.add_argument("--from-csv", nargs="+", help="print, and plot, the rows of earlier --csv files instead of measuring")
    return parser


def _make_synthetic(args) -> int:
    from .data.synthetic import make_synthetic

    path = make_synthetic(args.out, samples=args.samples, frames=args.frames, channels=args.channels,
                          size=tuple(args.size), classes=args.classes, chunks=args.chunks,
                          compression=args.compression, seed=args.seed, sample_count=args.sample_count,
                          codec=args.codec, quality=args.quality, subsampling=args.subsampling)
    print(f"wrote {path}")
    return 0


def _convert(args) -> int:
    from .data.convert import convert, report

    summary = convert(args.source, args.out, frames=args.frames, size=tuple(args.size), classes_from=args.classes_from,
                      channels=args.channels, fit=args.fit, short=args.short, chunks=args.chunks,
                      compression=args.compression, resume=args.resume, part_videos=args.part_videos,
                      split_file=args.split_file, split_side=args.split_side, codec=args.codec,
                      quality=args.quality, subsampling=args.subsampling)
    if summary.rank == 0:  # one report for the job
        print(report(summary, args.out), flush=True)
    return 0 if summary.converted and not (args.strict and (summary.failed or summary.unlisted)) else 1


def _inspect(args) -> int:
    import numpy as np

    from .data.dataset import open_file, probe_indices, read_clips, read_labels, validate

    if args.file.endswith(".keras"):  # a checkpoint: its record, as inspect-checkpoint prints it
        return _inspect_checkpoint(argparse.Namespace(checkpoint=args.file))

    with open_file(args.file) as file:
        info = validate(file)
        counts = np.bincount(read_labels(file, info.sample_count), minlength=info.classes)
        provenance, names = _provenance(file, info.rows, info.classes)
        # Read clips, so corrupt or truncated chunks and undecodable filters show here, not mid-training.
        checked = probe_indices(info.sample_count)
        read_clips(file, checked)
        if args.verify:
            _verify(file, info)
        stored = _stored_clip_bytes(file, info)
    frames, channels, rows, cols = info.clip_shape
    print(f"file          {info.path}")
    print(f"size on disk  {info.file_bytes / 2**20:.1f} MiB")
    print(f"X             {(info.rows, *info.clip_shape)} {info.dtype} "
          f"(samples, frames={frames}, channels={channels}, rows={rows}, cols={cols})")
    print(f"Y             {(info.rows, info.classes)}")
    if info.codec == "jpeg":
        print(f"codec         jpeg, quality {stored['quality']}, subsampling {stored['subsampling']}: "
              f"{stored['bytes'] / info.rows:,.0f} bytes per clip on average, 1/{info.clip_bytes * info.rows / max(1, stored['bytes']):.1f} "
              f"of raw ({info.clip_bytes:,} bytes)")
    else:
        print(f"chunks        {info.chunks if info.chunks else 'contiguous'}")
        print(f"compression   {info.compression or 'none'}")
    print(f"sample_count  {info.sample_count}")
    print(f"clips read    {f'all {info.sample_count}' if args.verify else f'{checked.size} (first, last, spread)'}, "
          "no error")
    print("class counts  " + ", ".join(
        f"{names[k] if names is not None else k}: {count}" for k, count in enumerate(counts.tolist())))
    for line in provenance:
        print(line)
    return 0


def _verify(file, info) -> None:
    """Read every clip in use (``inspect --verify``), 64 at a time: through h5py for stored
    clips (corrupt chunks, filters), decoded for JPEG ones (every frame); DatasetError names the first bad one."""
    import numpy as np

    from .data import jpeg
    from .data.dataset import DatasetError, read_clips

    if info.codec != "jpeg":
        for start in range(0, info.sample_count, 64):  # bounded memory
            read_clips(file, np.arange(start, min(start + 64, info.sample_count)))
        return
    try:
        with jpeg.JpegClips(info.path, threads=1) as clips:
            for start in range(0, info.sample_count, 64):
                clips.read(np.arange(start, min(start + 64, info.sample_count)))
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def _stored_clip_bytes(file, info) -> dict:
    """JPEG clips: the quality, subsampling and stored bytes of X (for ``inspect``)."""
    if info.codec != "jpeg":
        return {}
    x = file["X"]
    return dict(quality=int(x.attrs["quality"]), subsampling=str(x.attrs["subsampling"]), bytes=int(x["bytes"].size))


def _provenance(file, rows: int, classes: int) -> tuple[list[str], list[str] | None]:
    """Lines for the optional objects ``convert`` writes (see the README's layout table), if present,
    and the class names when there is one per class. Provenance is optional: what does not fit
    X and Y is shown as far as it is consistent, with a ``note`` line saying what is wrong."""
    import h5py
    import numpy as np

    from .data.outputs import printable

    lines, notes, names = [], [], None
    if "class_names" in file.attrs:
        shown = [printable(name) for name in np.asarray(file.attrs["class_names"], dtype=object).reshape(-1)]
        lines.append(f"class_names   attribute, {len(shown)}: {', '.join(shown)}")
        if len(shown) == classes:
            names = shown
        else:
            notes.append(f"class_names has {len(shown)} name(s) for the {classes} columns of Y; classes are counted "
                         "by number")
    if "source_paths" in file:
        paths = file["source_paths"]
        if not isinstance(paths, h5py.Dataset) or paths.ndim != 1:
            notes.append(f"source_paths is {getattr(paths, 'shape', type(paths).__name__)}, expected one path per row "
                         "of X; not shown")
        else:
            first, last = (printable(paths[0]), printable(paths[-1])) if len(paths) else ("", "")
            lines.append(f"source_paths  dataset {paths.shape} strings, {first} ... {last}")
            if paths.shape[0] != rows:
                notes.append(f"source_paths has {paths.shape[0]} entries for the {rows} rows of X")
    for name in ("frame_counts", "frame_rates"):
        if name in file:
            dset = file[name]
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 1 or dset.dtype.kind not in "iuf":
                what = f"{dset.shape} {dset.dtype}" if isinstance(dset, h5py.Dataset) else type(dset).__name__
                lines.append(f"{name:<13} dataset {what}")
                notes.append(f"{name} is {what}, expected one number per row of X; not summarised")
                continue
            values = dset[:rows]
            summary = (f", min {values.min():g}, median {np.median(values):g}, max {values.max():g}"
                       if values.size else "")
            lines.append(f"{name:<13} dataset {dset.shape} {dset.dtype}{summary}")
            if dset.shape[0] != rows:
                notes.append(f"{name} has {dset.shape[0]} entries for the {rows} rows of X")
    from .data.dataset import read_groups, read_subset  # they check the values: a bad one is one line

    if "groups" in file:
        groups = read_groups(file, rows)
        lines.append(f"groups        dataset {file['groups'].shape} {file['groups'].dtype}, "
                     f"{np.unique(groups).size} source videos")
    if "subset" in file:
        counts = np.bincount(read_subset(file, rows), minlength=2)
        lines.append(f"subset        dataset {file['subset'].shape} {file['subset'].dtype}, "
                     f"train {counts[0]}, validation {counts[1]}")
    if "generator" in file.attrs:
        lines.append(f"generator     attribute, {printable(file.attrs['generator'])}")
    return lines + [f"note          {note}" for note in notes], names


def _quiet_other_ranks() -> None:
    # Before TensorFlow loads: its C++ start-up logs, once per rank, drown rank 0's output.
    # No engine is initialised yet, so the launcher's variables are all there is.
    from .engines.launcher import launcher_world

    try:
        launched = launcher_world()
    except ValueError:  # garbage in the launcher's variables: the command says so later
        return
    if launched is not None and launched[0] != 0:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _train(args) -> int:
    _quiet_other_ranks()
    _start_engine(args)
    import keras

    from .data.augment import Augment
    from .data.dataset import describe
    from .models import r2plus1d_18, video_classifier
    from .training import train_model

    info = describe(args.file, labels=True, clips=True, allow_unwritten=args.allow_unwritten)  # bad labels or unreadable clips: one line, before any model
    augment = Augment(clip_frames=args.clip_frames, frame_stride=args.frame_stride, crop=args.crop, flip=args.flip,
                      scale=args.scale)
    clip_shape = augment.output_shape(info.clip_shape)  # what the model sees; one line if it does not fit
    # The dtype policy must be set before the model is built: layers take it at construction.
    keras.config.set_dtype_policy(args.precision)
    if args.model in ("video", "r2plus1d_18"):
        if args.model == "video":
            model = video_classifier(clip_shape, info.classes, width=args.width or 16, depth=args.depth,
                                     dropout=args.dropout, batchnorm=args.batchnorm, dtype=info.dtype, seed=args.seed)
        else:
            model = r2plus1d_18(clip_shape, info.classes, width=args.width or 64, dropout=args.dropout,
                                dtype=info.dtype, seed=args.seed)
        optimizer = (keras.optimizers.Adam(args.learning_rate) if args.optimizer == "adam"
                     else keras.optimizers.SGD(args.learning_rate, momentum=0.9))
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    else:
        model = _load_compiled(args.model)
        expected = getattr(model, "input_shape", None)
        if isinstance(expected, tuple) and len(expected) == 5 and any(
                v is not None and v != c for v, c in zip(expected[1:], clip_shape)):
            raise ValueError(f"--model {args.model} takes clips of shape {tuple(expected[1:])}, but the clips it would "
                             f"be fed are {clip_shape} (the file's, after --clip-frames/--frame-stride/--crop)")
    history = train_model(
        model, args.file, validation_ratio=args.validation_ratio, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, scale_learning_rate=not args.no_scale_lr, warmup_epochs=args.warmup_epochs,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints,
        monitor=None if args.monitor == "none" else args.monitor, log_dir=args.log_dir, remainder=args.remainder,
        augment=augment, split=args.split,
        threads=args.threads, prefetch=args.prefetch, allow_unwritten=args.allow_unwritten, verbose=args.verbose, check_every=args.check_every, sync_batchnorm=args.sync_bn,
        precision=args.precision, allow_config_change=tuple(args.allow_config_change), engine=args.engine,
        elastic=args.elastic, commit_every=args.commit_every,
        stop_signal=getattr(signal, f"SIG{args.stop_signal}") if args.stop_signal else None,
    )
    if history.run.ranks == 1 or _rank() == 0:  # one summary for the job, not one per rank
        print(history.run.line(history), flush=True)
    return 0


def _start_engine(args) -> None:
    """Before any model exists: JAX joins the other processes (it must, before it computes
    anything); TensorFlow takes its thread count (before it starts its thread pools: one
    thread per rank lets as many ranks as cores share a machine without oversubscribing it)."""
    if args.engine == "jax":
        from .engines import init_engine

        init_engine("jax")
    elif args.tf_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(args.tf_threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(args.tf_threads))


def _evaluate(args) -> int:
    _quiet_other_ranks()
    _start_engine(args)
    from .evaluation import evaluate_model

    result = evaluate_model(args.checkpoint, args.file, batch_size=args.batch_size, validation_ratio=args.validation_ratio,
                            seed=args.seed, split=args.split, views=tuple(args.views), threads=args.threads)
    if _rank() == 0:  # one line for the job; every rank holds the same result
        print(result.line(), flush=True)
    return 0


def _predict(args) -> int:
    _quiet_other_ranks()
    from .data.outputs import check_output

    out = check_output(args.out)  # on every rank, before any work
    _start_engine(args)
    from .evaluation import predict_model, write_predictions

    predictions = predict_model(args.checkpoint, args.file, batch_size=args.batch_size, views=tuple(args.views),
                                threads=args.threads, seed=args.seed, validation_ratio=args.validation_ratio,
                                split=args.split)
    if _rank() == 0:  # rank 0 alone writes
        csv_path, png = write_predictions(predictions, out)
        print(f"{predictions.line()} views={args.views[0]}x{args.views[1]} csv={csv_path} confusion={png}", flush=True)
    return 0


def _rank() -> int:
    from .engines.launcher import world

    return world()[0]


def _load_compiled(path: str):
    """A compiled model from a .keras file, or a one-line ValueError saying what is wrong."""
    import zipfile

    import keras

    if not os.path.isfile(path):
        raise ValueError(f"--model must be 'video', 'r2plus1d_18' or a .keras model file. Received: {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"--model {path}: not a .keras model file (Keras 3 saves models as .keras zip archives)")
    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # Keras raises many kinds for a bad file; the user needs one line
        raise ValueError(f"--model {path}: cannot be loaded by keras.models.load_model: {exc}") from exc
    if not isinstance(model, keras.Model) or model.optimizer is None or not getattr(model, "compiled", False):
        raise ValueError(f"--model {path}: the model is not compiled; save it after model.compile(optimizer=..., "
                         "loss=...)")
    return model


def _inspect_checkpoint(args) -> int:
    from .checkpoints import describe, read_record, record_config

    try:
        text = describe(args.checkpoint)
    except (TypeError, AttributeError, KeyError) as exc:  # a record of another shape than train writes
        raise ValueError(f"{args.checkpoint}: its record (distributed_h5.json) cannot be read: {exc!r}") from exc
    try:
        record_config(read_record(args.checkpoint))
    except (TypeError, ValueError, AttributeError) as exc:  # shown as far as it goes, and why evaluate refuses it
        text += (f"\nnote          the record's config is not a whole run configuration ({_one_line(exc)}); evaluate "
                 "and predict refuse this checkpoint")
    print(text, flush=True)
    return 0


def _rank_counts(text: str) -> list[int]:
    """``--ranks``: a comma-separated list of integers >= 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"--ranks must be comma-separated integers >= 1, e.g. 1,2,4,8. Received: {text!r}")
    return counts


def _bench_au(args) -> int:
    from .bench import au

    if args.from_csv:
        rows = [row for path in args.from_csv for row in au.read_csv(path)]
    else:
        if not args.files:
            raise ValueError("bench au needs at least one FILE (or --from-csv)")
        ranks = _rank_counts(args.ranks)
        loaders = [name.strip() for name in (args.loaders or ",".join(au.LOADERS)).split(",") if name.strip()]
        au.check_loaders(loaders)
        unavailable = au.missing(loaders)
        if unavailable and args.loaders:  # asked for by name: one line before any work
            name, why = next(iter(unavailable.items()))
            raise ValueError(f"--loaders {name}: {why}")
        if unavailable:  # the default set: run the others, and say what was left out
            loaders = [name for name in loaders if name not in unavailable]
            print("note: left out " + "; ".join(f"{name}: {why}" for name, why in unavailable.items()), flush=True)
        for name, value in (("--compute-ms", args.compute_ms), ("--seconds", args.seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be a number > 0. Received: {value}")
        if not args.gradient_mb >= 0 or args.torch_workers < 0:
            raise ValueError(f"--gradient-mb and --torch-workers must be >= 0. Received: {args.gradient_mb}, "
                             f"{args.torch_workers}")
        from .data.dataset import describe

        for path in args.files:
            describe(path)  # a bad file is one line here, not a traceback in every rank
        print(au.HEADER, flush=True)
        rows = au.bench_au(args.files, ranks, loaders=loaders, compute_ms=args.compute_ms, batch_size=args.batch_size,
                           cold=args.cold, gradient_mb=args.gradient_mb, seconds=args.seconds, threads=args.threads,
                           feeder_workers=args.feeder_workers, feeder_prefetch=args.feeder_prefetch,
                           torch_workers=args.torch_workers,
                           log=lambda text: print(text, flush=True))
    if args.from_csv:
        print(au.table(rows))
    print(au.verdict(rows), flush=True)
    if args.csv:
        au.write_csv(rows, args.csv)
    if args.plot:
        au.plot(rows, args.plot)
    return 0


def _augment_args(args) -> tuple:
    """``bench scaling``'s augmentation flags for its workers, checked against the file here (one line if bad)."""
    from .data.augment import Augment
    from .data.dataset import describe

    Augment(clip_frames=args.clip_frames, crop=args.crop, flip=args.flip).output_shape(describe(args.file).clip_shape)
    return ((("--clip-frames", args.clip_frames) if args.clip_frames else ()) + (("--crop", *args.crop) if args.crop else ())
            + (("--flip",) if args.flip else ()))


def _bench(args) -> int:
    if args.bench == "au":
        return _bench_au(args)
    if args.bench == "scaling":
        from .bench import scaling

        if args.from_csv:  # project from an earlier measurement instead of measuring again
            if not os.path.isfile(args.from_csv):
                raise ValueError(f"--from-csv: no such file: {args.from_csv}")
            rows = scaling.read_csv(args.from_csv)
        else:
            ranks = _rank_counts(args.ranks)
            rows = scaling.bench_scaling(args.file, ranks, batch_size=args.batch_size, global_batch=args.global_batch,
                                         steps=args.steps, warmup=args.warmup, depth=args.depth,
                                         width=args.width or (64 if args.model == "r2plus1d_18" else 16),
                                         launcher=args.launcher, controller=args.controller, model=args.model,
                                         precision=args.precision, augment_args=_augment_args(args))
        print(scaling.table(rows), flush=True)
        if args.csv:
            scaling.write_csv(rows, args.csv)
        if args.plot:
            scaling.plot(rows, args.plot)
        if args.project:
            from .bench import projection

            base = next(row for row in rows if row.mode == "weak" and row.ranks == 1)
            assumptions = projection.Assumptions(
                compute_seconds=args.compute_ms / 1e3 if args.compute_ms else base.compute_seconds,
                gradient_bytes=int(args.gradient_mb * 1e6) if args.gradient_mb else base.allreduce_bytes_per_step,
                read_bytes=base.read_bytes_per_step,
                link_gbit_per_second=args.link_gbps, latency_seconds=args.latency_us / 1e6,
                shared_fs_gbyte_per_second=args.shared_fs_gbps, local_gbyte_per_second=args.local_gbps,
                ranks_per_node=args.ranks_per_node)
            print(projection.describe(assumptions))
            projected = projection.project(assumptions, [int(p) for p in args.project.split(",") if p])
            print(projection.table(projected))
            print(projection.rank_loss(projected, args.commit_every))
        return 0
    from .bench.io import bench_io, report

    for path in args.files:
        results = bench_io(path, batch_size=args.batch_size, threads=args.threads, seconds=args.seconds)
        print(report(path, results, args.csv), flush=True)
    return 0


def _doctor(args) -> int:
    from .doctor import findings, report

    text, status = report(findings(args.dir), args.require)
    print(text, flush=True)
    return status


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


ERROR_GRACE_SECONDS = 2.0


def _let_other_ranks_report() -> None:
    # A launcher kills every rank once one exits non-zero. Every rank meets a user mistake
    # (a bad file, a bad argument) within moments of the others; waiting a little before
    # exiting lets each print the same line instead of some being killed mid-way.
    from .engines.launcher import launcher_world

    try:
        launched = launcher_world()
    except ValueError:  # the launcher's variables are garbage: nothing to wait for
        return
    if launched is not None and launched[1] > 1:
        time.sleep(ERROR_GRACE_SECONDS)


def _fail(command: str, exc: BaseException) -> int:
    print(f"distributed-h5 {command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
    _let_other_ranks_report()
    return EXIT_USAGE


def _engine_backend(engine: str | None) -> str:
    """The engine a command runs, with KERAS_BACKEND set to fit it before Keras is imported."""
    backend = os.environ.get("KERAS_BACKEND")
    if engine is None:
        engine = "jax" if backend == BACKENDS["jax"] else "horovod"
    if engine not in BACKENDS:
        raise ValueError(f"--engine (or DH5_ENGINE) must be one of {sorted(BACKENDS)}. Received: {engine!r}")
    if backend not in (None, "", BACKENDS[engine]):
        raise ValueError(f"--engine {engine} runs Keras on {BACKENDS[engine]}, but KERAS_BACKEND={backend}: "
                         f"unset KERAS_BACKEND or pick the engine that fits it")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != BACKENDS[engine]:
        raise ValueError(f"--engine {engine} needs Keras on {BACKENDS[engine]}, and Keras was already imported "
                         f"on {sys.modules['keras'].backend.backend()} in this process")
    os.environ["KERAS_BACKEND"] = BACKENDS[engine]
    return engine


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"make-synthetic": _make_synthetic, "convert": _convert, "inspect": _inspect, "train": _train,
               "bench": _bench, "doctor": _doctor, "evaluate": _evaluate, "predict": _predict,
               "inspect-checkpoint": _inspect_checkpoint}[args.command]
    if args.command in ("train", "evaluate", "predict"):
        try:
            args.engine = _engine_backend(args.engine)
        except ValueError as exc:
            return _fail(args.command, exc)
    if args.command in ("bench", "doctor") or (
            args.command in ("train", "evaluate", "predict") and args.engine == "horovod"):  # the commands that load TensorFlow: quietly, first
        from .quiet import import_tensorflow

        try:
            import_tensorflow()
        except ImportError as exc:
            if args.command != "doctor":  # doctor reports it among its checks
                print(f"distributed-h5 {args.command}: error: TensorFlow cannot be imported ({_one_line(exc)}); "
                      "run `make install`", file=sys.stderr)
                return 1
    try:
        return command(args)
    except (DatasetError, ValueError) as exc:
        return _fail(args.command, exc)
    except OSError as exc:  # an unreadable input or unwritable output the checks could not foresee
        return _fail(args.command, exc)
    except RuntimeError as exc:  # Horovod missing, a locked or unwritable checkpoint dir, a non-finite loss,
        status = getattr(exc, "exit_status", 1)  # or callbacks.Preempted (75: run again with --resume)
        if status == EXIT_PREEMPTED:
            print(f"distributed-h5 {args.command}: {_one_line(exc)}", file=sys.stderr)
            return status
        print(f"distributed-h5 {args.command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        _let_other_ranks_report()
        return status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
