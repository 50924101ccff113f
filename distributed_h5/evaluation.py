"""Evaluate a trained model or checkpoint on a file's validation subset, and predict every clip. Imports Keras.

:func:`evaluate_model` takes the validation subset as training did (the checkpoint's seed,
validation ratio, split and clip sampling, unless given), with ``T x S`` views per clip:
``T`` temporal windows spread evenly over the stored clip and ``S`` spatial crops spread
evenly along its longer side, the class scores (softmax outputs) averaged per clip. With one
view it is the centre view training validated on, so a checkpoint's ``val_*`` come back
exactly. Like training's validation it runs on one process or many: each rank evaluates its
unpadded validation shard and the metric states (sums and counts) are summed across ranks
(:func:`replicas.sum_metric_states`), so every rank gets one process's result.

:func:`predict_model` gives every clip's predicted class and its probability the same way
(each rank a contiguous share, combined by a sum of zero-padded arrays, exact) and rank 0
writes a CSV and a confusion-matrix PNG.

Views are read on the reader side with :class:`distributed_h5.augment.Augment` (window, scale,
crop); :func:`clip_views` is the one place that places them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from . import checkpoints, replicas
from .engines import collective as collectives
from .data import sharding
from .data.augment import Augment, Views
from .data.checks import positive_pair
from .data.dataset import DatasetError, describe, open_file
from .data.outputs import atomic_write, printable, pyplot, save_figure
from .data.reader import BatchReader
from .engines.launcher import world
from .models import load_keras_model
from .sequence import file_plan

TOP_K = 5  # top-5 accuracy is reported when there are more classes than this


@dataclass
class Evaluation:
    """What :func:`evaluate_model` measured, and on what."""

    metrics: dict[str, float]  # val_loss, val_accuracy and, with more than 5 classes, val_top5_accuracy
    samples: int  # clips in the validation subset (all ranks)
    views: tuple[int, int]
    settings: dict = field(default_factory=dict)  # seed, validation_ratio, split, batch_size, ranks

    def line(self) -> str:
        """The CLI's line: ``key=value`` pairs, the metrics at full precision (as training.csv has them)."""
        parts = [f"{key}={value!r}" for key, value in self.metrics.items()]
        parts.append(f"samples={self.samples}")
        parts.append(f"views={self.views[0]}x{self.views[1]}")
        parts += [f"{key}={value}" for key, value in self.settings.items()]
        return " ".join(parts)


# --- views ---------------------------------------------------------------------------------
def _check_views(views) -> tuple[int, int]:
    return positive_pair("views", views, meaning="temporal, spatial")


