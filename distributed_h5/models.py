"""Reference video classifiers: a compact (2+1)D network and R(2+1)D-18. Imports Keras.

Both factor each 3x3x3 convolution into a spatial 1x3x3 and a temporal 3x1x1 one (Tran et
al. 2018, "A Closer Look at Spatiotemporal Convolutions"). Inputs are clips as stored,
(frames, channels, rows, cols) in the file's dtype; the model scales them by that dtype
(uint8 by 1/255, uint16 by 1/65535, floats unchanged), casts on the device, and its
softmax runs in float32 under mixed precision. BatchNorm is safe with ``train_model``:
moving statistics are averaged across ranks after every epoch, and ``sync_batchnorm=True``
computes the batch statistics over the global batch.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import keras
from keras import layers

from .checkpoints import MODELS, OPTIMIZERS
from .data.checks import positive_int


def load_keras_model(path: str | os.PathLike, *, option: str, compiled: bool = False) -> keras.Model:
    """The model in the ``.keras`` file at ``path``, or a one-line ValueError saying what is wrong,
    naming the file as the command-line ``option`` that gave it (``--model``, ``--checkpoint``).

    With ``compiled=True``, a model saved before ``compile`` is refused too. The one loader of
    the package: ``train --model FILE``, ``evaluate`` and ``predict`` load through it.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{option} {path}: not a .keras model file (Keras 3 saves models as .keras zip archives)")
    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # Keras raises many kinds for a bad file; the user needs one line
        raise ValueError(f"{option} {path}: cannot be loaded by keras.models.load_model: "
                         f"{' '.join(str(exc).split())}") from exc
    if compiled and (not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None
                     or not getattr(model, "compiled", False)):
        raise ValueError(f"{option} {path}: the model is not compiled; save it after model.compile(optimizer=..., "
                         "loss=...)")
    return model


