"""One rank of a parallel test: train with train_model, then save what the test compares.

Run by the parallel tests under `horovodrun -np N` (Gloo or MPI), or with KERAS_BACKEND=jax
under `mpirun -np N` (the JAX engine). Each rank
writes rank<R>.npz (final weights, moving statistics included), rank<R>.json (history, its
own facts, and the clip indices of every step it trained: clips carry their own index).
"""

import argparse
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    import tensorflow as tf

    # One TensorFlow thread per rank: two ranks share this 2-core machine.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from distributed_h5 import init_engine, train_model  # noqa: E402
from distributed_h5.callbacks import NonFiniteLoss, Preempted  # noqa: E402
from distributed_h5.feeding import Feeder  # noqa: E402
from distributed_h5.reader import BatchReader  # noqa: E402
from distributed_h5.synthetic import clip_index  # noqa: E402

TRAINED = []  # [epoch, clip indices] of each step, in order: what the step asked the Feeder for
EPOCH = [0]


class EpochOf(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        EPOCH[0] = epoch


def record_trained_clips(path, info):
    """Observe the Feeder where each step takes its batch: on TensorFlow, a map after
    ``Feeder.dataset()``'s buffer (what it yields is what the steps take; its generator reads
    one batch ahead); iterated directly (JAX, or no buffer), each batch it yields. JPEG blurs
    the index pixels, so a JPEG file's clips are named by their decoded bytes (every clip of
    the file decoded once here)."""
    iterate, dataset = Feeder.__iter__, Feeder.dataset
    indices = clip_index
    if info.codec == "jpeg":
        with BatchReader(path) as reader:
            decoded = reader.read(np.arange(info.sample_count))[0]
        place = {clip.tobytes(): i for i, clip in enumerate(decoded)}
        assert len(place) == len(decoded), "two clips of the JPEG file decode alike"

        def indices(clips):
            return np.array([place[clip.tobytes()] for clip in clips])

    def recorded(self):
        for x, y in iterate(self):
            TRAINED.append([EPOCH[0], indices(x).tolist()])
            yield x, y

    def recorded_dataset(self):
        import tensorflow as tf

        batches = dataset(self)
        if not self.prefetch:  # the generator is __iter__, recorded above
            return batches

        def record(x):
            TRAINED.append([EPOCH[0], indices(x).tolist()])
            return np.int64(0)

        def taken(x, y):
            with tf.control_dependencies([tf.numpy_function(record, [x], tf.int64, stateful=True)]):
                return tf.identity(x), tf.identity(y)

        return batches.map(taken)

    Feeder.__iter__, Feeder.dataset = recorded, recorded_dataset


class SignalAt(keras.callbacks.Callback):
    """Send this process ``signum`` at (epoch, batch), as SLURM's --signal would."""

    def __init__(self, signum, epoch, batch):
        super().__init__()
        self.signum, self.at = signum, (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), self.signum)


class KillAt(SignalAt):
    """Die abruptly at (epoch, batch), as a crashed node would; with ``once``, a file, only if
    no process of the job died that way before (a rank that joins later runs this again)."""

    def __init__(self, epoch, batch, once=None):
        super().__init__(signal.SIGKILL, epoch, batch)
        self.once = once

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at and self.once is not None:
            if os.path.exists(self.once):
                return
            Path(self.once).write_text("")
        super().on_train_batch_begin(batch, logs)


