"""``make-synthetic``, ``convert``, ``inspect`` and ``inspect-checkpoint``: making and looking at files.

Parsers and handlers; imports numpy and h5py (no framework).
"""

from __future__ import annotations

import argparse

from ..data import convert as converting
from ..data import jpeg, synthetic
from . import _command, _int_in, _one_line, _positive, _seed


def add_commands(commands) -> None:
    make = _command(commands, "make-synthetic", "write a learnable synthetic video dataset", _make_synthetic)
    make.add_argument("out", help="output HDF5 file")
    make.add_argument("--samples", type=_positive, required=True, help="clips to write")
    make.add_argument("--frames", type=_positive, default=16, help="frames per clip")
    make.add_argument("--channels", type=_positive, default=3, help="channels per frame")
    make.add_argument("--size", type=_positive, nargs=2, default=(64, 64), metavar=("H", "W"), help="rows and columns")
    make.add_argument("--classes", type=_positive, default=4, help="classes (columns of Y)")
    make.add_argument("--chunks", choices=synthetic.CHUNKINGS, default="clip", help="one clip per chunk, or contiguous")
    make.add_argument("--compression", choices=synthetic.COMPRESSIONS, default="none", help="HDF5 filter of X")
    make.add_argument("--sample-count", type=_positive, help="the sample_count attribute (default: --samples)")
    make.add_argument("--seed", type=_seed, default=0, help="seed of the clips and labels")
    _add_codec_arguments(make)

    convert = _command(commands, "convert", "video files to the HDF5 layout (parallel under mpirun or srun)", _convert)
    convert.add_argument("source", help="SRC/<class>/<video> folders, or the folder CSV paths are relative to")
    convert.add_argument("out", help="output HDF5 file")
    convert.add_argument("--frames", type=_positive, required=True, help="frames sampled uniformly per video")
    convert.add_argument("--size", type=_positive, nargs=2, required=True, metavar=("H", "W"),
                         help="rows and columns of the stored frames")
    convert.add_argument("--classes-from", default="folders", help="'folders' (default) or a CSV of path,label")
    convert.add_argument("--channels", type=int, choices=(3, 1), default=3, help="3 (RGB) or 1 (grey)")
    convert.add_argument("--fit", choices=converting.FITS, default="crop",
                         help="keep the aspect ratio by centre crop or pad")
    convert.add_argument("--short", choices=converting.SHORT_POLICIES, default="pad",
                         help="videos with fewer frames: repeat the last frame, or skip them")
    convert.add_argument("--chunks", choices=synthetic.CHUNKINGS, default="clip", help="one clip per chunk, or contiguous")
    convert.add_argument("--compression", choices=synthetic.COMPRESSIONS, default="none", help="HDF5 filter of X")
    _add_codec_arguments(convert)
    convert.add_argument("--resume", action="store_true", help="keep the parts an interrupted run completed")
    convert.add_argument("--part-videos", type=_positive, default=converting.PART_VIDEOS,
                         help="videos per part file (the unit of resume)")
    convert.add_argument("--strict", action="store_true",
                         help="exit non-zero if any video fails or any folder or link is not searched")
    convert.add_argument("--split-file", help="a UCF101/HMDB51-style list of video paths relative to SRC (one per "
                         "line, an optional class number after it): recorded per clip as the 'subset' dataset")
    convert.add_argument("--split-side", choices=converting.SPLIT_SIDES, default="validation",
                         help="the side the --split-file videos are on (default validation: a test list); "
                              "the other videos go to the other side")

    checkpoint = _command(commands, "inspect-checkpoint", "print what a checkpoint records (position, "
                          "run configuration, metrics)", _inspect_checkpoint)
    checkpoint.add_argument("checkpoint", help="a .keras checkpoint written by train")

    inspect = _command(commands, "inspect", "print a dataset's layout, or why it is invalid "
                       "(of a .keras checkpoint: its record, as inspect-checkpoint does)", _inspect)
    inspect.add_argument("file", help="an HDF5 file, or a .keras checkpoint")
    inspect.add_argument("--verify", action="store_true",
                         help="read every clip in use, not only a few, to find any corrupt chunk (takes a full read)")