def _positions(free: int, count: int, what: str) -> list[int]:
    """``count`` offsets spread evenly over ``free`` possible ones; one is the centre (as validation's)."""
    if count == 1:
        return [(free - 1) // 2]
    if free == 1:
        option, unit = ("T", "windows shorter than the stored clips") if what == "temporal" else \
            ("S", "crops smaller than the frames")
        raise ValueError(f"views {option}={count} needs {unit}, but the model takes the whole of them (train with "
                         f"{'--clip-frames' if option == 'T' else '--crop'} to make them smaller); use {option}=1")
    return np.linspace(0, free - 1, count).round().astype(np.int64).tolist()


def clip_views(reader: BatchReader, indices: np.ndarray, augment: Augment | None = None,
               views: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Clips ``indices`` as ``T x S`` views each, and their one-hot labels: ``(x, y)``, x of shape
    ``(n, T * S, *view_shape)``, temporal-major.

    View ``(t, s)`` is the window starting at the ``t``-th of ``T`` starts spread evenly over the
    stored frames and the ``s``-th of ``S`` crops spread evenly along the longer side of the
    (scaled) frame, centred on the other; a count of 1 is the centre, so ``(1, 1)`` is exactly
    the view validation uses (:meth:`Augment.views` with ``training=False``). No flips.
    """
    temporal, spatial = _check_views(views)
    augment = augment or Augment()
    indices = np.asarray(indices, dtype=np.int64)
    info = reader.info
    if (temporal, spatial) == (1, 1):  # validation's own read, so the values are the same bytes
        if augment.identity:
            x, y = reader.read(indices)
        else:
            x, y = augment.read(reader, indices, seed=0, epoch=0, training=False)
        return x[:, None], y
    n = indices.size
    shape = augment.output_shape(info.clip_shape)
    centre = augment.views(indices, info.clip_shape, seed=0, epoch=0, training=False)
    starts = _positions(info.clip_shape[0] - augment.span(info.clip_shape) + 1, temporal, "temporal")
    rows, cols = (int(centre.rows[0]), int(centre.cols[0])) if n else info.clip_shape[2:]
    crop = augment.crop or (rows, cols)
    free_rows, free_cols = rows - crop[0] + 1, cols - crop[1] + 1
    if cols >= rows:  # crops along the longer side (left, centre, right for 3, as SlowFast tests)
        lefts, tops = _positions(free_cols, spatial, "spatial"), [(free_rows - 1) // 2] * spatial
    else:
        tops, lefts = _positions(free_rows, spatial, "spatial"), [(free_cols - 1) // 2] * spatial
    x = np.empty((n, temporal * spatial, *shape), dtype=info.dtype)
    frames = augment.frames(info.clip_shape)
    y = None
    for t, start in enumerate(starts):
        windows, y = reader.read_windows(indices, np.full(n, start), frames, augment.frame_stride)
        for s, (top, left) in enumerate(zip(tops, lefts)):
            placed = Views(np.full(n, start), centre.rows, centre.cols, np.full(n, top), np.full(n, left),
                           np.zeros(n, dtype=bool))
            x[:, t * spatial + s] = augment.apply(windows, placed)
    return x, y


class ViewAverage(keras.Model):
    """``model`` applied to each view of a clip, its outputs (class scores) averaged over the views.

    Takes ``(batch, views, *clip_shape)``; with one view it is ``model`` on that view, unchanged.
    """

    def __init__(self, model: keras.Model, views: int, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.views = model, int(views)

    def call(self, x, training=False):
        if self.views == 1:
            return self.inner(x[:, 0], training=False)
        scores = [self.inner(x[:, v], training=False) for v in range(self.views)]
        return keras.ops.mean(keras.ops.stack(scores, axis=1), axis=1)


class _ViewBatches(keras.utils.PyDataset):
    """The batches of ``indices`` as views, for ``Model.evaluate``."""

    def __init__(self, reader, batches, augment, views):
        super().__init__()
        self.reader, self.batches, self.augment, self.views = reader, batches, augment, views

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return clip_views(self.reader, self.batches[i], self.augment, self.views)


# --- what to evaluate ----------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> tuple[keras.Model, checkpoints.RunConfig | None]:
    """The model of a ``.keras`` checkpoint and the run configuration it records (None for a plain file).

    Raises ValueError (one line) for a file that is missing or not a loadable ``.keras`` model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--checkpoint {path}: no such file")
    config = _record_config(path, checkpoints.read_record(path))  # a bad record is one line before the model loads
    return load_keras_model(path, option="--checkpoint"), config


def _record_config(path: str, record: dict) -> checkpoints.RunConfig | None:
    """The record's run configuration, or a one-line ValueError naming what is missing or wrong."""
    config = record.get("config")
    if config and not isinstance(config, dict):
        raise ValueError(f"--checkpoint {path}: its record ({checkpoints.RECORD}) has a 'config' of type "
                         f"{type(config).__name__}, expected an object of the run's settings")
    if config:
        required = [f.name for f in dataclasses.fields(checkpoints.RunConfig)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in config]
        if missing:
            raise ValueError(f"--checkpoint {path}: its record ({checkpoints.RECORD}) lacks {', '.join(missing)} in "
                             "'config'; expected a checkpoint written by distributed-h5 train")
    try:
        return checkpoints.record_config(record)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--checkpoint {path}: its record ({checkpoints.RECORD}) cannot be read: "
                         f"{' '.join(str(exc).split())}") from exc


def _augment_of(config: checkpoints.RunConfig | None) -> Augment | None:
    """The clip sampling a run validated with (its flip applies to training only)."""
    if config is None:
        return None
    return Augment(clip_frames=config.clip_frames, frame_stride=config.frame_stride, crop=config.crop,
                   scale=config.scale)


def _engine():
    """One process: no engine at all. Under a launcher: the training engine, for the sums."""
    if world()[1] == 1:
        return collectives.Single()
    from .engines import init_engine

    return init_engine()


def _resolve(model_or_checkpoint, *, seed, validation_ratio, split, batch_size, augment):
    """The model, and each setting given or else the checkpoint's (else ``train_model``'s defaults)."""
    if isinstance(model_or_checkpoint, keras.Model):
        model, config = model_or_checkpoint, None
    else:
        model, config = load_checkpoint(model_or_checkpoint)
    settings = dict(
        seed=seed if seed is not None else (config.seed if config else 0),
        validation_ratio=validation_ratio if validation_ratio is not None else (config.validation_ratio if config else 0.3),
        split=split if split is not None else (config.split if config else None),
        batch_size=batch_size if batch_size is not None else (config.batch_size if config else 32),
    )
    if augment is None:
        augment = _augment_of(config)
    return model, settings, augment


def _scorer(model: keras.Model, views: tuple[int, int], classes: int) -> ViewAverage:
    """``model`` averaged over views, compiled with its own loss and accuracy (and top-5 with more than 5 classes)."""
    scorer = ViewAverage(model, views[0] * views[1])
    metrics = ["accuracy"]
    if classes > TOP_K:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=TOP_K, name=f"top{TOP_K}_accuracy"))
    loss = getattr(model, "loss", None) or "categorical_crossentropy"
    # jit_compile off, as in training's validation (Horovod's engine turns XLA off), so the numbers match.
    scorer.compile(loss=loss, metrics=metrics, jit_compile=False)
    return scorer


