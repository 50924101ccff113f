"""``bench io``, ``bench scaling`` and ``bench au``: benchmarks that print figures. Parsers and handlers.

The benchmarks import TensorFlow (:func:`main` imports it quietly first); the parsers import
only the benchmarks' vocabularies.
"""

from __future__ import annotations

import os

from ..bench import au as au_bench
from ..bench import scaling as scaling_bench
from ..checkpoints import MODELS, PRECISIONS
from . import _command, _non_negative_int, _positive, _rank_counts


def add_commands(commands) -> None:
    bench = _command(commands, "bench", "benchmarks that print figures", None)
    benches = bench.add_subparsers(dest="bench", required=True)

    io = _command(benches, "io", "read throughput of each method against sequential slab reads", _bench_io)
    io.add_argument("files", nargs="+", help="HDF5 files")
    io.add_argument("--batch-size", type=_positive, default=32, help="clips per batch")
    io.add_argument("--threads", type=_positive, help="reader threads for the parallel run (default: cores, at most 4)")
    io.add_argument("--seconds", type=float, default=10.0, help="time limit per method")
    io.add_argument("--csv", help="append one row per method to this CSV file")

    scaling = _command(benches, "scaling", "throughput and efficiency at several rank counts", _bench_scaling)
    scaling.add_argument("file", help="the HDF5 file to train on")
    scaling.add_argument("--ranks", default="1,2", help="comma-separated rank counts (1 is always run, as the base)")
    scaling.add_argument("--batch-size", type=_positive, default=8, help="per-rank batch for weak scaling")
    scaling.add_argument("--global-batch", type=_positive, help="global batch for strong scaling (default: batch x max ranks)")
    scaling.add_argument("--steps", type=_positive, default=30, help="timed steps per run")
    scaling.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    scaling.add_argument("--width", type=_positive, help="model width (default 16 for video, 64 for r2plus1d_18)")
    scaling.add_argument("--depth", type=_positive, default=3, help="reference model depth")
    scaling.add_argument("--model", choices=MODELS, default="video",
                         help="video: the reference (2+1)D model (--width, --depth); r2plus1d_18: R(2+1)D-18")
    scaling.add_argument("--precision", choices=PRECISIONS, default="float32", help="train's --precision")
    scaling.add_argument("--launcher", choices=scaling_bench.LAUNCHERS, default="horovodrun",
                         help="srun inside a SLURM allocation (slurm/scaling.sbatch)")
    scaling.add_argument("--controller", choices=scaling_bench.CONTROLLERS, default="gloo",
                         help="Horovod controller for horovodrun")
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
    model.add_argument("--ranks-per-node", type=_positive, default=8, help="ranks (accelerators) per node")
    model.add_argument("--commit-every", type=_positive, default=8,
                       help="projection: train --elastic's steps between commits, for what a lost rank costs")

    au = _command(benches, "au", "accelerator utilisation (MLPerf Storage's AU) of each loader at several rank counts",
                  _bench_au)
    au.add_argument("files", nargs="*", metavar="FILE", help="HDF5 files (none with --from-csv)")
    au.add_argument("--ranks", default="1,2,4,8", help="comma-separated rank counts, one emulated accelerator each")
    au.add_argument("--compute-ms", type=float, default=30.0, help="emulated accelerator step time, ms (default 30)")
    au.add_argument("--batch-size", type=_positive, default=16, help="clips per rank per step (default 16)")
    au.add_argument("--cold", action="store_true", help="drop the file from the page cache before every run")
    au.add_argument("--gradient-mb", type=float, default=0.0, help="MB allreduced per step with Horovod Gloo (default 0)")
    au.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run, at most one epoch (default 5)")
    au.add_argument("--loaders", help=f"comma-separated loaders from {','.join(au_bench.LOADERS)} (default: those "
                                      "that can run here)")
    au.add_argument("--threads", type=_positive, help="distributed_h5 reader threads (default: train_model's)")
    au.add_argument("--feeder-workers", type=_positive, default=1, help="distributed_h5 Feeder threads (default 1)")
    au.add_argument("--feeder-prefetch", type=_non_negative_int, default=1,
                    help="distributed_h5: batches buffered in tf.data (train --prefetch; default 1)")
    au.add_argument("--torch-workers", type=int, default=1, help="torch-dataloader num_workers (default 1)")
    au.add_argument("--csv", help="write one row per loader and rank count here")
    au.add_argument("--plot", help="write a PNG of AU against rank count here")
    au.add_argument("--from-csv", nargs="+", help="print, and plot, the rows of earlier --csv files instead of measuring")


