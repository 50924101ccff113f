"""distributed-h5 convert in one process, on real video files written with PyAV."""

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager

import h5py
import numpy as np
import pytest

from distributed_h5 import describe
from distributed_h5.convert import decode, list_videos

from ..videos import COLOURS, frame_image, make_tree, make_ucf_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return root, make_tree(root)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True, text=True)


def test_listing_is_sorted_by_class_then_path(tree):
    root, kinds = tree
    videos, names, _, problems = list_videos(root)
    assert problems == []
    assert names == ["blue", "green", "red"]
    assert [v.path for v in videos] == sorted(kinds, key=lambda p: (p.split("/")[0], p))
    assert [v.label for v in videos] == [names.index(v.path.split("/")[0]) for v in videos]


def test_decode_samples_uniformly_and_keeps_pixels(tree):
    root, _ = tree
    clip = decode(root / "green" / "green_1.mp4", frames=6, size=(48, 64))
    assert clip.frames.shape == (6, 3, 48, 64) and clip.frame_count == 30 and clip.frame_rate == 24.0
    picks = np.linspace(0, 29, 6).round().astype(int)
    for frame, t in zip(clip.frames, picks):
        expected = frame_image(COLOURS["green"], t).transpose(2, 0, 1).astype(int)
        assert np.abs(frame.astype(int) - expected).mean() < 6  # within codec tolerance


def test_decode_crops_and_pads_keeping_the_aspect_ratio(tree):
    root, _ = tree
    cropped = decode(root / "red" / "red_0.mp4", frames=2, size=(24, 24), fit="crop").frames
    padded = decode(root / "red" / "red_0.mp4", frames=2, size=(24, 24), fit="pad").frames
    assert cropped.shape == padded.shape == (2, 3, 24, 24)
    # 64x48 padded into 24x24 is 32x18 wide... scaled to 24x18: 3 black rows top and bottom.
    assert padded[:, :, :3].max() == 0 and padded[:, :, -3:].max() == 0 and padded[:, :, 3:21].max() > 0
    assert cropped.min(axis=(0, 2, 3)).tolist() != [0, 0, 0]


def test_short_and_gray_videos(tree):
    root, _ = tree
    short = decode(root / "green" / "green_short.mp4", frames=16, size=(12, 16))
    assert short.frame_count == 10
    np.testing.assert_array_equal(short.frames[10:], np.repeat(short.frames[9:10], 6, axis=0))
    gray = decode(root / "red" / "red_gray.mkv", frames=4, size=(12, 16), channels=3)
    assert gray.frames.shape == (4, 3, 12, 16)
    np.testing.assert_array_equal(gray.frames[:, 0], gray.frames[:, 1])  # gray in every channel


def test_convert_one_process(tree, tmp_path):
    root, kinds = tree
    out = tmp_path / "videos.h5"
    result = run_cli("convert", root, out, "--frames", 8, "--size", 24, 32)
    assert result.returncode == 0, result.stderr
    assert "converted 14 video(s)" in result.stdout
    assert "1 video(s) not converted:\n  blue/blue_corrupt.mp4: cannot be decoded" in result.stdout
    info = describe(out)
    assert (info.sample_count, info.clip_shape, info.classes) == (14, (8, 3, 24, 32), 3)
    with h5py.File(out, "r") as file:
        paths = [p.decode() if isinstance(p, bytes) else p for p in file["source_paths"][:]]
        assert paths == [p for p in sorted(kinds, key=lambda p: (p.split("/")[0], p)) if kinds[p] != "corrupt"]
        assert list(file.attrs["class_names"]) == ["blue", "green", "red"]
        labels = file["Y"][:].argmax(1)
        assert labels.tolist() == [["blue", "green", "red"].index(p.split("/")[0]) for p in paths]
        assert file["frame_counts"][:].tolist() == [10 if kinds[p] == "short" else 30 for p in paths]
        x = file["X"][:]
    # The class colour survives: each clip's mean is its class colour with the white bar
    # (8 of 64 columns) mixed in, within codec and scaling error.
    for clip, path in zip(x, paths):
        colour = np.array(COLOURS[path.split("/")[0]])
        if kinds[path] != "gray":
            assert np.abs(clip.mean(axis=(0, 2, 3)) - (colour * 7 / 8 + 255 / 8)).max() < 10, path
    inspect = run_cli("inspect", out)
    assert inspect.returncode == 0 and "class counts  blue: 4, green: 5, red: 5" in inspect.stdout
    assert inspect.stdout.splitlines()[-6:] == [  # what convert records beyond X and Y
        "class_names   attribute, 3: blue, green, red",
        "source_paths  dataset (14,) strings, blue/blue_0.mp4 ... red/red_gray.mkv",
        "frame_counts  dataset (14,) int64, min 10, median 30, max 30",
        "frame_rates   dataset (14,) float64, min 24, median 24, max 24",
        "groups        dataset (14,) int64, 14 source videos",  # names not UCF101's: a group per file
        "generator     attribute, distributed_h5.convert",
    ]
    assert not list(tmp_path.glob("videos.h5.parts-*"))  # parts removed after the join