def _check_classes(model: keras.Model, classes: int, path) -> None:
    """Refuse (ValueError, one line) a model whose output is not one score per class of ``path``'s ``Y``."""
    shape = getattr(model, "output_shape", None)
    outputs = shape[-1] if isinstance(shape, tuple) and shape else None
    if outputs is not None and outputs != classes:
        raise ValueError(f"the model predicts {outputs} classes but {path} has {classes} (the columns of 'Y'); "
                         "score it on a file with the classes it was trained on")


def _plan(path, info, settings: dict, rank: int = 0, size: int = 1) -> sharding.ShardPlan:
    """The train/validation split ``settings`` say (seed, validation_ratio, split), as training took it;
    ``settings["split"]`` becomes the split used (None picks ``"groups"`` when the file has them)."""
    plan = file_plan(path, info.sample_count, split=settings["split"], validation_ratio=settings["validation_ratio"],
                     seed=settings["seed"], batch_size=settings["batch_size"], rank=rank, size=size)
    settings["split"] = plan.split
    return plan


def _check_input(model: keras.Model, view_shape: tuple, where: str) -> None:
    expected = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if expected and len(expected) == len(view_shape) and any(e is not None and e != v
                                                             for e, v in zip(expected, view_shape)):
        raise ValueError(f"the model takes clips of shape {expected} but {where} gives {tuple(view_shape)} "
                         "(frames, channels, rows, cols); evaluate with the file and clip sampling it was trained on")


