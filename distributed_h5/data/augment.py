"""Clip sampling and augmentation: a temporal window, a short-side scale, a crop and a flip. Imports numpy only.

Every random choice is a pure function of ``(seed, epoch, sample index)``: a sample's
window start, scale, crop offsets and flip come from a generator keyed on those three
(numpy's ``SeedSequence``), never on the rank, the rank count, the batch the sample is read
in or the thread that reads it. So with augmentation on, 2 ranks x batch b still train on the
very clips 1 rank x batch 2b does, and a resumed run sees the clips an uninterrupted one would.

Where each step happens (all on the reader side, in the thread that reads the batch, before
the clip reaches TensorFlow; the model sees a smaller uint8 clip and scales it to [0, 1]):

1. the window: :meth:`BatchReader.read_windows` reads only the frames of the window (a byte
   range per clip in the uncompressed layouts; compressed clips are inflated whole and sliced);
2. scale, crop and flip: numpy, on the window just read (:meth:`Augment.apply`): a crop and a
   flip are a strided copy; a scale is a nearest-neighbour gather of rows and columns, fused
   with the crop so that only the cropped pixels are computed.

Training draws a view per sample per epoch; validation takes the deterministic centre view
(centre window, the short side scaled to the range's lower end, centre crop, no flip), as
the torchvision, PyTorchVideo and SlowFast recipes evaluate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .checks import positive_int, positive_pair

# Mixed into every sample's key, so these draws never coincide with another use of (seed, epoch, index).
_STREAM = 0x61756720  # "aug "
_scratch = threading.local()  # a reusable window buffer per reading thread


class Views(NamedTuple):
    """One view per sample: window ``start`` frame, scaled size, crop ``top``/``left`` in the
    scaled clip, and whether it is flipped. Arrays of one row per sample, aligned with the indices."""

    start: np.ndarray
    rows: np.ndarray  # the scaled clip's rows and cols (the stored ones without a scale)
    cols: np.ndarray
    top: np.ndarray
    left: np.ndarray
    flip: np.ndarray


@dataclass(frozen=True)
class Augment:
    """How training clips are sampled from the stored ones, and their centre view for validation.

    Args:
        clip_frames: frames per clip, T (default None: all stored frames, or every
            ``frame_stride``-th of them).
        frame_stride: take every S-th frame of the window, which spans ``(T - 1) * S + 1``
            stored frames (default 1).
        crop: ``(rows, cols)`` of a crop (default None: the whole frame).
        flip: flip horizontally with probability 0.5 in training (default False).
        scale: ``(low, high)``: scale the short side to a random size in [low, high]
            (nearest neighbour, aspect kept) before the crop; validation uses ``low``
            (default None: no scaling).

    Example:
        >>> augment = Augment(clip_frames=16, crop=(96, 96), flip=True)
        >>> augment.output_shape((32, 3, 112, 112))
        (16, 3, 96, 96)
    """

    clip_frames: int | None = None
    frame_stride: int = 1
    crop: tuple[int, int] | None = None
    flip: bool = False
    scale: tuple[int, int] | None = None

    def __post_init__(self):
        positive_int("clip_frames", self.clip_frames, optional=True)
        positive_int("frame_stride", self.frame_stride)
        object.__setattr__(self, "crop", positive_pair("crop", self.crop, optional=True))
        object.__setattr__(self, "scale", positive_pair("scale", self.scale, optional=True))
        if self.scale is not None and self.scale[0] > self.scale[1]:
            raise ValueError(f"scale must be (low, high) with low <= high. Received: scale={self.scale!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"flip must be True or False. Received: flip={self.flip!r}")

    @property
    def identity(self) -> bool:
        """True when every clip is read as stored (nothing to sample or change)."""
        return self.clip_frames is None and self.frame_stride == 1 and self.crop is None and not self.flip \
            and self.scale is None

    def frames(self, clip_shape) -> int:
        """T: frames per augmented clip (without ``clip_frames``, every ``frame_stride``-th stored frame)."""
        return (clip_shape[0] - 1) // self.frame_stride + 1 if self.clip_frames is None else self.clip_frames

    def span(self, clip_shape) -> int:
        """Stored frames a window covers: ``(T - 1) * stride + 1``."""
        return (self.frames(clip_shape) - 1) * self.frame_stride + 1

    def scaled_size(self, clip_shape, short_side: int) -> tuple[int, int]:
        rows, cols = clip_shape[2:]
        if rows <= cols:
            return short_side, max(1, round(cols * short_side / rows))
        return max(1, round(rows * short_side / cols)), short_side

    def check(self, clip_shape) -> None:
        """ValueError, naming the value and the stored clip shape, unless every view fits in the stored clips."""
        frames, _, rows, cols = clip_shape
        if self.span(clip_shape) > frames:
            raise ValueError(f"clip_frames={self.frames(clip_shape)} with frame_stride={self.frame_stride} spans "
                             f"{self.span(clip_shape)} frames, but the file's clips have {frames} "
                             f"(clip shape {tuple(clip_shape)}); store more frames or ask for fewer")
        smallest = self.scaled_size(clip_shape, self.scale[0]) if self.scale else (rows, cols)
        if self.crop is not None and (self.crop[0] > smallest[0] or self.crop[1] > smallest[1]):
            where = f"the clips scaled to short side {self.scale[0]} are {smallest}" if self.scale else \
                f"the file's frames are {smallest}"
            raise ValueError(f"crop={self.crop} does not fit: {where} (rows, cols); use a smaller crop")

    def output_shape(self, clip_shape) -> tuple[int, int, int, int]:
        """The augmented clip's (frames, channels, rows, cols): build models for this shape."""
        clip_shape = tuple(int(v) for v in clip_shape)
        self.check(clip_shape)
        if self.crop is not None:
            rows, cols = self.crop
        elif self.scale is not None:
            raise ValueError("scale needs a crop (the scaled size varies from clip to clip); pass crop=(rows, cols)")
        else:
            rows, cols = clip_shape[2:]
        return self.frames(clip_shape), clip_shape[1], rows, cols

    # --- the choices -------------------------------------------------------------------------
    def views(self, indices, clip_shape, *, seed: int, epoch: int, training: bool) -> Views:
        """Each sample's view: in training a pure function of ``(seed, epoch, index)``; in
        validation the centre view, the same for every sample, epoch and seed."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        clip_shape = tuple(int(v) for v in clip_shape)
        self.output_shape(clip_shape)  # checks that views fit
        n = indices.size
        stored_frames = clip_shape[0]
        starts_free = stored_frames - self.span(clip_shape) + 1  # window starts to choose from
        if training:
            uniform = np.array([_draws(seed, epoch, int(i)) for i in indices]).reshape(n, 5)
        start = _pick(uniform[:, 0], starts_free) if training else np.full(n, (starts_free - 1) // 2)
        if self.scale is not None:
            low, high = self.scale
            short = low + _pick(uniform[:, 1], high - low + 1) if training else np.full(n, low)
            sizes = np.array([self.scaled_size(clip_shape, int(s)) for s in short], dtype=np.int64).reshape(n, 2)
        else:
            sizes = np.tile(np.array(clip_shape[2:], dtype=np.int64), (n, 1))
        crop = np.array(self.crop if self.crop is not None else clip_shape[2:], dtype=np.int64)
        free = sizes - crop + 1
        if training:
            top, left = _pick(uniform[:, 2], free[:, 0]), _pick(uniform[:, 3], free[:, 1])
            flip = uniform[:, 4] < 0.5 if self.flip else np.zeros(n, bool)
        else:
            top, left, flip = (free[:, 0] - 1) // 2, (free[:, 1] - 1) // 2, np.zeros(n, bool)
        return Views(start.astype(np.int64), sizes[:, 0], sizes[:, 1], top.astype(np.int64), left.astype(np.int64),
                     np.asarray(flip, dtype=bool))

    # --- applying them -----------------------------------------------------------------------
    def apply(self, windows: np.ndarray, views: Views, out: np.ndarray | None = None) -> np.ndarray:
        """Scale, crop and flip each clip of ``windows`` (n, T, C, rows, cols) as ``views`` say, into ``out``."""
        n, frames, channels, rows, cols = windows.shape
        crop = self.crop if self.crop is not None else (rows, cols)
        if out is None:
            out = np.empty((n, frames, channels, *crop), dtype=windows.dtype)
        for i in range(n):
            top, left = int(views.top[i]), int(views.left[i])
            if self.scale is None:  # a strided view, copied once
                clip = windows[i, :, :, top : top + crop[0], left : left + crop[1]]
                out[i] = clip[..., ::-1] if views.flip[i] else clip
                continue
            # Nearest neighbour: scaled row r shows stored row floor((r + 0.5) * rows / scaled rows).
            row_map = _nearest(top, crop[0], int(views.rows[i]), rows)
            col_map = _nearest(left, crop[1], int(views.cols[i]), cols)
            if views.flip[i]:
                col_map = col_map[::-1]
            out[i] = windows[i][:, :, row_map[:, None], col_map[None, :]]
        return out

    def read(self, reader, indices, *, seed: int, epoch: int, training: bool, out: np.ndarray | None = None):
        """Clips ``indices`` read by ``reader`` (a :class:`~distributed_h5.reader.BatchReader`) and
        augmented, and their one-hot labels: ``(x, y)``, x of shape ``(n, *output_shape)`` in the file's dtype.

        Only each window's frames are read; scale, crop and flip are applied in this thread.
        """
        indices = np.asarray(indices, dtype=np.int64)
        info = reader.info
        shape = (indices.size, *self.output_shape(info.clip_shape))
        if out is None:
            out = np.empty(shape, dtype=info.dtype)
        views = self.views(indices, info.clip_shape, seed=seed, epoch=epoch, training=training)
        frames = self.frames(info.clip_shape)
        if self.crop is None and not self.flip:  # the window is the clip: read it straight into out
            return reader.read_windows(indices, views.start, frames, self.frame_stride, out=out)
        window_shape = (indices.size, frames, *info.clip_shape[1:])
        windows = getattr(_scratch, "buffer", None)
        if windows is None or windows.shape != window_shape or windows.dtype != info.dtype:
            windows = _scratch.buffer = np.empty(window_shape, dtype=info.dtype)
        _, y = reader.read_windows(indices, views.start, frames, self.frame_stride, out=windows)
        return self.apply(windows, views, out), y


def _draws(seed: int, epoch: int, index: int) -> np.ndarray:
    """Five uniform numbers in [0, 1) for one sample, the whole of its randomness: window start,
    scale, crop top, crop left, flip. Always all five, so turning one option on or off leaves
    the others' choices as they were."""
    key = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index), _STREAM])
    return np.random.Generator(np.random.Philox(key)).random(5)


def _pick(uniform: np.ndarray, choices) -> np.ndarray:
    """An integer in [0, choices) from a uniform number in [0, 1)."""
    return np.minimum((uniform * choices).astype(np.int64), np.asarray(choices) - 1)


def _nearest(first: int, count: int, scaled: int, stored: int) -> np.ndarray:
    positions = np.arange(first, first + count)
    return np.minimum(((positions + 0.5) * stored / scaled).astype(np.int64), stored - 1)