class SlowWhileAlone(keras.callbacks.Callback):
    """Elastic: sleep before each step while the job has one rank, so that a rank rejoining
    has time to start before the run ends."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_begin(self, batch, logs=None):
        import horovod.tensorflow as hvd

        if hvd.size() == 1:
            time.sleep(self.seconds)


def build(args, info, init_seed):
    from distributed_h5 import layers
    from distributed_h5.models import r2plus1d_18, video_classifier

    info = dataclasses.replace(info, clip_shape=augmentation(args).output_shape(info.clip_shape))  # what the model sees
    keras.config.set_dtype_policy(args.precision)
    if args.model == "r2plus1d_18":
        return r2plus1d_18(info.clip_shape, info.classes, width=args.width, dtype=info.dtype, seed=init_seed)
    model = video_classifier(info.clip_shape, info.classes, width=args.width, depth=2, dropout=args.dropout,
                             seed=init_seed,
                             batchnorm=args.model in ("bn", "syncbn"), dtype=info.dtype)
    if args.model == "syncbn":  # the layer class itself, as a user who builds with it would
        plain = model
        model = keras.models.clone_model(plain, clone_function=lambda layer: layers.SyncBatchNormalization.from_config(
            layer.get_config()) if isinstance(layer, keras.layers.BatchNormalization) else layer.__class__.from_config(
            layer.get_config()))
        model.set_weights(plain.get_weights())
    return model


def augmentation(args):
    from distributed_h5.augment import Augment

    return Augment(clip_frames=args.clip_frames, frame_stride=args.frame_stride, crop=args.crop, flip=args.flip)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--validation-ratio", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-seed", default="0", help="an integer, or 'rank' for a different init per rank")
    parser.add_argument("--model", choices=("plain", "bn", "syncbn", "r2plus1d_18"), default="plain")
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--scale-lr", action="store_true")
    parser.add_argument("--warmup-epochs", type=float, default=1)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--allow-config-change", action="append", default=[])
    parser.add_argument("--check-every", type=int, default=1)
    parser.add_argument("--clip-frames", type=int)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--crop", type=int, nargs=2)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--kill", nargs=3, type=int, metavar=("RANK", "EPOCH", "BATCH"))
    parser.add_argument("--kill-once", help="with --kill: kill only once in the job (a marker file)")
    parser.add_argument("--elastic", action="store_true")
    parser.add_argument("--commit-every", type=int, default=8)
    parser.add_argument("--slow-while-alone", type=float, help="elastic: seconds of sleep per step on one rank")
    parser.add_argument("--usr1", nargs=3, type=int, action="append", default=[], metavar=("RANK", "EPOCH", "BATCH"),
                        help="send SIGUSR1 to RANK at (EPOCH, BATCH) and stop on it")
    args = parser.parse_args()

    collective = init_engine()  # before the model: JAX joins the other processes before it computes
    rank = collective.rank
    init_seed = rank if args.init_seed == "rank" else int(args.init_seed)
    keras.utils.set_random_seed(init_seed)
    from distributed_h5.dataset import describe

    info = describe(args.file)
    model = build(args, info, init_seed)
    optimizer = (keras.optimizers.SGD(args.learning_rate) if args.optimizer == "sgd"
                 else keras.optimizers.Adam(args.learning_rate))
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    callbacks = [EpochOf()] + ([KillAt(*args.kill[1:], once=args.kill_once)] if args.kill and args.kill[0] == rank
                               else [])
    callbacks += [SignalAt(signal.SIGUSR1, epoch, batch) for who, epoch, batch in args.usr1 if who == rank]
    callbacks += [SlowWhileAlone(args.slow_while_alone)] if args.slow_while_alone else []
    record_trained_clips(args.file, info)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {"size": collective.size, "engine": collective.name}
    try:
        history = train_model(
            model, args.file, batch_size=args.batch_size, epochs=args.epochs, validation_ratio=args.validation_ratio,
            seed=args.seed, scale_learning_rate=args.scale_lr, warmup_epochs=args.warmup_epochs,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, verbose=0, callbacks=callbacks,
            stop_signal=signal.SIGUSR1 if args.usr1 else None, check_every=args.check_every,
            sync_batchnorm=args.sync_bn, precision=args.precision,
            allow_config_change=tuple(args.allow_config_change), augment=augmentation(args), elastic=args.elastic,
            commit_every=args.commit_every)
    except Preempted as stopped:
        (args.out / f"rank{rank}.stopped").write_text(json.dumps(
            {"at": [stopped.at.epoch, stopped.at.sample], "trained": TRAINED}))
        raise SystemExit(stopped.exit_status) from None
    except (NonFiniteLoss, ValueError) as error:
        (args.out / f"rank{rank}.error").write_text(f"{type(error).__name__}: {error}")
        raise SystemExit(3) from None
    if args.elastic:  # the rank this process has now
        import horovod.tensorflow as hvd

        rank = hvd.rank()
        facts["size"] = hvd.size()
    np.savez(args.out / f"rank{rank}.npz", *model.get_weights())
    optimizer = model.optimizer
    facts.update(epochs=history.epoch, history=history.history, trained=TRAINED,
                 summary=history.run.line(history) if hasattr(history, "run") else "",
                 loss_scale=float(optimizer.dynamic_scale.numpy()) if hasattr(optimizer, "dynamic_scale") else None,
                 iterations=int(optimizer.iterations.numpy()), policy=model.dtype_policy.name)
    (args.out / f"rank{rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main()