def evaluate_model(model_or_checkpoint, path: str | os.PathLike, *, batch_size: int | None = None,
                   validation_ratio: float | None = None, seed: int | None = None, split: str | None = None,
                   views: tuple[int, int] = (1, 1), augment: Augment | None = None, threads: int | None = None,
                   allow_unwritten: bool = False) -> Evaluation:
    """The loss and accuracy of a model on the validation subset of ``path``, on every rank.

    Run it in every process of a job (``horovodrun``; or ``mpirun`` with ``KERAS_BACKEND=jax``,
    after :func:`distributed_h5.init_engine`, before the model loads), or in one process. Each rank evaluates
    its unpadded share and the metric states are summed, so the result is one process's, on
    every rank. With ``views=(1, 1)`` and a checkpoint's own settings it reproduces the run's
    ``val_*`` at that checkpoint exactly.

    Args:
        model_or_checkpoint: a Keras model, or the path of a ``.keras`` checkpoint ``train`` wrote.
        path: the HDF5 file.
        batch_size: clips per batch on each rank (default: the checkpoint's, else 32).
        validation_ratio, seed, split: which samples are validation (default: the checkpoint's,
            else ``train_model``'s defaults: 0.3, 0, and ``"groups"`` when the file has them).
        views: ``(T, S)`` temporal windows x spatial crops per clip, scores averaged (default ``(1, 1)``).
        augment: the clip sampling to take views with (default: the checkpoint's; none for a model).
        threads, allow_unwritten: as for :class:`~distributed_h5.reader.BatchReader`.

    Example:
        >>> result = evaluate_model("runs/ckpt/epoch-0010.keras", "data.h5", views=(3, 3))  # doctest: +SKIP
        >>> result.metrics["val_accuracy"]
    """
    views = _check_views(views)
    info = describe(path, allow_unwritten=allow_unwritten)  # a bad file is one line before the model loads
    model, settings, augment = _resolve(model_or_checkpoint, seed=seed, validation_ratio=validation_ratio,
                                        split=split, batch_size=batch_size, augment=augment)
    _check_classes(model, info.classes, path)
    collective = _engine()
    plan = _plan(path, info, settings, collective.rank, collective.size)
    samples = int(plan.subsets.validation.size)
    if samples == 0:
        raise ValueError(f"the validation subset of {path} is empty (validation_ratio={settings['validation_ratio']}, "
                         f"split={settings['split']!r}); pass another validation ratio or split")
    view_shape = (augment or Augment()).output_shape(info.clip_shape)
    _check_input(model, view_shape, f"{path} with {augment or 'no clip sampling'}")
    scorer = _scorer(model, views, info.classes)
    with BatchReader(path, threads=threads, allow_unwritten=allow_unwritten) as reader:
        # Each rank its unpadded validation shard; the metric states are then summed, as in training.
        scorer.evaluate(_ViewBatches(reader, plan.validation_batches(), augment, views), verbose=0)
    replicas.sum_metric_states(scorer, collective)
    results = {name: float(value) for name, value in scorer.get_metrics_result().items()}
    order = ["accuracy", "loss", f"top{TOP_K}_accuracy"]
    metrics = {f"val_{name}": results[name] for name in order if name in results}
    settings["ranks"] = collective.size
    return Evaluation(metrics, samples, views, settings)


# --- prediction ----------------------------------------------------------------------------
@dataclass
class Predictions:
    """Every clip's predicted class and its probability, on every rank, and what is known about the clips."""

    predicted: np.ndarray  # (samples,) class indices: the highest view-averaged score
    probability: np.ndarray  # (samples,) float32: that score
    labels: np.ndarray  # (samples,) true class indices
    class_names: list[str]
    source_paths: list[str] | None
    subset: np.ndarray | None = None  # (samples,) 1 validation, 0 train, as training split the file
    settings: dict = field(default_factory=dict)  # seed, validation_ratio, split, batch_size, ranks

    def accuracy(self, side: str) -> tuple[float, int]:
        """``(accuracy, clips)`` on the ``"validation"`` or ``"train"`` side (nan when it has no clips)."""
        chosen = self.subset == (1 if side == "validation" else 0)
        count = int(chosen.sum())
        return (float((self.predicted[chosen] == self.labels[chosen]).mean()) if count else float("nan")), count

    def line(self) -> str:
        """The CLI's line: validation and training accuracy apart (training clips were learnt, not measured)."""
        parts = [f"predictions={len(self.labels)}"]
        for side in ("validation", "train"):
            accuracy, count = self.accuracy(side)
            parts += [f"{side}_accuracy={accuracy!r}", f"{side}_samples={count}"]
        return " ".join(parts + [f"{key}={value}" for key, value in self.settings.items()])

    def confusion(self) -> np.ndarray:
        """Counts, rows the true class and columns the predicted one."""
        classes = len(self.class_names)
        return np.bincount(self.labels * classes + self.predicted, minlength=classes * classes).reshape(classes, classes)


