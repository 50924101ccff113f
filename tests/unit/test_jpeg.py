"""JPEG clip storage: the layout written, exact reads against an independent decode, windows, threads, broken files."""

import io
import os
import pickle
import re
import time

import h5py
import numpy as np
import PIL.Image
import pytest
import simplejpeg
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_h5.data import jpeg
from distributed_h5.data.jpeg import JpegClips, JpegWriter, encode_clip, is_jpeg_x, validate_jpeg_x, write_jpeg_x

FRAMES, SIZE = 4, 32
MARK = 8  # frame (i, t) carries a flat 16x16 block of level MARK * (i * FRAMES + t): its own index, after JPEG


def clips(count, channels=3, frames=FRAMES, size=SIZE):
    """Gradients with a fine texture (JPEG's hard case); the top-left 16x16 block is flat at a level encoding
    (clip, frame)."""
    rows, cols = np.mgrid[0:size, 0:size]
    out = np.empty((count, frames, channels, size, size), dtype=np.uint8)
    for i in range(count):
        for t in range(frames):
            for c in range(channels):
                out[i, t, c] = 40 + 2 * rows + cols + 5 * c + 3 * t + i + 3 * ((rows * 7 + cols * 13 + 2 * c) % 5)
            out[i, t, :, :16, :16] = MARK * (i * frames + t)
    return out


def marks(batch):
    """The (clip * FRAMES + frame) index each decoded frame of (n, frames, channels, rows, cols) carries."""
    return np.rint(batch[:, :, 0, 4:12, 4:12].mean(axis=(2, 3)) / MARK).astype(np.int64)


def write(path, data, **options):
    with h5py.File(path, "w") as file:
        write_jpeg_x(file, data, data.shape, **options)
    return path


def plain_read(path, i, t):
    """Frame t of clip i through h5py and Pillow alone, as the module docstring's three lines do."""
    with h5py.File(path, "r") as file:
        x = file["X"]
        k = i * x.attrs["shape"][1] + t
        return np.asarray(PIL.Image.open(io.BytesIO(x["bytes"][x["offsets"][k] : x["offsets"][k + 1]])))


def psnr(reference, decoded):
    return 10 * np.log10(255.0**2 / np.mean((reference.astype(np.float64) - decoded) ** 2))


@pytest.fixture
def clip_file(tmp_path):
    return write(tmp_path / "clips.h5", clips(6))


# --- encoding and the layout -------------------------------------------------------------
@pytest.mark.parametrize("subsampling, expected", [("444", 37.31), ("420", 36.67)])
def test_round_trip_psnr_at_q90(tmp_path, subsampling, expected):
    data = clips(3)
    with JpegClips(write(tmp_path / "c.h5", data, subsampling=subsampling), threads=1) as reader:
        decoded = reader.read(np.arange(3))
    assert psnr(data, decoded) > 36  # a fine texture on every pixel: real frames give about 39.6 dB (4:4:4)
    assert psnr(data, decoded) == pytest.approx(expected, abs=0.01)  # measured once; libjpeg-turbo is deterministic


def test_bytes_offsets_and_attributes_are_exact(tmp_path):
    data = clips(2, frames=2, size=16)
    encoded = [frame for clip in data for frame in encode_clip(clip, 75, "420")]
    with h5py.File(tmp_path / "tiny.h5", "w") as file:
        group = write_jpeg_x(file, iter(data), data.shape, quality=75, subsampling="420")
        assert group.name == "/X" and is_jpeg_x(group) and not is_jpeg_x(file)
    with h5py.File(tmp_path / "tiny.h5", "r") as file:
        x = file["X"]
        assert dict(x.attrs) | {"shape": list(x.attrs["shape"])} == {
            "codec": "jpeg", "quality": 75, "subsampling": "420", "dtype": "uint8", "shape": [2, 2, 3, 16, 16]}
        assert x["bytes"][:].tobytes() == b"".join(encoded)
        assert x["offsets"].dtype == np.uint64
        assert x["offsets"][:].tolist() == np.cumsum([0] + [len(frame) for frame in encoded]).tolist()
        assert x["bytes"].id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
        assert validate_jpeg_x(x, probe=[0, 1]) == []
    assert [bytes(f[:2]) for f in encoded] == [b"\xff\xd8"] * 4