def input_scale(dtype) -> float:
    """The factor that brings stored pixels to [0, 1]: 1/max for unsigned integers, 1 for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return 1.0 / np.iinfo(dtype).max
    if dtype.kind == "f":
        return 1.0
    raise ValueError(f"clips must be stored as unsigned integers or floats. Received: dtype {dtype}")


def _inputs(clip_shape, dtype, name):
    if len(clip_shape) != 4:
        raise ValueError(f"clip_shape must be (frames, channels, rows, cols). Received: {clip_shape!r}")
    inputs = keras.Input(shape=tuple(clip_shape), name="clips", dtype=str(np.dtype(dtype)))
    # Stored channels-first; Conv3D on CPU needs channels-last.
    x = layers.Permute((1, 3, 4, 2), name="to_channels_last")(inputs)
    # The scale is recorded in the model (this layer's config), chosen by the stored dtype.
    return inputs, layers.Rescaling(input_scale(dtype), name="rescale")(x)


def _classifier(x, classes, dropout, seed, init):
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    x = layers.Dense(classes, kernel_initializer=init(), name="logits")(x)
    # float32 softmax: under mixed precision the probabilities and the loss stay accurate.
    return layers.Activation("softmax", dtype="float32", name="classes")(x)


def _initializers(seed):
    seeds = keras.random.SeedGenerator(seed) if seed is not None else None

    def init(kind="glorot_uniform"):
        if seeds is None:
            return kind
        return {"glorot_uniform": keras.initializers.GlorotUniform, "he_normal": keras.initializers.HeNormal}[kind](
            seed=seeds)

    return init


def video_classifier(
    clip_shape: tuple[int, int, int, int],
    classes: int,
    *,
    width: int = 16,
    depth: int = 3,
    dropout: float = 0.3,
    batchnorm: bool = False,
    dtype="uint8",
    seed: int | None = None,
) -> keras.Model:
    """An uncompiled (2+1)D classifier for clips of shape (frames, channels, rows, cols).

    Args:
        clip_shape: (frames, channels, rows, cols), as stored in X.
        classes: number of output classes (softmax).
        width: filters of the first block; each further block doubles them (default 16).
        depth: number of (2+1)D blocks, each halving rows and cols (default 3).
        dropout: dropout rate before the classifier (default 0.3).
        batchnorm: BatchNormalization after every convolution (default False).
        dtype: the stored dtype of X, which sets the input scaling (default uint8).
        seed: seeds the initial weights (default: random).

    Example:
        >>> model = video_classifier((16, 3, 64, 64), classes=4)  # doctest: +SKIP
    """
    positive_int("width", width)
    positive_int("depth", depth)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    init = _initializers(seed)
    inputs, x = _inputs(clip_shape, dtype, "video_classifier")
    for block in range(depth):
        filters = width * 2**block
        for part, kernel in (("spatial", (1, 3, 3)), ("temporal", (3, 1, 1))):
            x = layers.Conv3D(filters, kernel, padding="same", use_bias=not batchnorm, kernel_initializer=init(),
                              name=f"block{block}_{part}")(x)
            if batchnorm:
                x = layers.BatchNormalization(name=f"block{block}_{part}_bn")(x)
            x = layers.Activation("relu", name=f"block{block}_{part}_relu")(x)
        # TensorFlow has no float16 MaxPool3D kernel on CPUs: pool in float32 under mixed_float16.
        pool_dtype = "float32" if keras.config.dtype_policy().name == "mixed_float16" else None
        x = layers.MaxPooling3D((1, 2, 2), padding="same", dtype=pool_dtype, name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    return keras.Model(inputs, _classifier(x, classes, dropout, seed, init), name="video_classifier")


def r2plus1d_18(
    clip_shape: tuple[int, int, int, int],
    classes: int,
    *,
    width: int = 64,
    dropout: float = 0.0,
    dtype="uint8",
    seed: int | None = None,
) -> keras.Model:
    """R(2+1)D-18 (Tran et al. 2018), the model of torchvision's video classification reference.

    A stem (1x7x7 spatial then 3x1x1 temporal), four stages of two residual blocks with
    ``width``, 2x, 4x and 8x filters (stages 2-4 halve time and space), BatchNorm after
    every convolution, global average pooling and a classifier. Each 3x3x3 convolution of
    R3D is factored into 1x3x3 and 3x1x1 with the intermediate filters chosen so the
    parameter count matches it, as in the paper and torchvision (31,505,325 trainable
    parameters for 400 classes at ``width=64``). ``width`` below 64 gives a small model of
    the same shape, for tests and CPUs.

    Example:
        >>> model = r2plus1d_18((16, 3, 112, 112), classes=101)  # doctest: +SKIP
    """
    positive_int("width", width)
    init = _initializers(seed)
    inputs, x = _inputs(clip_shape, dtype, "r2plus1d_18")

    def bn_relu(x, name, relu=True):
        x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x

    def conv(x, filters, kernel, strides, name):
        padding = tuple(k // 2 for k in kernel)
        x = layers.ZeroPadding3D(padding, name=f"{name}_pad")(x) if any(padding) else x
        return layers.Conv3D(filters, kernel, strides=strides, padding="valid", use_bias=False,
                             kernel_initializer=init("he_normal"), name=name)(x)

    def conv2plus1d(x, middle, out_filters, stride, name):
        x = conv(x, middle, (1, 3, 3), (1, stride, stride), f"{name}_spatial")
        x = bn_relu(x, f"{name}_spatial")
        return conv(x, out_filters, (3, 1, 1), (stride, 1, 1), f"{name}_temporal")

    # Stem: 45 spatial filters then `width` temporal ones (torchvision's R2Plus1dStem).
    x = conv(x, width * 45 // 64, (1, 7, 7), (1, 2, 2), "stem_spatial")
    x = bn_relu(x, "stem_spatial")
    x = conv(x, width, (3, 1, 1), (1, 1, 1), "stem_temporal")
    x = bn_relu(x, "stem_temporal")
    in_filters = width
    for stage, multiple in enumerate((1, 2, 4, 8), start=1):
        filters = width * multiple
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            name = f"stage{stage}_block{block}"
            shortcut = x
            # One intermediate width per block, from its input and output filters (as torchvision).
            middle = (in_filters * filters * 27) // (in_filters * 9 + 3 * filters)
            y = conv2plus1d(x, middle, filters, stride, f"{name}_conv1")
            y = bn_relu(y, f"{name}_conv1")
            y = conv2plus1d(y, middle, filters, 1, f"{name}_conv2")
            y = bn_relu(y, f"{name}_conv2", relu=False)
            if stride != 1 or in_filters != filters:
                shortcut = layers.Conv3D(filters, 1, strides=stride, use_bias=False,
                                         kernel_initializer=init("he_normal"), name=f"{name}_downsample")(x)
                shortcut = bn_relu(shortcut, f"{name}_downsample", relu=False)
            x = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([y, shortcut]))
            in_filters = filters
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    return keras.Model(inputs, _classifier(x, classes, dropout, seed, init), name="r2plus1d_18")


def build_model(
    name: str,
    clip_shape: tuple[int, int, int, int],
    classes: int,
    *,
    width: int | None = None,
    depth: int = 3,
    dropout: float = 0.3,
    batchnorm: bool = False,
    dtype="uint8",
    seed: int | None = None,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
) -> keras.Model:
    """A reference model (``name`` in ``MODELS``), compiled as ``train`` compiles it: categorical
    cross-entropy, accuracy, and ``optimizer`` (``adam``, or ``sgd`` with momentum 0.9) at
    ``learning_rate``. The one factory: ``distributed-h5 train`` and ``bench scaling`` build here.

    Set the dtype policy (``keras.config.set_dtype_policy``) first: layers take it when built.
    ``width`` defaults to 16 for ``video`` and 64 for ``r2plus1d_18``; ``depth`` and
    ``batchnorm`` are the video model's.

    Example:
        >>> model = build_model("video", (16, 3, 64, 64), classes=4, seed=0)  # doctest: +SKIP
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}. Received: {name!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}. Received: optimizer={optimizer!r}")
    if name == "video":
        model = video_classifier(clip_shape, classes, width=width or 16, depth=depth, dropout=dropout,
                                 batchnorm=batchnorm, dtype=dtype, seed=seed)
    else:
        model = r2plus1d_18(clip_shape, classes, width=width or 64, dropout=dropout, dtype=dtype, seed=seed)
    chosen = (keras.optimizers.Adam(learning_rate) if optimizer == "adam"
              else keras.optimizers.SGD(learning_rate, momentum=0.9))
    model.compile(optimizer=chosen, loss="categorical_crossentropy", metrics=["accuracy"])
    return model