def _bench_io(args) -> int:
    from ..bench.io import bench_io, report

    for path in args.files:
        results = bench_io(path, batch_size=args.batch_size, threads=args.threads, seconds=args.seconds)
        print(report(path, results, args.csv), flush=True)
    return 0


def _bench_scaling(args) -> int:
    if args.from_csv:  # project from an earlier measurement instead of measuring again
        if not os.path.isfile(args.from_csv):
            raise ValueError(f"--from-csv: no such file: {args.from_csv}")
        rows = scaling_bench.read_csv(args.from_csv)
    else:
        ranks = _rank_counts(args.ranks)
        rows = scaling_bench.bench_scaling(args.file, ranks, batch_size=args.batch_size, global_batch=args.global_batch,
                                     steps=args.steps, warmup=args.warmup, depth=args.depth,
                                     width=args.width or (64 if args.model == "r2plus1d_18" else 16),
                                     launcher=args.launcher, controller=args.controller, model=args.model,
                                     precision=args.precision, augment_args=_augment_args(args))
    print(scaling_bench.table(rows), flush=True)
    if args.csv:
        scaling_bench.write_csv(rows, args.csv)
    if args.plot:
        scaling_bench.plot(rows, args.plot)
    if args.project:
        from ..bench import projection

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


def _augment_args(args) -> tuple:
    """``bench scaling``'s augmentation flags for its workers, checked against the file here (one line if bad)."""
    from ..data.augment import Augment
    from ..data.dataset import describe

    Augment(clip_frames=args.clip_frames, crop=args.crop, flip=args.flip).output_shape(describe(args.file).clip_shape)
    return ((("--clip-frames", args.clip_frames) if args.clip_frames else ()) + (("--crop", *args.crop) if args.crop else ())
            + (("--flip",) if args.flip else ()))


def _bench_au(args) -> int:
    if args.from_csv:
        rows = [row for path in args.from_csv for row in au_bench.read_csv(path)]
    else:
        if not args.files:
            raise ValueError("bench au needs at least one FILE (or --from-csv)")
        ranks = _rank_counts(args.ranks)
        loaders = [name.strip() for name in (args.loaders or ",".join(au_bench.LOADERS)).split(",") if name.strip()]
        au_bench.check_loaders(loaders)
        unavailable = au_bench.missing(loaders)
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
        from ..data.dataset import describe

        for path in args.files:
            describe(path)  # a bad file is one line here, not a traceback in every rank
        print(au_bench.HEADER, flush=True)
        rows = au_bench.bench_au(args.files, ranks, loaders=loaders, compute_ms=args.compute_ms, batch_size=args.batch_size,
                           cold=args.cold, gradient_mb=args.gradient_mb, seconds=args.seconds, threads=args.threads,
                           feeder_workers=args.feeder_workers, feeder_prefetch=args.feeder_prefetch,
                           torch_workers=args.torch_workers,
                           log=lambda text: print(text, flush=True))
    if args.from_csv:
        print(au_bench.table(rows))
    print(au_bench.verdict(rows), flush=True)
    if args.csv:
        au_bench.write_csv(rows, args.csv)
    if args.plot:
        au_bench.plot(rows, args.plot)
    return 0