def test_blocks_single_clips_and_threads_write_the_same_file_contents(tmp_path):
    data = clips(5)
    with h5py.File(tmp_path / "a.h5", "w") as file:
        write_jpeg_x(file, [data[:2], data[2], data[3:]], data.shape, threads=2)
    with h5py.File(tmp_path / "b.h5", "w") as file, JpegWriter(file, data.shape[1:]) as writer:
        for clip in data:
            writer.append(clip)
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        for name in ("bytes", "offsets"):
            assert np.array_equal(a["X"][name][:], b["X"][name][:])


def test_append_encoded_copies_frames_without_re_encoding(tmp_path):
    data = clips(2)
    frames = [encode_clip(clip, 50, "444") for clip in data]
    with h5py.File(tmp_path / "c.h5", "w") as file, JpegWriter(file, data.shape[1:], samples=2) as writer:
        for clip in frames:
            writer.append_encoded(clip)
        with pytest.raises(ValueError, match=r"^clip 2 frame 0: JPEG of 16x16, 3 channel\(s\); expected 32x32, 3$"):
            writer.append_encoded(encode_clip(clips(1, size=16)[0]))
        with pytest.raises(ValueError, match="expected 4 encoded frames. Received: 3"):
            writer.append_encoded(frames[0][:3])
    with h5py.File(tmp_path / "c.h5", "r") as file:
        assert file["X/bytes"][:].tobytes() == b"".join(b"".join(clip) for clip in frames)


def test_parts_join_without_re_encoding(tmp_path):
    data = clips(5)
    write(tmp_path / "whole.h5", data)
    write(tmp_path / "part0.h5", data[:2])
    write(tmp_path / "part1.h5", data[2:])
    with h5py.File(tmp_path / "joined.h5", "w") as file, JpegWriter(file, data.shape[1:], samples=5) as writer:
        for part in ("part0.h5", "part1.h5"):
            with h5py.File(tmp_path / part, "r") as source:
                writer.append_from(source["X"])
        with h5py.File(tmp_path / "part0.h5", "r") as source, pytest.raises(
                ValueError, match=r"joined.h5: 'X' expects 5 clips; 5 \+ 2 from .*part0.h5: '/X' are more$"):
            writer.append_from(source["X"])
    with h5py.File(tmp_path / "whole.h5", "r") as whole, h5py.File(tmp_path / "joined.h5", "r") as joined:
        for name in ("bytes", "offsets"):
            assert np.array_equal(whole["X"][name][:], joined["X"][name][:])
        assert list(joined["X"].attrs["shape"]) == [5, FRAMES, 3, SIZE, SIZE]
    write(tmp_path / "other.h5", data[:1], quality=80)
    with h5py.File(tmp_path / "j.h5", "w") as file, JpegWriter(file, data.shape[1:]) as writer, \
            h5py.File(tmp_path / "other.h5", "r") as source:
        with pytest.raises(ValueError, match=r"other.h5: '/X': clips \(4, 3, 32, 32\), quality 80, subsampling '444'; "
                                             r"expected \(4, 3, 32, 32\), 90, '444' as this writer's$"):
            writer.append_from(source["X"])


def test_an_external_link_is_followed_to_the_file_holding_the_bytes(tmp_path):
    data = clips(2)
    write(tmp_path / "clips.h5", data)
    with h5py.File(tmp_path / "link.h5", "w") as file:
        file["X"] = h5py.ExternalLink("clips.h5", "/X")
    with JpegClips(tmp_path / "link.h5") as linked, JpegClips(tmp_path / "clips.h5") as direct:
        assert linked.data_path == os.fspath(tmp_path / "clips.h5")
        assert np.array_equal(linked.read(np.array([1, 0])), direct.read(np.array([1, 0])))