def _add_codec_arguments(command) -> None:
    command.add_argument("--codec", choices=synthetic.CODECS, default="raw",
                         help="raw: clips as stored pixels (default; --compression applies); jpeg: every frame a JPEG, "
                              "about 7x smaller at quality 90 on real video, decoded in the reader's threads")
    command.add_argument("--quality", type=_int_in(1, 100), default=jpeg.DEFAULT_QUALITY,
                         help=f"--codec jpeg: JPEG quality 1-100 (default {jpeg.DEFAULT_QUALITY})")
    command.add_argument("--subsampling", choices=jpeg.SUBSAMPLINGS, default=jpeg.DEFAULT_SUBSAMPLING,
                         help="--codec jpeg: chroma subsampling, 444 (full colour, default) or 420 (smaller)")


def _make_synthetic(args) -> int:
    path = synthetic.make_synthetic(args.out, samples=args.samples, frames=args.frames, channels=args.channels,
                                    size=tuple(args.size), classes=args.classes, chunks=args.chunks,
                                    compression=args.compression, seed=args.seed, sample_count=args.sample_count,
                                    codec=args.codec, quality=args.quality, subsampling=args.subsampling)
    print(f"wrote {path}")
    return 0


def _convert(args) -> int:
    summary = converting.convert(args.source, args.out, frames=args.frames, size=tuple(args.size),
                                 classes_from=args.classes_from, channels=args.channels, fit=args.fit,
                                 short=args.short, chunks=args.chunks, compression=args.compression,
                                 resume=args.resume, part_videos=args.part_videos, split_file=args.split_file,
                                 split_side=args.split_side, codec=args.codec, quality=args.quality,
                                 subsampling=args.subsampling)
    if summary.rank == 0:  # one report for the job
        print(converting.report(summary, args.out), flush=True)
    return 0 if summary.converted and not (args.strict and (summary.failed or summary.unlisted)) else 1


def _inspect(args) -> int:
    import numpy as np

    from ..data.dataset import open_file, probe_indices, read_clips, read_labels, validate

    if args.file.endswith(".keras"):  # a checkpoint: its record, as inspect-checkpoint prints it
        return _inspect_checkpoint(argparse.Namespace(checkpoint=args.file))

    with open_file(args.file) as file:
        info = validate(file)
        counts = np.bincount(read_labels(file, info.sample_count), minlength=info.classes)
        provenance, names = _provenance(file, info.rows, info.classes)
        # Read clips, so corrupt or truncated chunks and undecodable filters show here, not mid-training.
        checked = probe_indices(info.sample_count)
        read_clips(file, checked)
        if args.verify:
            _verify(file, info)
        stored = _stored_clip_bytes(file, info)
    frames, channels, rows, cols = info.clip_shape
    print(f"file          {info.path}")
    print(f"size on disk  {info.file_bytes / 2**20:.1f} MiB")
    print(f"X             {(info.rows, *info.clip_shape)} {info.dtype} "
          f"(samples, frames={frames}, channels={channels}, rows={rows}, cols={cols})")
    print(f"Y             {(info.rows, info.classes)}")
    if info.codec == "jpeg":
        print(f"codec         jpeg, quality {stored['quality']}, subsampling {stored['subsampling']}: "
              f"{stored['bytes'] / info.rows:,.0f} bytes per clip on average, 1/{info.clip_bytes * info.rows / max(1, stored['bytes']):.1f} "
              f"of raw ({info.clip_bytes:,} bytes)")
    else:
        print(f"chunks        {info.chunks if info.chunks else 'contiguous'}")
        print(f"compression   {info.compression or 'none'}")
    print(f"sample_count  {info.sample_count}")
    print(f"clips read    {f'all {info.sample_count}' if args.verify else f'{checked.size} (first, last, spread)'}, "
          "no error")
    print("class counts  " + ", ".join(
        f"{names[k] if names is not None else k}: {count}" for k, count in enumerate(counts.tolist())))
    for line in provenance:
        print(line)
    return 0


def _verify(file, info) -> None:
    """Read every clip in use (``inspect --verify``), 64 at a time: through h5py for stored
    clips (corrupt chunks, filters), decoded for JPEG ones (every frame); DatasetError names the first bad one."""
    import numpy as np

    from ..data.dataset import DatasetError, read_clips

    if info.codec != "jpeg":
        for start in range(0, info.sample_count, 64):  # bounded memory
            read_clips(file, np.arange(start, min(start + 64, info.sample_count)))
        return
    try:
        with jpeg.JpegClips(info.path, threads=1) as clips:
            for start in range(0, info.sample_count, 64):
                clips.read(np.arange(start, min(start + 64, info.sample_count)))
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


