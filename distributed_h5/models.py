"""The reference video classifier: a compact (2+1)D convolutional network.

Each block factors a 3x3x3 convolution into a spatial 1x3x3 and a temporal 3x1x1 one
(Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions"). There is no
BatchNormalization on purpose: it keeps per-rank moving statistics that allreduce does
not average, so replicas would drift apart. Any compiled Keras model can be trained instead.
"""

from __future__ import annotations

import keras
from keras import layers


def video_classifier(
    clip_shape: tuple[int, int, int, int],
    classes: int,
    *,
    width: int = 16,
    depth: int = 3,
    dropout: float = 0.3,
    seed: int | None = None,
) -> keras.Model:
    """An uncompiled (2+1)D classifier for clips of shape (frames, channels, rows, cols).

    Input is the file's dtype (uint8 clips are scaled to [0, 1] inside the model).

    Args:
        clip_shape: (frames, channels, rows, cols), as stored in X.
        classes: number of output classes (softmax).
        width: filters of the first block; each further block doubles them (default 16).
        depth: number of (2+1)D blocks, each halving rows and cols (default 3).
        dropout: dropout rate before the classifier (default 0.3).
        seed: seeds the initial weights (default: random).

    Example:
        >>> model = video_classifier((16, 3, 64, 64), classes=4)  # doctest: +SKIP
    """
    if len(clip_shape) != 4:
        raise ValueError(f"clip_shape must be (frames, channels, rows, cols). Received: {clip_shape!r}")
    if depth < 1 or width < 1:
        raise ValueError(f"width and depth must be >= 1. Received: width={width}, depth={depth}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    seeds = keras.random.SeedGenerator(seed) if seed is not None else None

    def init():
        return keras.initializers.GlorotUniform(seed=seeds) if seeds is not None else "glorot_uniform"

    inputs = keras.Input(shape=tuple(clip_shape), name="clips")
    # Stored channels-first; Conv3D on CPU needs channels-last.
    x = layers.Permute((1, 3, 4, 2), name="to_channels_last")(inputs)
    x = layers.Rescaling(1 / 255.0, name="rescale")(x)
    for block in range(depth):
        filters = width * 2**block
        x = layers.Conv3D(filters, (1, 3, 3), padding="same", activation="relu", kernel_initializer=init(),
                          name=f"block{block}_spatial")(x)
        x = layers.Conv3D(filters, (3, 1, 1), padding="same", activation="relu", kernel_initializer=init(),
                          name=f"block{block}_temporal")(x)
        x = layers.MaxPooling3D((1, 2, 2), padding="same", name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling3D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer=init(), name="classes")(x)
    return keras.Model(inputs, outputs, name="video_classifier")