def test_nothing_is_written_unless_every_clip_arrived(tmp_path):
    data = clips(3)
    with h5py.File(tmp_path / "c.h5", "w") as file:
        with pytest.raises(ValueError, match=r"'X' expects 4 clips; 3 were appended"):
            write_jpeg_x(file, data, (4, *data.shape[1:]))
        with pytest.raises(RuntimeError, match="interrupted"), JpegWriter(file, data.shape[1:]) as writer:
            writer.append(data[0])
            raise RuntimeError("interrupted")
        assert "X" not in file
        with pytest.raises(ValueError, match="expects 2 clips; received more"):
            write_jpeg_x(file, data, (2, *data.shape[1:]))
        assert "X" not in file
    assert sorted(os.listdir(tmp_path)) == ["c.h5"]  # the scratch file never has a name


@pytest.mark.parametrize("options, message", [
    (dict(quality=0), r"quality must be an integer in \[1, 100\]. Received: quality=0"),
    (dict(quality=90.0), r"quality must be an integer in \[1, 100\]. Received: quality=90.0"),
    (dict(subsampling="422"), r"subsampling must be one of \('444', '420'\). Received: subsampling='422'"),
])
def test_bad_encoder_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        encode_clip(clips(1)[0], **{"quality": 90, **options})


def test_encode_clip_refuses_other_arrays():
    with pytest.raises(ValueError, match=r"clip must be a uint8 array .* Received: float32 \(4, 3, 32, 32\)"):
        encode_clip(clips(1)[0].astype(np.float32))
    with pytest.raises(ValueError, match=r"Received: uint8 \(4, 2, 32, 32\)"):
        encode_clip(clips(1, channels=2)[0])


# --- reading ---------------------------------------------------------------------------------
def test_reads_match_the_plain_h5py_pillow_read_exactly(clip_file):
    indices = np.array([5, 0, 3, 3])
    with JpegClips(clip_file, threads=2) as reader:
        batch = reader.read(indices)
    assert batch.shape == (4, FRAMES, 3, SIZE, SIZE)
    assert marks(batch).tolist() == [[i * FRAMES + t for t in range(FRAMES)] for i in indices.tolist()]
    for row, i in enumerate(indices.tolist()):
        for t in range(FRAMES):
            # Pillow's bundled libjpeg-turbo and simplejpeg's agree bit for bit (islow DCT, fancy upsampling).
            assert np.array_equal(batch[row, t], plain_read(clip_file, i, t).transpose(2, 0, 1))


@pytest.mark.parametrize("channels, subsampling", [(3, "444"), (3, "420"), (1, "444")])
def test_the_three_lines_in_the_module_docstring(tmp_path, monkeypatch, channels, subsampling):
    lines = jpeg.__doc__.split("in three lines::\n\n")[1].split("\n\n")[0].splitlines()
    assert len(lines) == 3
    monkeypatch.chdir(tmp_path)
    write("clips.h5", clips(3, channels=channels), subsampling=subsampling)
    with JpegClips("clips.h5") as reader:
        expected = reader.read(np.array([2]))[0, 1]
    namespace = dict(h5py=h5py, np=np, PIL=PIL, io=io, i=2, t=1)
    exec("\n".join(line.strip() for line in lines), namespace)
    namespace["x"].file.close()
    frame = namespace["frame"]
    assert frame.shape == ((SIZE, SIZE, 3) if channels == 3 else (SIZE, SIZE))
    assert np.array_equal(frame.reshape(SIZE, SIZE, channels).transpose(2, 0, 1), expected)


def test_a_window_reads_and_decodes_only_its_frames(clip_file, monkeypatch):
    with JpegClips(clip_file, threads=1) as reader:
        whole = reader.read(np.arange(6))
        decoded, read = [], []
        decode, preadv = jpeg.simplejpeg.decode_jpeg, os.preadv
        monkeypatch.setattr(jpeg.simplejpeg, "decode_jpeg",
                            lambda data, *a, **k: decoded.append(len(data)) or decode(data, *a, **k))
        monkeypatch.setattr(os, "preadv",
                            lambda fd, views, offset: read.append(sum(map(len, views))) or preadv(fd, views, offset))
        frames = np.array([[3, 1], [0, 1], [2, 2]])
        windows = reader.read(np.array([4, 1, 5]), frames=frames)
        sizes = [reader.offsets[k + 1] - reader.offsets[k] for k in (4 * FRAMES + 3, 4 * FRAMES + 1, FRAMES, FRAMES + 1,
                                                                      5 * FRAMES + 2, 5 * FRAMES + 2)]
    assert len(decoded) == 6 and sorted(decoded) == sorted(sizes)
    assert sum(read) == sum(sizes)  # frames 0 and 1 of clip 1 are adjacent: one read; nothing else is read
    assert len(read) == 5
    for row, clip in enumerate([4, 1, 5]):
        assert np.array_equal(windows[row], whole[clip, frames[row]])


