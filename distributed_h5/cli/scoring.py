"""``evaluate`` and ``predict``: a checkpoint scored on the validation subset. Parsers and handlers.

Keras (and the engine) are imported when a command runs, after :func:`main` has set the
backend that fits ``--engine``.
"""

from __future__ import annotations

from ..data.sharding import SPLITS
from . import (_add_engine_argument, _add_tf_threads_argument, _command, _positive, _quiet_other_ranks, _rank, _seed,
               _start_engine, _unit)


def add_commands(commands) -> None:
    evaluate = _command(commands, "evaluate", "a checkpoint's loss and accuracy on the validation subset "
                        "(as training took it; run under horovodrun for several ranks)", _evaluate)
    predict = _command(commands, "predict", "every clip's predicted class into a CSV, and a confusion-matrix "
                       "PNG beside it", _predict)
    for sub in (evaluate, predict):
        sub.add_argument("file", help="the HDF5 file the checkpoint was trained on (or one of the same layout)")
        sub.add_argument("--checkpoint", required=True, help="a .keras checkpoint written by train")
        sub.add_argument("--views", type=_positive, nargs=2, default=(1, 1), metavar=("T", "S"),
                         help="T temporal windows x S spatial crops per clip, scores averaged (default 1 1: the "
                              "centre view training validated on)")
        sub.add_argument("--batch-size", type=_positive, help="clips per batch on each rank (default: the checkpoint's)")
        sub.add_argument("--threads", type=_positive, help="reader threads per rank")
        _add_tf_threads_argument(sub, "TensorFlow threads per rank (default: $DH5_TF_THREADS, else TensorFlow's)")
        _add_engine_argument(sub)
    for sub in (evaluate, predict):  # the split training took: predict reports its two sides apart
        sub.add_argument("--seed", type=_seed, help="split seed (default: the checkpoint's)")
        sub.add_argument("--validation-ratio", type=_unit, help="(default: the checkpoint's)")
        sub.add_argument("--split", choices=SPLITS, help="(default: the checkpoint's)")
    predict.add_argument("--out", required=True, help="the CSV to write; the PNG goes beside it as OUT-confusion.png")


def _evaluate(args) -> int:
    _quiet_other_ranks()
    _start_engine(args)
    from ..evaluation import evaluate_model

    result = evaluate_model(args.checkpoint, args.file, batch_size=args.batch_size, validation_ratio=args.validation_ratio,
                            seed=args.seed, split=args.split, views=tuple(args.views), threads=args.threads)
    if _rank() == 0:  # one line for the job; every rank holds the same result
        print(result.line(), flush=True)
    return 0


def _predict(args) -> int:
    _quiet_other_ranks()
    from ..data.outputs import check_output

    out = check_output(args.out)  # on every rank, before any work
    _start_engine(args)
    from ..evaluation import predict_model, write_predictions

    predictions = predict_model(args.checkpoint, args.file, batch_size=args.batch_size, views=tuple(args.views),
                                threads=args.threads, seed=args.seed, validation_ratio=args.validation_ratio,
                                split=args.split)
    if _rank() == 0:  # rank 0 alone writes
        csv_path, png = write_predictions(predictions, out)
        print(f"{predictions.line()} views={args.views[0]}x{args.views[1]} csv={csv_path} confusion={png}", flush=True)
    return 0
