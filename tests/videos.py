"""Real small video files for the conversion tests, written with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Class colours (RGB): far apart, so codec error cannot move a clip to another class.
COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def frame_image(colour, t: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A flat class colour with a white bar at a column that moves with time t."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = colour
    column = (4 * t) % (width - 8)
    image[:, column : column + 8] = 255
    return image


def write_video(path: Path, colour, frames: int, *, codec: str = "mpeg4", pixel_format: str = "yuv420p",
                rate: int = 24, height: int = 48, width: int = 64) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}  # near-lossless, so pixel checks can be tight
        for t in range(frames):
            image = frame_image(colour, t, height, width)
            if pixel_format == "gray":
                frame = av.VideoFrame.from_ndarray(image.mean(axis=2).astype(np.uint8), format="gray")
            else:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_tree(root: Path) -> dict[str, str]:
    """3 classes x 4 videos of 30 frames, plus a corrupt file, a short video (10 frames)
    and a grayscale one; returns {relative path: what it is}."""
    kinds = {}
    for name, colour in COLOURS.items():
        for k in range(4):
            write_video(root / name / f"{name}_{k}.mp4", colour, 30)
            kinds[f"{name}/{name}_{k}.mp4"] = "good"
    write_video(root / "green" / "green_short.mp4", COLOURS["green"], 10)
    kinds["green/green_short.mp4"] = "short"
    write_video(root / "red" / "red_gray.mkv", COLOURS["red"], 30, codec="ffv1", pixel_format="gray")
    kinds["red/red_gray.mkv"] = "gray"
    (root / "blue" / "blue_corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    kinds["blue/blue_corrupt.mp4"] = "corrupt"
    return kinds


def make_ucf_tree(root: Path, *, groups: int = 3, clips: int = 2, frames: int = 8, height: int = 24,
                  width: int = 32) -> list[str]:
    """UCF101's layout and names, Class/v_Class_gNN_cMM.avi, for each class of COLOURS (capitalised):
    ``groups`` groups of ``clips`` clips each; returns the relative paths, sorted as convert lists them."""
    paths = []
    for name, colour in sorted(COLOURS.items()):
        label = name.capitalize()
        for group in range(1, groups + 1):
            for clip in range(1, clips + 1):
                relative = f"{label}/v_{label}_g{group:02d}_c{clip:02d}.avi"
                write_video(root / relative, colour, frames, height=height, width=width)
                paths.append(relative)
    return paths


def write_rawframes(root, frames=12, size=(24, 32)):
    """mmaction2's rawframes: SRC/<class>/<video>/img_00001.jpg ..., 4:2:0 JPEGs as ffmpeg writes them."""
    import simplejpeg

    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        for video in range(2):
            folder = root / name / f"video{video}"
            folder.mkdir(parents=True)
            for t in range(1, frames + 1):
                image = np.zeros((*size, 3), np.uint8)
                image[:] = colour
                image[:, (2 * t) % 24 : (2 * t) % 24 + 6] = 255
                (folder / f"img_{t:05d}.jpg").write_bytes(simplejpeg.encode_jpeg(image, quality=85,
                                                                                  colorsubsampling="420"))