@pytest.fixture(scope="module")
def shared_file(tmp_path_factory):
    """Six clips and every frame decoded alone from its bytes: the reference for any read."""
    path = write(tmp_path_factory.mktemp("jpeg") / "clips.h5", clips(6))
    with h5py.File(path, "r") as file:
        data, offsets = file["X/bytes"][:], file["X/offsets"][:].astype(np.int64)
    frames = [simplejpeg.decode_jpeg(data[offsets[k] : offsets[k + 1]], "RGB").transpose(2, 0, 1)
              for k in range(6 * FRAMES)]
    return path, np.stack(frames).reshape(6, FRAMES, 3, SIZE, SIZE)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_clips_and_windows_read_as_their_frames_decoded_alone(shared_file, data):
    path, reference = shared_file
    count = data.draw(st.integers(1, 9))
    indices = np.array(data.draw(st.lists(st.integers(0, 5), min_size=count, max_size=count)))
    width = data.draw(st.integers(1, FRAMES + 2))
    frames = np.array(data.draw(st.lists(st.lists(st.integers(0, FRAMES - 1), min_size=width, max_size=width),
                                         min_size=count, max_size=count)))
    with JpegClips(path, threads=data.draw(st.integers(1, 4))) as reader:
        assert np.array_equal(reader.read(indices, frames=frames), reference[indices[:, None], frames])


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_threads_give_the_one_thread_result(clip_file, threads):
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 6, 11)
    frames = rng.integers(0, FRAMES, (11, 3))
    with JpegClips(clip_file, threads=1) as one, JpegClips(clip_file, threads=threads) as many:
        assert np.array_equal(one.read(indices), many.read(indices))
        assert np.array_equal(one.read(indices, frames=frames), many.read(indices, frames=frames))
        out = np.full((1, FRAMES, 3, SIZE, SIZE), 7, dtype=np.uint8)
        assert many.read(np.array([2]), out) is out and np.array_equal(out, one.read(np.array([2])))


def test_a_thread_held_up_leaves_the_other_clips_to_the_others(clip_file, monkeypatch):
    # Clips are taken one at a time: a thread stalled on its first clip (a busy core) does not
    # hold a fixed half of the batch; before, each thread had a fixed contiguous share.
    taken, decode_share = [], JpegClips._decode_share

    def slow_first(self, worker, keys, begin, end, flat):
        taken.append((worker, begin))
        if len(taken) == 1:
            time.sleep(0.5)
        decode_share(self, worker, keys, begin, end, flat)

    monkeypatch.setattr(JpegClips, "_decode_share", slow_first)
    with JpegClips(clip_file, threads=2) as reader:
        batch = reader.read(np.arange(6))
    stalled = taken[0][0]
    assert [worker for worker, _ in taken].count(stalled) == 1
    assert sorted(begin for _, begin in taken) == [row * FRAMES for row in range(6)]
    assert marks(batch).tolist() == [[i * FRAMES + t for t in range(FRAMES)] for i in range(6)]


def test_reader_reports_the_layout(clip_file):
    with JpegClips(clip_file) as reader:
        layout = (reader.samples, reader.clip_shape, reader.quality, reader.subsampling)
        assert layout == (6, (FRAMES, 3, SIZE, SIZE), 90, "444")
        assert reader.data_path == os.fspath(clip_file)
        assert reader.clip_bytes(2) == reader.offsets[3 * FRAMES] - reader.offsets[2 * FRAMES]
        with pytest.raises(TypeError, match="open one per process"):
            pickle.dumps(reader)