def _class_names(file, classes: int) -> list[str]:
    """The file's ``class_names`` (one per column of Y), else the class numbers; a DatasetError (one line)
    when the attribute holds another number of names."""
    try:
        names = file.attrs.get("class_names")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file.filename}: attribute 'class_names' cannot be read: {exc}") from exc
    if names is None:
        return [str(k) for k in range(classes)]
    names = np.asarray(names, dtype=object).reshape(-1)
    if names.size != classes:
        raise DatasetError(f"{file.filename}: attribute 'class_names' has {names.size} name(s) but 'Y' has {classes} "
                           "columns; expected one name per class")
    return [printable(name) for name in names]


def _source_paths(file, sample_count: int) -> list[str] | None:
    """The ``source_paths`` of the clips in use, or None without them; a DatasetError (one line) when
    there are fewer than the clips in use."""
    if "source_paths" not in file:
        return None
    paths = file["source_paths"]
    if not isinstance(paths, h5py.Dataset) or paths.ndim != 1:
        shape = getattr(paths, "shape", type(paths).__name__)
        raise DatasetError(f"{file.filename}: 'source_paths' is {shape}, expected a 1-D dataset of one source path "
                           "per row of X")
    if paths.shape[0] < sample_count:
        raise DatasetError(f"{file.filename}: dataset 'source_paths' has {paths.shape[0]} entries but {sample_count} "
                           "clips are in use (sample_count); expected one source path per row of X")
    try:
        return [printable(p) for p in paths[:sample_count]]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file.filename}: dataset 'source_paths' cannot be read: {exc}") from exc


def predict_model(model_or_checkpoint, path: str | os.PathLike, *, batch_size: int | None = None,
                  validation_ratio: float | None = None, seed: int | None = None, split: str | None = None,
                  views: tuple[int, int] = (1, 1), augment: Augment | None = None, threads: int | None = None,
                  allow_unwritten: bool = False) -> Predictions:
    """The predicted class of every clip in use in ``path`` (views averaged) and its probability,
    the same on every rank, with the side of the split each clip was on in training.

    Each rank predicts a contiguous share; the shares are combined by summing arrays that are
    zero outside each rank's rows, which is exact. Only the top class and its score travel (16
    bytes a clip, not a row of every class's score). The split is the checkpoint's (seed,
    validation ratio, split) unless given, as for :func:`evaluate_model`, so
    :meth:`Predictions.accuracy` keeps clips the model learnt apart from clips it did not.
    Arguments as for :func:`evaluate_model`.
    """
    from .data.dataset import read_labels

    views = _check_views(views)
    info = describe(path, allow_unwritten=allow_unwritten)  # a bad file is one line before the model loads
    with open_file(path) as file:  # and so is inconsistent metadata
        labels = read_labels(file, info.sample_count)
        class_names = _class_names(file, info.classes)
        paths = _source_paths(file, info.sample_count)
    model, settings, augment = _resolve(model_or_checkpoint, seed=seed, validation_ratio=validation_ratio,
                                        split=split, batch_size=batch_size, augment=augment)
    _check_classes(model, info.classes, path)
    plan = _plan(path, info, settings)  # only the split: every rank predicts its share of all clips
    subset = np.zeros(info.sample_count, dtype=np.uint8)
    subset[plan.subsets.validation] = 1
    _check_input(model, (augment or Augment()).output_shape(info.clip_shape), f"{path} with {augment or 'no clip sampling'}")
    collective = _engine()
    scorer = _scorer(model, views, info.classes)
    share = np.array_split(np.arange(info.sample_count), collective.size)[collective.rank]
    top = np.zeros((2, info.sample_count), dtype=np.float64)  # the class (exact in float64) and its score
    with BatchReader(path, threads=threads, allow_unwritten=allow_unwritten) as reader:
        for start in range(0, share.size, settings["batch_size"]):
            batch = share[start : start + settings["batch_size"]]
            x, _ = clip_views(reader, batch, augment, views)
            scores = np.asarray(scorer.predict_on_batch(x))
            top[0, batch] = scores.argmax(axis=1)
            top[1, batch] = scores.max(axis=1)
    top = collective.sum([top])[0]  # zeros outside each rank's rows: the sum is every rank's values, exactly
    settings["ranks"] = collective.size
    return Predictions(top[0].astype(np.int64), top[1].astype(np.float32), labels, class_names, paths, subset,
                       settings)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list for CSV injection


