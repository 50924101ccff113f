"""``train``: train a video classifier, one process or under a launcher. Parser and handler.

Keras (and the engine) are imported when the command runs, after :func:`main` has set the
backend that fits ``--engine``.
"""

from __future__ import annotations

import os
import signal

from ..checkpoints import CHECKED_FIELDS, MODELS, OPTIMIZERS, PRECISIONS
from ..data.sharding import REMAINDER_POLICIES, SPLITS
from . import (_add_engine_argument, _add_tf_threads_argument, _command, _finite_non_negative, _finite_positive,
               _non_negative_int, _positive, _quiet_other_ranks, _rank, _seed, _start_engine, _unit)

STOP_SIGNALS = ("USR1", "USR2", "TERM")


def add_commands(commands) -> None:
    train = _command(commands, "train", "train a video classifier (run under horovodrun, mpirun or srun)", _train)
    train.add_argument("file", help="the HDF5 file (distributed-h5 inspect checks it)")
    train.add_argument("--epochs", type=_positive, default=10, help="epochs to train (in all, counting resumed ones)")
    train.add_argument("--batch-size", type=_positive, default=32, help="clips per step on each rank")
    train.add_argument("--validation-ratio", type=float, default=0.3, help="share of the clips held out for validation")
    train.add_argument("--seed", type=_seed, default=0, help="seeds the split, the order, the weights and augmentation")
    train.add_argument("--model", default="video",
                       help="'video' (the compact (2+1)D model), 'r2plus1d_18', or a compiled .keras model file")
    train.add_argument("--width", type=_positive, help="reference models: filters of the first block "
                       "(default 16 for video, 64 for r2plus1d_18)")
    train.add_argument("--depth", type=_positive, default=3, help="video model: blocks")
    train.add_argument("--dropout", type=_unit, default=0.3, help="reference models: dropout rate")
    train.add_argument("--batchnorm", action="store_true", help="video model: BatchNormalization after each conv")
    train.add_argument("--sync-bn", action="store_true",
                       help="BatchNorm statistics over the global batch (all ranks) instead of each rank's")
    train.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="float32 (default; CPUs), mixed_bfloat16 (A100/H100) or mixed_float16 (V100, T4)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="for the reference models")
    train.add_argument("--learning-rate", type=_finite_positive, default=1e-3,
                       help="the rate for one rank's batch, before scaling to the global batch")
    train.add_argument("--no-scale-lr", action="store_true", help="do not scale the rate to the global batch")
    train.add_argument("--warmup-epochs", type=_finite_non_negative, default=3,
                       help="epochs over which the rate rises to its scaled value")
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
    train.add_argument("--remainder", choices=REMAINDER_POLICIES, default="pad",
                       help="the last partial global batch: padded by wrapping, or dropped")
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
    train.add_argument("--prefetch", type=_non_negative_int, default=1,
                       help="batches buffered in tf.data (default 1: each batch's hand-off into TensorFlow overlaps "
                       "the previous step; 0: none); data_wait_fraction is timed where the step takes its batch")
    train.add_argument("--allow-unwritten", action="store_true",
                       help="train on a file whose X or Y was never written in places (read as the fill value)")
    _add_tf_threads_argument(train, "TensorFlow threads per rank, horovod engine (default: $DH5_TF_THREADS, else "
                                    "TensorFlow's)")
    train.add_argument("--stop-signal", choices=STOP_SIGNALS,
                       help="on this signal all ranks stop at one step, rank 0 checkpoints, exit status 75")
    train.add_argument("--check-every", type=_positive, default=8,
                       help="steps between the ranks' agreement on stopping (signal, non-finite loss)")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                       help="Keras' progress output: 0 none, 1 a bar, 2 a line per epoch")


def _train(args) -> int:
    _quiet_other_ranks()
    _start_engine(args)
    import keras

    from ..data.augment import Augment
    from ..data.dataset import describe
    from ..models import build_model, load_keras_model
    from ..training import train_model

    info = describe(args.file, labels=True, clips=True, allow_unwritten=args.allow_unwritten)  # bad labels or unreadable clips: one line, before any model
    augment = Augment(clip_frames=args.clip_frames, frame_stride=args.frame_stride, crop=args.crop, flip=args.flip,
                      scale=args.scale)
    clip_shape = augment.output_shape(info.clip_shape)  # what the model sees; one line if it does not fit
    # The dtype policy must be set before the model is built: layers take it at construction.
    keras.config.set_dtype_policy(args.precision)
    if args.model in MODELS:
        model = build_model(args.model, clip_shape, info.classes, width=args.width, depth=args.depth,
                            dropout=args.dropout, batchnorm=args.batchnorm, dtype=info.dtype, seed=args.seed,
                            optimizer=args.optimizer, learning_rate=args.learning_rate)
    else:
        if not os.path.isfile(args.model):
            raise ValueError(f"--model must be 'video', 'r2plus1d_18' or a .keras model file. "
                             f"Received: {args.model!r}")
        model = load_keras_model(args.model, option="--model", compiled=True)
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