def _stored_clip_bytes(file, info) -> dict:
    """JPEG clips: the quality, subsampling and stored bytes of X (for ``inspect``)."""
    if info.codec != "jpeg":
        return {}
    x = file["X"]
    return dict(quality=int(x.attrs["quality"]), subsampling=str(x.attrs["subsampling"]), bytes=int(x["bytes"].size))


def _provenance(file, rows: int, classes: int) -> tuple[list[str], list[str] | None]:
    """Lines for the optional objects ``convert`` writes (see the README's layout table), if present,
    and the class names when there is one per class. Provenance is optional: what does not fit
    X and Y is shown as far as it is consistent, with a ``note`` line saying what is wrong."""
    import h5py
    import numpy as np

    from ..data.outputs import printable

    lines, notes, names = [], [], None
    if "class_names" in file.attrs:
        shown = [printable(name) for name in np.asarray(file.attrs["class_names"], dtype=object).reshape(-1)]
        lines.append(f"class_names   attribute, {len(shown)}: {', '.join(shown)}")
        if len(shown) == classes:
            names = shown
        else:
            notes.append(f"class_names has {len(shown)} name(s) for the {classes} columns of Y; classes are counted "
                         "by number")
    if "source_paths" in file:
        paths = file["source_paths"]
        if not isinstance(paths, h5py.Dataset) or paths.ndim != 1:
            notes.append(f"source_paths is {getattr(paths, 'shape', type(paths).__name__)}, expected one path per row "
                         "of X; not shown")
        else:
            first, last = (printable(paths[0]), printable(paths[-1])) if len(paths) else ("", "")
            lines.append(f"source_paths  dataset {paths.shape} strings, {first} ... {last}")
            if paths.shape[0] != rows:
                notes.append(f"source_paths has {paths.shape[0]} entries for the {rows} rows of X")
    for name in ("frame_counts", "frame_rates"):
        if name in file:
            dset = file[name]
            if not isinstance(dset, h5py.Dataset) or dset.ndim != 1 or dset.dtype.kind not in "iuf":
                what = f"{dset.shape} {dset.dtype}" if isinstance(dset, h5py.Dataset) else type(dset).__name__
                lines.append(f"{name:<13} dataset {what}")
                notes.append(f"{name} is {what}, expected one number per row of X; not summarised")
                continue
            values = dset[:rows]
            summary = (f", min {values.min():g}, median {np.median(values):g}, max {values.max():g}"
                       if values.size else "")
            lines.append(f"{name:<13} dataset {dset.shape} {dset.dtype}{summary}")
            if dset.shape[0] != rows:
                notes.append(f"{name} has {dset.shape[0]} entries for the {rows} rows of X")
    from ..data.dataset import read_groups, read_subset  # they check the values: a bad one is one line

    if "groups" in file:
        groups = read_groups(file, rows)
        lines.append(f"groups        dataset {file['groups'].shape} {file['groups'].dtype}, "
                     f"{np.unique(groups).size} source videos")
    if "subset" in file:
        counts = np.bincount(read_subset(file, rows), minlength=2)
        lines.append(f"subset        dataset {file['subset'].shape} {file['subset'].dtype}, "
                     f"train {counts[0]}, validation {counts[1]}")
    if "generator" in file.attrs:
        lines.append(f"generator     attribute, {printable(file.attrs['generator'])}")
    return lines + [f"note          {note}" for note in notes], names


def _inspect_checkpoint(args) -> int:
    from ..checkpoints import describe, read_record, record_config

    try:
        text = describe(args.checkpoint)
    except (TypeError, AttributeError, KeyError) as exc:  # a record of another shape than train writes
        raise ValueError(f"{args.checkpoint}: its record (distributed_h5.json) cannot be read: {exc!r}") from exc
    try:
        record_config(read_record(args.checkpoint))
    except (TypeError, ValueError, AttributeError) as exc:  # shown as far as it goes, and why evaluate refuses it
        text += (f"\nnote          the record's config is not a whole run configuration ({_one_line(exc)}); evaluate "
                 "and predict refuse this checkpoint")
    print(text, flush=True)
    return 0