def test_bad_read_arguments_are_refused(clip_file):
    with JpegClips(clip_file, threads=1) as reader:
        with pytest.raises(ValueError, match=r"indices must be in \[0, 6\). Received: min 0, max 6"):
            reader.read(np.array([0, 6]))
        with pytest.raises(ValueError, match=r"frames must be in \[0, 4\). Received: min 0, max 4"):
            reader.read(np.array([0]), frames=np.array([[0, 4]]))
        with pytest.raises(ValueError, match=r"frames must be None or an integer array .* Received: shape \(2,\)"):
            reader.read(np.array([0]), frames=np.array([0, 1]))
        with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(1, 4, 3, 32, 32\)"):
            reader.read(np.array([0]), np.empty((1, 4, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=r"threads must be an integer >= 1. Received: threads=0"):
        JpegClips(clip_file, threads=0)


# --- broken files ------------------------------------------------------------------------------
def corrupt(path, clip, frame, at, data):
    with h5py.File(path, "r+") as file:
        start = int(file["X/offsets"][clip * FRAMES + frame])
        file["X/bytes"][start + at : start + at + len(data)] = np.frombuffer(data, np.uint8)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_corrupt_frame_is_named_by_clip_and_frame_in_one_line(clip_file, threads):
    corrupt(clip_file, 2, 1, 0, b"\0\0")  # no JPEG start marker
    with JpegClips(clip_file, threads=threads) as reader:
        reader.read(np.array([0, 1, 3]))  # the other clips still read
        with pytest.raises(ValueError) as error:
            reader.read(np.array([1, 2]))
    message = str(error.value)
    assert re.fullmatch(rf"{re.escape(os.fspath(clip_file))}: clip 2 frame 1 of 'X' does not decode as JPEG "
                        r"\(corrupt\?\): .+", message)
    assert "\n" not in message and isinstance(error.value.__cause__, ValueError)
    with h5py.File(clip_file, "r") as file:
        assert validate_jpeg_x(file["X"]) == []  # the layout is sound; only decoding finds it
        problems = validate_jpeg_x(file["X"], probe=[0, 2])
    assert len(problems) == 1 and problems[0].startswith("clip 2 frame 1 does not decode as JPEG (corrupt?): ")


def test_a_truncated_frame_is_named(clip_file):
    with h5py.File(clip_file, "r") as file:
        end = int(file["X/offsets"][3 * FRAMES + 1]) - int(file["X/offsets"][3 * FRAMES])
    corrupt(clip_file, 3, 0, end - 2, b"\0\0")  # the end-of-image marker overwritten
    message = r": clip 3 frame 0 of 'X' does not decode as JPEG \(corrupt\?\): Premature end of JPEG file$"
    with JpegClips(clip_file) as reader, pytest.raises(ValueError, match=message):
        reader.read(np.array([3]))


@pytest.mark.parametrize("cols", [16, 64])
def test_a_frame_of_another_size_is_named(tmp_path, cols):
    path = write(tmp_path / "c.h5", clips(2))
    with h5py.File(path, "r+") as file:
        file["X"].attrs["shape"] = np.array([2, FRAMES, 3, SIZE, cols])
    message = (r"c.h5: clip 1 frame 0 of 'X' is a JPEG of \(rows, cols, channels\) \(32, 32, 3\), "
               rf"expected \(32, {cols}, 3\)$")
    with JpegClips(path) as reader, pytest.raises(ValueError, match=message):
        reader.read(np.array([1]))


def edit(path, change):
    with h5py.File(path, "r+") as file:
        change(file["X"])
    with h5py.File(path, "r") as file:
        return validate_jpeg_x(file["X"])


def test_validate_names_what_is_broken(tmp_path):
    def fresh():
        return write(tmp_path / "c.h5", clips(3))

    def set_offset(key, value):
        def change(x):
            x["offsets"][key] = value
        return change

    def replace(name, **options):
        def change(x):
            options.setdefault("data", x[name][:])
            del x[name]
            x.create_dataset(name, **options)
        return change

    with h5py.File(fresh(), "r") as file:
        offsets = file["X/offsets"][:].astype(np.int64)
    assert edit(fresh(), set_offset(6, offsets[5])) == [
        f"clip 1 frame 1 has 0 bytes (offsets[5] = {offsets[5]}, offsets[6] = {offsets[5]}); "
        "expected > 0: 'offsets' must strictly increase"]
    assert edit(fresh(), set_offset(11, 10**9)) == [
        f"clip 2 frame 3 has {offsets[12] - 10**9} bytes (offsets[11] = {10**9}, offsets[12] = {offsets[12]}); "
        "expected > 0: 'offsets' must strictly increase"]
    assert edit(fresh(), set_offset(0, 5)) == ["'offsets' starts at 5, expected 0"]
    assert edit(fresh(), set_offset(12, offsets[12] - 1)) == [
        f"'offsets' ends at {offsets[12] - 1} but 'bytes' has {offsets[12]} bytes; expected them equal"]
    assert edit(fresh(), replace("bytes", chunks=(64,))) == [
        "'bytes' is not contiguous in the file (chunked, filtered or external); expected one contiguous dataset so "
        "frames can be read at their offsets"]
    assert edit(fresh(), replace("offsets", data=offsets[:-1])) == [
        "'offsets' has 12 entries, expected samples * frames + 1 = 13"]
    assert edit(fresh(), lambda x: x.attrs.__delitem__("quality")) == ["attribute 'quality' is missing"]
    assert edit(fresh(), lambda x: x.attrs.__setitem__("subsampling", "411")) == [
        "attribute subsampling is '411', expected one of ('444', '420')"]
    assert edit(fresh(), lambda x: x.attrs.__setitem__("shape", np.array([3, 4, 2, 32, 32]))) == [
        "attribute shape is array([ 3,  4,  2, 32, 32]), expected 5 integers (samples, frames, channels, rows, cols), "
        "all >= 1 but samples >= 0, with 1 or 3 channels"]
    assert edit(fresh(), lambda x: x.__delitem__("bytes")) == ["'bytes' is missing, expected a 1-D dataset"]


def test_the_reader_refuses_a_broken_layout_in_one_line(tmp_path):
    path = write(tmp_path / "c.h5", clips(3))
    with h5py.File(path, "r+") as file:
        file["X/offsets"][12] = 1
    message = rf"^{re.escape(os.fspath(path))}: 'X': clip 2 frame 3 has -\d+ bytes .*increase$"
    with pytest.raises(ValueError, match=message):
        JpegClips(path)
    with h5py.File(tmp_path / "raw.h5", "w") as file:
        file.create_dataset("X", data=clips(1))
    with pytest.raises(ValueError, match=r"raw.h5: 'X' is not a JPEG-clip group \(attribute codec='jpeg'\)$"):
        JpegClips(tmp_path / "raw.h5")


def test_one_channel_decodes_straight_into_out(tmp_path):
    data = clips(2, channels=1)
    with JpegClips(write(tmp_path / "g.h5", data), threads=2) as reader:
        decoded = reader.read(np.array([1, 0]))
    assert decoded.shape == (2, FRAMES, 1, SIZE, SIZE)
    assert marks(decoded).tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert np.array_equal(decoded[0, 2, 0], simplejpeg.decode_jpeg(encode_clip(data[1])[2], "GRAY")[:, :, 0])


def test_a_batch_s_frames_are_asked_of_the_disk_before_any_is_read(clip_file, request):
    """From a cold page cache every read of the batch is queued at once (POSIX_FADV_WILLNEED on
    each run of adjacent frames), not one per thread: the spans asked are exactly those read."""
    with JpegClips(clip_file, threads=2) as reader:
        events = request.getfixturevalue("disk_events")  # from here on: not the open's reads
        reader.read(np.array([4, 1, 5]), frames=np.array([[3, 1], [0, 1], [2, 2]]))
        base = reader._base
        spans = [(base + int(reader.offsets[first]), int(reader.offsets[last + 1] - reader.offsets[first]))
                 for first, last in [(4 * FRAMES + 3,) * 2, (4 * FRAMES + 1,) * 2, (FRAMES, FRAMES + 1),
                                     (5 * FRAMES + 2,) * 2, (5 * FRAMES + 2,) * 2]]
    kinds = [kind for kind, *_ in events]
    assert kinds == ["advise"] * 5 + ["read"] * 5
    assert [event[1:] for event in events[:5]] == [(*span, os.POSIX_FADV_WILLNEED) for span in spans]
    assert sorted(event[1:3] for event in events[5:]) == sorted(spans)