def csv_cell(value: str) -> str:
    """``value`` safe for a spreadsheet: a leading ``'`` when it starts like a formula (see :func:`write_predictions`).

    Example:
        >>> csv_cell("=cmd|' /C calc'!A0"), csv_cell("cat")
        ("'=cmd|' /C calc'!A0", 'cat')
    """
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def write_predictions(predictions: Predictions, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the CSV (one row per clip) and the confusion-matrix PNG beside it; returns both paths.

    Columns: ``index``, ``source_path`` (when the file has them), ``predicted``, ``probability``,
    ``true`` and ``subset`` (``train`` or ``validation``, when known), UTF-8. Class names and
    source paths come from the data file, so a cell that starts with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return gets a leading ``'`` (OWASP's rule against CSV injection): a
    spreadsheet then shows it as text instead of running it as a formula.

    Rank 0 alone calls this. Both are written under temporary names and renamed; on a failure
    (a full disk, say) neither is left behind, and the OSError names ``out``.
    """
    out = Path(out)
    png = out.with_name(f"{out.stem}-confusion.png")
    names = [csv_cell(name) for name in predictions.class_names]
    sides = None if predictions.subset is None else np.array(["train", "validation"])[predictions.subset]
    try:
        with atomic_write(out) as partial, open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            header = ["index"] + (["source_path"] if predictions.source_paths is not None else [])
            writer.writerow(header + ["predicted", "probability", "true"] + (["subset"] if sides is not None else []))
            for index, (best, score, label) in enumerate(zip(predictions.predicted, predictions.probability,
                                                              predictions.labels)):
                path = [csv_cell(predictions.source_paths[index])] if predictions.source_paths is not None else []
                side = [sides[index]] if sides is not None else []
                writer.writerow([index, *path, names[best], f"{score:.6f}", names[label], *side])
    except OSError as exc:
        raise OSError(f"{out}: cannot be written ({exc.strerror or exc})") from exc
    try:
        _plot_confusion(predictions.confusion(), predictions.class_names, png)
    except OSError as exc:
        out.unlink(missing_ok=True)  # all or nothing: no CSV without its PNG
        raise OSError(f"{png}: cannot be written ({exc.strerror or exc}); {out} was removed") from exc
    return out, png


def _plot_confusion(counts: np.ndarray, names: list[str], png: Path) -> None:
    plt = pyplot(png)
    classes = len(names)
    side = min(20.0, 2.5 + 0.35 * classes)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    if classes <= 50:
        axis.set_xticks(range(classes), names, rotation=90)
        axis.set_yticks(range(classes), names)
    if classes <= 20:  # the counts fit in the cells
        for (row, col), count in np.ndenumerate(counts):
            axis.text(col, row, str(count), ha="center", va="center",
                      color="white" if count > counts.max() / 2 else "black")
    accuracy = np.trace(counts) / max(1, counts.sum())
    axis.set(xlabel="predicted", ylabel="true", title=f"{counts.sum()} clips, accuracy {accuracy:.3f}")
    save_figure(figure, png, format="png")
