"""One rank of a parallel test: train with train_model, then save what the test compares.

Run by tests/parallel/test_training.py under `horovodrun -np N` (Gloo or MPI). Each rank
writes rank<R>.npz (final weights) and rank<R>.json (history and its own facts).
"""

import argparse
import json
import os
import signal
from pathlib import Path

import tensorflow as tf

# One TensorFlow thread per rank: two ranks share this 2-core machine.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from distributed_h5 import train_model  # noqa: E402
from distributed_h5.training import Preempted  # noqa: E402
from distributed_h5.models import video_classifier  # noqa: E402


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


class KillAt(keras.callbacks.Callback):
    """Die abruptly at (epoch, batch), as a crashed node would."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--validation-ratio", type=float, default=0.3)
    parser.add_argument("--init-seed", default="0", help="an integer, or 'rank' for a different init per rank")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--scale-lr", action="store_true")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill", nargs=3, type=int, metavar=("RANK", "EPOCH", "BATCH"))
    parser.add_argument("--usr1", nargs=3, type=int, action="append", default=[], metavar=("RANK", "EPOCH", "BATCH"),
                        help="send SIGUSR1 to RANK at (EPOCH, BATCH) and stop on it")
    args = parser.parse_args()

    import horovod.tensorflow as hvd

    hvd.init()
    rank = hvd.rank()
    init_seed = rank if args.init_seed == "rank" else int(args.init_seed)
    keras.utils.set_random_seed(init_seed)
    from distributed_h5.dataset import describe

    info = describe(args.file)
    model = video_classifier(info.clip_shape, info.classes, width=4, depth=2, dropout=0.0, seed=init_seed)
    model.compile(optimizer=keras.optimizers.SGD(args.learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [KillAt(*args.kill[1:])] if args.kill and args.kill[0] == rank else []
    callbacks += [SignalAt(signal.SIGUSR1, epoch, batch) for who, epoch, batch in args.usr1 if who == rank]
    try:
        history = train_model(
            model, args.file, batch_size=args.batch_size, epochs=args.epochs, validation_ratio=args.validation_ratio,
            scale_learning_rate=args.scale_lr, warmup_epochs=1, checkpoint_dir=args.checkpoint_dir,
            resume=args.resume, verbose=0, callbacks=callbacks, stop_signal=signal.SIGUSR1 if args.usr1 else None,
        )
    except Preempted as stopped:
        (args.out / f"rank{rank}.stopped").parent.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{rank}.stopped").write_text(json.dumps(list(stopped.at)))
        raise SystemExit(stopped.exit_status) from None
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"rank{rank}.npz", *model.get_weights())
    (args.out / f"rank{rank}.json").write_text(json.dumps(
        {"size": hvd.size(), "epochs": history.epoch, "history": history.history}))


if __name__ == "__main__":
    main()