def test_skip_short_and_strict(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "strict.h5"
    result = run_cli("convert", root, out, "--frames", 16, "--size", 12, 16, "--short", "skip", "--strict")
    assert result.returncode == 1
    assert "green/green_short.mp4: 10 frames, fewer than 16" in result.stdout
    assert describe(out).sample_count == 13


class Interrupted(BaseException):
    """Not an Exception, so nothing on the way catches it, as with KeyboardInterrupt."""


def test_resume_keeps_completed_parts(tree, tmp_path, monkeypatch):
    root, _ = tree
    import distributed_h5.convert as convert_module

    out = tmp_path / "resumed.h5"
    calls, interrupt = [], True
    real_decode = convert_module.decode

    def failing_decode(path, **kwargs):
        calls.append(str(path))
        if len(calls) == 6 and interrupt:
            raise Interrupted  # like Ctrl-C or a kill, in the second part
        return real_decode(path, **kwargs)

    monkeypatch.setattr(convert_module, "decode", failing_decode)
    try:
        convert_module.convert(root, out, frames=4, size=(12, 16), part_videos=4, progress=False)
    except Interrupted:
        pass
    else:
        pytest.fail("the interruption did not reach the caller")
    assert not out.exists()  # no half-written output that looks valid
    parts = list(tmp_path.glob("resumed.h5.parts-*/part-*.h5"))
    assert [p.name for p in parts] == ["part-000000.h5"]
    calls.clear()
    interrupt = False
    summary = convert_module.convert(root, out, frames=4, size=(12, 16), part_videos=4, progress=False, resume=True)
    assert summary.converted == 14 and len(calls) == 15 - 4  # the first part was not decoded again
    assert describe(out).sample_count == 14


def test_csv_input(tree, tmp_path):
    root, _ = tree
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nred/red_1.mp4,warm\nblue/blue_2.mp4,cold\ngreen/green_0.mp4,cold\n")
    out = tmp_path / "csv.h5"
    result = run_cli("convert", root, out, "--frames", 4, "--size", 12, 16, "--classes-from", table)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as file:
        assert list(file.attrs["class_names"]) == ["cold", "warm"]
        assert file["Y"][:].argmax(1).tolist() == [1, 0, 0]


PEAK_GROWTH = """
import sys
from distributed_h5.convert import decode

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

decode(sys.argv[2], frames=8, size=(240, 320))  # load the codec and warm every allocator first
before = peak_kib()
clip = decode(sys.argv[1], frames=8, size=(240, 320))
print(clip.frame_count, peak_kib() - before)
"""


def test_decode_keeps_one_clip_in_memory_whatever_the_length(tmp_path):
    from ..videos import write_video

    long = write_video(tmp_path / "long.mp4", COLOURS["blue"], 600, height=240, width=320)
    short = write_video(tmp_path / "short.mp4", COLOURS["blue"], 8, height=240, width=320)
    result = subprocess.run([sys.executable, "-c", PEAK_GROWTH, long, short], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    frame_count, growth_kib = map(int, result.stdout.split())
    assert frame_count == 600
    # A clip is 8 x 230 KiB; keeping every decoded frame, as before, grew the peak by 600 x 230 KiB = 135 MiB.
    assert growth_kib < 24 * 1024, growth_kib


@pytest.mark.parametrize("name, container_count", [("red/red_0.mp4", 30), ("red/red_gray.mkv", 0)])
def test_decode_without_a_container_frame_count_decodes_twice_and_samples_the_same(tree, name, container_count):
    import av

    from distributed_h5.convert import sample_positions

    root, _ = tree
    with av.open(str(root / name)) as container:
        assert container.streams.video[0].frames == container_count
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    clip = decode(root / name, frames=5, size=(48, 64))  # the videos' own size: no scaling
    assert clip.frame_count == len(every) == 30
    assert sample_positions(30, 5).tolist() == [0, 7, 14, 22, 29]
    np.testing.assert_array_equal(clip.frames, np.stack([every[i] for i in [0, 7, 14, 22, 29]]).transpose(0, 3, 1, 2))


def test_directory_symlinks_are_reported_not_followed(tree, tmp_path):
    root, kinds = tree
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("blue", "green", "red"):
        (linked / name).symlink_to(root / name)  # class folders that are themselves links: not followed either
    source = tmp_path / "source"
    shutil.copytree(root, source)
    (source / "all").symlink_to(".")  # back into the tree: would duplicate every video as a class
    (source / "red" / "more").symlink_to("../blue")  # a nested link to another class
    (source / "green" / "outside").symlink_to(tmp_path / "linked")  # out of the tree
    out = tmp_path / "links.h5"
    result = run_cli("convert", source, out, "--frames", 4, "--size", 12, 16, "--strict")
    assert result.returncode == 1  # --strict: something was not searched
    assert ("3 folder(s) or link(s) not searched for videos:\n"
            "  all: a directory symlink (to .); not followed\n"
            f"  green/outside: a directory symlink (to {tmp_path}/linked); not followed\n"
            "  red/more: a directory symlink (to ../blue); not followed\n") in result.stdout
    assert "converted 14 video(s)" in result.stdout  # each video once, as without the links
    with h5py.File(out, "r") as file:
        assert list(file.attrs["class_names"]) == ["blue", "green", "red"]
    assert run_cli("convert", source, tmp_path / "lenient.h5", "--frames", 4, "--size", 12, 16).returncode == 0


def test_unreadable_class_folder_is_reported_and_fails_strict(tree, tmp_path):
    root, _ = tree
    source = tmp_path / "source"
    shutil.copytree(root, source)
    (source / "green").chmod(0)
    # Root reads any folder; in a user namespace of its own it keeps its files but loses that power.
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    try:
        command = [*prefix, sys.executable, "-m", "distributed_h5.cli", "convert", source, tmp_path / "out.h5",
                   "--frames", 4, "--size", 12, 16]
        lenient = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
        strict = subprocess.run(list(map(str, command + ["--strict"])), capture_output=True, text=True, timeout=300)
    finally:
        (source / "green").chmod(0o755)
    for result in (lenient, strict):
        assert "1 folder(s) or link(s) not searched for videos:\n" \
               "  green: folder cannot be read (Permission denied); its videos are not converted\n" in result.stdout
        assert "converted 9 video(s)" in result.stdout  # blue and red; green's 5 are missing, and said so
    assert (lenient.returncode, strict.returncode) == (0, 1)


def test_rank_zero_counts_every_ranks_videos(tmp_path):
    from distributed_h5.convert import _count_videos, videos_counted

    counters = [tmp_path / f".progress-{rank}" for rank in range(3)]
    assert videos_counted(counters) == 0
    _count_videos(counters[1], 4)
    _count_videos(counters[2], 7)
    _count_videos(counters[1], 5)
    assert videos_counted(counters) == 12  # rank 0 has written nothing yet


def test_without_pyav_convert_says_so_once(tree, tmp_path):
    root, _ = tree
    program = ("import sys; sys.modules['av'] = None  # as if PyAV were not installed\n"
               "from distributed_h5.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", program, "convert", str(root), str(tmp_path / "out.h5"),
                             "--frames", "4", "--size", "12", "16"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("distributed-h5 convert: error: convert needs PyAV: pip install av (or `make install`): ")
    assert result.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    return root, make_ucf_tree(root / "UCF", groups=2, clips=2, frames=4, height=12, width=16)


def test_groups_follow_ucf101_names_and_split_files_set_the_subset(ucf, tmp_path):
    root, paths = ucf  # Blue, Green, Red x g01, g02 x c01, c02
    testlist = root / "testlist.txt"
    # UCF101's testlist names group 2 of each class; one class folder spelled in another case, as in UCF101.
    testlist.write_text("Blue/v_Blue_g02_c01.avi\nBlue/v_Blue_g02_c02.avi\n\n# a comment\n"
                        "green/v_Green_g02_c01.avi\nGreen/v_Green_g02_c02.avi\n"
                        "Red/v_Red_g02_c01.avi\nRed/v_Red_g02_c02.avi\n")
    trainlist = root / "trainlist.txt"  # the complement, with UCF101's trailing class numbers
    trainlist.write_text("".join(f"{p} {1 + i // 4}\n" for i, p in enumerate(paths) if "_g01_" in p))
    outs = {}
    for name, args in (("test", ("--split-file", testlist)), ("train", ("--split-file", trainlist, "--split-side", "train"))):
        outs[name] = tmp_path / f"{name}.h5"
        result = run_cli("convert", root / "UCF", outs[name], "--frames", 4, "--size", 12, 16, *args)
        assert result.returncode == 0, result.stderr
    for out in outs.values():
        with h5py.File(out, "r") as file:
            assert [p.decode() for p in file["source_paths"][:]] == paths
            assert file["groups"][:].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # one per (class, gNN)
            assert file["subset"][:].tolist() == [0, 0, 1, 1] * 3
            assert file["subset"].attrs["values"] == "0 train, 1 validation"
    inspect = run_cli("inspect", outs["test"])
    assert "groups        dataset (12,) int64, 6 source videos" in inspect.stdout
    assert "subset        dataset (12,) uint8, train 6, validation 6" in inspect.stdout


@pytest.mark.parametrize("content, message", [
    ("", "lists no videos; expected one video path relative to SRC per line (as UCF101's testlist01.txt)"),
    ("# only a comment\n\n", "lists no videos; expected one video path relative to SRC per line (as UCF101's "
                              "testlist01.txt)"),
    ("Blue/v_Blue_g02_c01.avi\nBlue/v_Blue_g09_c01.avi\nRed/nope.avi 3\n",
     "line 2: 'Blue/v_Blue_g09_c01.avi' is not among the 12 videos found; 2 of the 3 listed entries do not match "
     "exactly one video (paths are relative to SRC)"),
    ("v_Blue_g01_c01.avi\n", ""),  # a bare file name (HMDB51's lists) that matches one video: no error
])
def test_bad_split_files_are_one_line(ucf, tmp_path, content, message):
    root, _ = ucf
    split_file = tmp_path / "list.txt"
    split_file.write_text(content)
    out = tmp_path / "out.h5"
    result = run_cli("convert", root / "UCF", out, "--frames", 4, "--size", 12, 16, "--split-file", split_file)
    if not message:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"distributed-h5 convert: error: --split-file {split_file}: {message}\n"
    assert not out.exists() and not list(tmp_path.glob("out.h5.parts-*"))  # refused before any work


def test_a_split_file_that_is_missing_or_lists_everything(ucf, tmp_path):
    root, paths = ucf
    missing = run_cli("convert", root / "UCF", tmp_path / "a.h5", "--frames", 4, "--size", 12, 16,
                      "--split-file", tmp_path / "nope.txt")
    assert missing.returncode == 2
    assert missing.stderr == (f"distributed-h5 convert: error: --split-file {tmp_path / 'nope.txt'}: cannot be read "
                              "(No such file or directory)\n")
    everything = tmp_path / "all.txt"
    everything.write_text("\n".join(paths))
    result = run_cli("convert", root / "UCF", tmp_path / "b.h5", "--frames", 4, "--size", 12, 16,
                     "--split-file", everything)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "puts all 12 videos on the validation side" in result.stderr


def small_source(tree, tmp_path):
    """SRC with one video in each of two classes, copied from ``tree``; returns SRC and the videos' bytes."""
    root, _ = tree
    source = tmp_path / "src"
    for name in ("blue", "red"):
        (source / name).mkdir(parents=True)
        shutil.copy(root / name / f"{name}_0.mp4", source / name)
    return source, {path: path.read_bytes() for path in source.rglob("*.mp4")}


@pytest.mark.parametrize("case", ["a video", "SRC itself", "inside SRC", "a symlink to a video", "the labels CSV",
                                  "a video the CSV lists", "the split file"])
def test_an_output_that_is_an_input_is_refused_before_any_work(tree, tmp_path, case):
    source, originals = small_source(tree, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nblue/blue_0.mp4,cold\nred/red_0.mp4,warm\n")
    split_file = tmp_path / "testlist.txt"
    split_file.write_text("red/red_0.mp4\n")
    extra = []
    fix = "convert would overwrite its own input; write OUT elsewhere"
    if case == "a video":
        out = source / "blue" / "blue_0.mp4"
        message = (f"output {out} lies inside SRC {source}, the folder searched for videos (the file, or its parts "
                   f"folder, would be listed next time); {fix}")
    elif case == "SRC itself":
        out, message = source, f"output {source} is SRC itself; {fix}"
    elif case == "inside SRC":
        out = source / "videos.h5"
        message = (f"output {out} lies inside SRC {source}, the folder searched for videos (the file, or its parts "
                   f"folder, would be listed next time); {fix}")
    elif case == "a symlink to a video":
        out = tmp_path / "link.h5"
        out.symlink_to(source / "red" / "red_0.mp4")
        message = (f"output {out} lies inside SRC {source}, the folder searched for videos (the file, or its parts "
                   f"folder, would be listed next time); {fix}")
    elif case == "the labels CSV":
        out, extra = labels, ["--classes-from", labels]
        message = f"output {out} is the --classes-from file {labels}; {fix}"
    elif case == "a video the CSV lists":  # SRC is only where the CSV's paths start: OUT may lie in it, not be a video
        out, extra = source / "red" / "red_0.mp4", ["--classes-from", labels]
        message = f"output {out} is the video red/red_0.mp4 listed in {labels}; {fix}"
    else:
        out, extra = split_file, ["--split-file", split_file]
        message = f"output {out} is the --split-file file {split_file}; {fix}"
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("convert", source, out, "--frames", 4, "--size", 12, 16, *extra)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"distributed-h5 convert: error: {message}\n")
    assert {path: path.read_bytes() for path in source.rglob("*.mp4")} == originals  # inputs untouched
    assert labels.read_text() == "path,label\nblue/blue_0.mp4,cold\nred/red_0.mp4,warm\n"
    assert split_file.read_text() == "red/red_0.mp4\n"
    assert sorted(tmp_path.rglob("*")) == before  # no parts, no .partial, no probe


def test_a_csv_run_may_write_inside_the_folder_its_paths_start_from(tree, tmp_path):
    source, _ = small_source(tree, tmp_path)
    labels = source / "labels.csv"
    labels.write_text("path,label\nblue/blue_0.mp4,cold\nred/red_0.mp4,warm\n")
    result = run_cli("convert", source, source / "videos.h5", "--frames", 4, "--size", 12, 16, "--classes-from", labels)
    assert result.returncode == 0, result.stderr
    assert describe(source / "videos.h5").sample_count == 2


def test_links_that_cannot_be_followed_and_names_that_are_not_utf8_are_listed_and_the_run_goes_on(tree, tmp_path):
    source, _ = small_source(tree, tmp_path)
    (source / "loop").symlink_to("loop")  # a class folder that is a link to itself
    (source / "blue" / "self.mp4").symlink_to("self.mp4")
    (source / "blue" / "gone.mp4").symlink_to("nowhere.mp4")
    shutil.copy(source / "blue" / "blue_0.mp4", os.path.join(os.fsencode(source / "blue"), b"caf\xe9.mp4"))
    latin = os.path.join(os.fsencode(source), b"\xffred")  # a class folder whose name is Latin-1, not UTF-8
    os.mkdir(latin)
    shutil.copy(source / "red" / "red_0.mp4", os.path.join(latin, b"red_1.mp4"))
    out = tmp_path / "out.h5"
    not_utf8 = "the name is not valid UTF-8 (the output stores names as UTF-8); rename it; not converted"
    loop = "that cannot be followed (Too many levels of symbolic links); not followed"
    expected = (f"converted 2 video(s) into {out}\n"
                "5 folder(s) or link(s) not searched for videos:\n"
                f"  loop: a symlink (to loop) {loop}\n"
                f"  \\xffred: {not_utf8}\n"
                f"  blue/caf\\xe9.mp4: {not_utf8}\n"
                "  blue/gone.mp4: a symlink (to nowhere.mp4) that cannot be followed (No such file or directory); "
                "not followed\n"
                f"  blue/self.mp4: a symlink (to self.mp4) {loop}\n")
    result = run_cli("convert", source, out, "--frames", 4, "--size", 12, 16)
    assert (result.returncode, result.stdout) == (0, expected), result.stderr
    with h5py.File(out, "r") as file:
        assert [p.decode() for p in file["source_paths"][:]] == ["blue/blue_0.mp4", "red/red_0.mp4"]
        assert list(file.attrs["class_names"]) == ["blue", "red"]
    assert not list(tmp_path.glob("out.h5.parts-*"))
    strict = run_cli("convert", source, tmp_path / "strict.h5", "--frames", 4, "--size", 12, 16, "--strict")
    assert (strict.returncode, strict.stdout) == (1, expected.replace(str(out), str(tmp_path / "strict.h5")))


def test_a_labels_csv_that_is_not_utf8_is_one_line(tree, tmp_path):
    source, _ = small_source(tree, tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"path,label\nblue/blue_0.mp4,cold\nred/red_0.mp4,caf\xe9\n")
    out = tmp_path / "out.h5"
    result = run_cli("convert", source, out, "--frames", 4, "--size", 12, 16, "--classes-from", labels)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 convert: error: --classes-from {labels}: line 3 is not valid UTF-8 (invalid continuation "
        "byte at byte 49); save the CSV as UTF-8\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "src"]


@contextmanager
def tmpfs(folder, size):
    """A tmpfs of ``size`` mounted on ``folder`` (root only), unmounted after."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(tree, tmp_path):
    source, _ = small_source(tree, tmp_path)
    with tmpfs(tmp_path / "small", "64k") as small:
        out = small / "out.h5"
        result = run_cli("convert", source, out, "--frames", 8, "--size", 48, 64)
        left = sorted(p.name for p in small.iterdir())
    assert result.returncode == 2  # not a crash: HDF5 never meets the full disk
    assert result.stderr.splitlines()[-1] == (
        f"distributed-h5 convert: error: output {out}: writing failed in {small} (No space left on device: "
        f"{2 * 8 * 3 * 48 * 64 + 256 * 1024 + 2 * 4096} bytes are needed to write part-000000.h5.partial); nothing "
        "was left behind")
    assert left == []
