"""``distributed-h5 bench scaling``: throughput and efficiency per rank count. Ranks import TF, Keras, Horovod.

The driver runs the same short training at each rank count, twice: with a fixed batch per
rank (weak scaling) and with a fixed global batch (strong scaling). Ranks are started with
``horovodrun`` on a workstation, or with ``srun --mpi=pmix`` inside a SLURM allocation.

Each rank (``python -m distributed_h5.bench.scaling --worker``) runs the real training
path: :func:`~distributed_h5.training.train_model` itself, one epoch capped at the warm-up
and timed steps (``steps_per_epoch``), no validation, its callbacks included. Its summary
(``history.run``) gives the timed steps' wall time and data wait, and every step splits into:

* **data wait**: the time the steps blocked on their batch, counted by the Feeder itself
  (``history.run.data_wait_seconds``, the count behind ``data_wait_fraction``);
* **allreduce**: the same grouped average of all gradients, timed alone after training
  (inside the step it cannot be timed apart);
* **compute**: the rest of the step: forward, backward and the optimizer update.

Efficiency at p ranks is ``throughput(p) / (p * throughput(1))`` in both modes (for strong
scaling that is the speed-up per rank of a fixed global batch).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ..checkpoints import MODELS, PRECISIONS

LAUNCHERS = ("horovodrun", "srun")  # srun inside a SLURM allocation (slurm/scaling.sbatch)
CONTROLLERS = ("gloo", "mpi")  # Horovod's, for horovodrun
FIELDS = ("mode", "ranks", "batch_per_rank", "global_batch", "steps", "global_samples_per_second",
          "per_rank_samples_per_second", "efficiency", "step_seconds", "data_wait_seconds", "compute_seconds",
          "allreduce_seconds", "data_wait_fraction", "allreduce_bytes_per_step", "read_bytes_per_step", "model",
          "precision")


@dataclass
class Row:
    mode: str
    ranks: int
    batch_per_rank: int
    global_batch: int
    steps: int
    global_samples_per_second: float
    per_rank_samples_per_second: float
    efficiency: float
    step_seconds: float
    data_wait_seconds: float
    compute_seconds: float
    allreduce_seconds: float
    data_wait_fraction: float
    allreduce_bytes_per_step: int
    read_bytes_per_step: int
    model: str = "video"
    precision: str = "float32"


# --- one rank ------------------------------------------------------------------------------
def worker(args) -> None:
    import numpy as np
    import tensorflow as tf

    threads = int(os.environ.get("DH5_TF_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    from ..data.augment import Augment
    from ..engines import horovod as engine
    from ..models import build_model
    from ..sequence import ShardedSequence
    from ..training import train_model

    collective = engine.init()
    augment = Augment(clip_frames=args.clip_frames, crop=args.crop, flip=args.flip)
    # The plan train_model will make: one epoch must hold the warm-up and the timed steps.
    sequence = ShardedSequence(args.file, batch_size=args.batch_size, rank=collective.rank, size=collective.size,
                               validation_ratio=0.0, seed=0, augment=augment)
    stored, clip_shape, available = sequence.info, sequence.clip_shape, len(sequence)
    sequence.close()
    if available < args.warmup + args.steps:
        raise ValueError(f"{args.file} gives {available} steps per epoch at {collective.size} rank(s) x "
                         f"{args.batch_size}; --warmup {args.warmup} + --steps {args.steps} do not fit: pass fewer "
                         "steps or a bigger file")
    keras.config.set_dtype_policy(args.precision)
    # train's model and compile (Keras wraps the optimizer for loss scaling under mixed_float16)
    model = build_model(args.model, clip_shape, stored.classes, width=args.width, depth=args.depth, dropout=0.0,
                        dtype=stored.dtype, seed=0, optimizer="sgd", learning_rate=0.01)
    # The real training path, its callbacks included; train_model times the steps after the warm-up.
    history = train_model(model, args.file, validation_ratio=0.0, batch_size=args.batch_size, epochs=1, seed=0,
                          scale_learning_rate=False, monitor=None, augment=augment, verbose=0, engine="horovod",
                          steps_per_epoch=args.warmup + args.steps, untimed_steps=args.warmup)
    run = history.run
    # The allreduce runs inside the compiled step; time the same grouped allreduce alone.
    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    average = tf.function(collective.average_gradients)
    average(grads)
    collective.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        average(grads)[0].numpy()
    reduce = (time.perf_counter() - start) / args.steps
    summed = collective.sum([np.array([run.data_wait_seconds, reduce])])[0]
    # The slowest rank sets the pace of a synchronous step.
    longest = collective.max(int(run.step_seconds * run.timed_steps * 1e6)) / 1e6
    if collective.rank == 0:
        gradient_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_variables)
        step = longest / run.timed_steps
        wait, reduce = summed[0] / collective.size, summed[1] / collective.size
        result = {
            "ranks": collective.size,
            "steps": run.timed_steps,
            "elapsed": longest,
            "wait": wait,
            "reduce": reduce,
            "compute": max(0.0, step - wait - reduce),
            "gradient_bytes": gradient_bytes,
            # The bytes a step reads: each window's whole frames (crops are cut after the read).
            "read_bytes": args.batch_size * stored.clip_bytes // stored.clip_shape[0] * augment.span(stored.clip_shape),
        }
        with open(args.out, "w") as handle:
            json.dump(result, handle)


# --- the driver ----------------------------------------------------------------------------
def horovodrun() -> str:
    """horovodrun on PATH, else the one beside this Python (a virtual environment not activated)."""
    return shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")


def launch_command(ranks: int, launcher: str, controller: str = "gloo") -> list[str]:
    if launcher == "srun":
        # Inside an allocation (slurm/scaling.sbatch): one task per rank, PMIx for Open MPI.
        return ["srun", "--mpi=pmix", "--kill-on-bad-exit=1", f"--ntasks={ranks}", "--exact"]
    # Gloo by default: Open MPI's progress engine busy-polls, and on CPU ranks that share
    # cores it takes cycles from compute (docs/BENCHMARKS.md has the measurement).
    return [horovodrun(), "-np", str(ranks), f"--{controller}"]


def run_point(file: str, ranks: int, batch_per_rank: int, *, steps: int, warmup: int, width: int, depth: int,
              launcher: str, controller: str = "gloo", model: str = "video", precision: str = "float32",
              augment_args: tuple = ()) -> dict:
    """Launch ``ranks`` workers and return rank 0's measurements."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "result.json")
        command = [*launch_command(ranks, launcher, controller), sys.executable, "-m", "distributed_h5.bench.scaling", "--worker",
                   file, "--batch-size", str(batch_per_rank), "--steps", str(steps), "--warmup", str(warmup),
                   "--width", str(width), "--depth", str(depth), "--model", model, "--precision", precision,
                   *map(str, augment_args), "--out", out]
        env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", TF_CPP_MIN_LOG_LEVEL="3")
        # One TensorFlow thread per rank unless told otherwise: every rank count then runs each
        # rank alike, so the efficiency measures scaling, not a change in threading.
        env.setdefault("DH5_TF_THREADS", "1")
        print("+ " + " ".join(command), file=sys.stderr, flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        with open(out) as handle:
            return json.load(handle)


def bench_scaling(file: str, ranks: list[int], *, batch_size: int = 8, global_batch: int | None = None,
                  steps: int = 30, warmup: int = 5, width: int = 16, depth: int = 3,
                  launcher: str = "horovodrun", controller: str = "gloo", model: str = "video",
                  precision: str = "float32", augment_args: tuple = ()) -> list[Row]:
    """Weak- and strong-scaling rows for each rank count (1 is always measured, as the base).
    ``augment_args``: the workers' ``--clip-frames T --crop H W --flip``, as ``train`` takes them."""
    from .io import warm

    if warmup < 1:  # the timed part starts after a warm-up step, when every rank has traced its step
        raise ValueError(f"--warmup must be >= 1. Received: {warmup}")
    warm(file)  # otherwise the first run alone pays for a cold page cache
    ranks = sorted(set(ranks) | {1})
    global_batch = global_batch or batch_size * max(ranks)
    rows, measured = [], {}
    for mode in ("weak", "strong"):
        base = None
        for count in ranks:
            if mode == "strong" and global_batch % count:
                raise ValueError(f"global_batch={global_batch} does not divide by {count} ranks; pick another --global-batch")
            per_rank = batch_size if mode == "weak" else global_batch // count
            if (count, per_rank) not in measured:  # the strong point at the most ranks is the weak one
                measured[count, per_rank] = run_point(
                    file, count, per_rank, steps=steps, warmup=warmup, width=width, depth=depth, launcher=launcher,
                    controller=controller, model=model, precision=precision, augment_args=augment_args)
            point = measured[count, per_rank]
            throughput = count * per_rank * point["steps"] / point["elapsed"]
            base = throughput if count == 1 else base
            step = point["elapsed"] / point["steps"]
            rows.append(Row(mode, count, per_rank, per_rank * count, point["steps"], throughput, throughput / count,
                            throughput / (count * base), step, point["wait"], point["compute"], point["reduce"],
                            point["wait"] / step, point["gradient_bytes"], point["read_bytes"], model, precision))
    return rows


def write_csv(rows: list[Row], path: str) -> None:
    from ..data.outputs import write_rows

    write_rows(path, FIELDS, rows)


def read_csv(path: str) -> list[Row]:
    """Rows written by :func:`write_csv`."""
    types = {name: type_ for name, type_ in Row.__annotations__.items()}
    convert = {"str": str, "int": int, "float": float}
    with open(path, newline="") as handle:
        # Files written before the model and precision columns read as the defaults.
        return [Row(**{k: convert[types[k]](v) for k, v in row.items() if k in types}) for row in csv.DictReader(handle)]


def table(rows: list[Row]) -> str:
    lines = [f"{'mode':<7}{'ranks':>6}{'batch/rank':>11}{'samples/s':>11}{'per rank':>10}{'eff.':>7}"
             f"{'step ms':>9}{'wait ms':>9}{'compute ms':>11}{'allred. ms':>11}{'wait %':>8}{'allred. MB':>11}"]
    for r in rows:
        lines.append(f"{r.mode:<7}{r.ranks:>6}{r.batch_per_rank:>11}{r.global_samples_per_second:>11.1f}"
                     f"{r.per_rank_samples_per_second:>10.1f}{r.efficiency:>7.2f}{r.step_seconds * 1e3:>9.1f}"
                     f"{r.data_wait_seconds * 1e3:>9.2f}{r.compute_seconds * 1e3:>11.1f}{r.allreduce_seconds * 1e3:>11.2f}"
                     f"{100 * r.data_wait_fraction:>8.2f}{r.allreduce_bytes_per_step / 1e6:>11.3f}")
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    from ..data.outputs import pyplot, save_figure

    plt = pyplot(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("weak", "o"), ("strong", "s")):
        chosen = [r for r in rows if r.mode == mode]
        left.plot([r.ranks for r in chosen], [r.global_samples_per_second for r in chosen], marker=marker, label=mode)
        right.plot([r.ranks for r in chosen], [r.efficiency for r in chosen], marker=marker, label=mode)
    ranks = sorted({r.ranks for r in rows})
    base = next(r.global_samples_per_second for r in rows if r.mode == "weak" and r.ranks == 1)
    left.plot(ranks, [base * p for p in ranks], "k--", linewidth=0.8, label="linear (weak)")
    left.set(xlabel="ranks", ylabel="samples / s (all ranks)", title="Throughput", xticks=ranks)
    right.set(xlabel="ranks", ylabel="efficiency", title="Scaling efficiency", xticks=ranks, ylim=(0, 1.1))
    right.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(fig, path, dpi=120)  # the format from the name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distributed_h5.bench.scaling")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("file")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--model", choices=MODELS, default="video")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--clip-frames", type=int)
    parser.add_argument("--crop", type=int, nargs=2)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    worker(args)


if __name__ == "__main__":
    main()
