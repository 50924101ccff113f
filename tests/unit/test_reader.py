"""The batch read path: every layout gives the same, aligned clips and labels."""

import hashlib

import h5py
import hdf5plugin
import numpy as np
import pytest

from distributed_h5 import DatasetError
from distributed_h5.reader import BatchReader
from distributed_h5.synthetic import clip_index

EXPECTED_METHOD = {"contiguous": "pread", "clip-chunks": "pread", "gzip": "pread+inflate", "lzf": "hdf5",
                   "zstd": "pread+zstd"}
BATCHES = [
    [0, 1, 2, 3],  # one run on disk
    [5, 9, 10, 11, 40, 196],  # runs and singletons, up to the last sample in use
    [7, 7, 8],  # a duplicate, as padding can produce
    [150, 3, 77],  # unsorted still reads right
]


@pytest.mark.parametrize("layout", sorted(EXPECTED_METHOD))
@pytest.mark.parametrize("threads", [1, 3])
def test_clips_and_labels_are_aligned(files, layout, threads):
    with h5py.File(files[layout], "r", locking=False) as file:
        truth_x, truth_y = file["X"][:], file["Y"][:].astype(np.float32)
    with BatchReader(files[layout], threads=threads) as reader:
        assert reader.method == EXPECTED_METHOD[layout]
        for batch in BATCHES:
            x, y = reader.read(np.array(batch))
            assert clip_index(x).tolist() == batch
            np.testing.assert_array_equal(x, truth_x[batch])
            np.testing.assert_array_equal(y, truth_y[batch])
            assert x.dtype == np.uint8 and y.dtype == np.float32


def write_layout(path, data, **kwargs):
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=data, **kwargs)
        file.create_dataset("Y", data=np.eye(2, dtype="u1")[np.arange(len(data)) % 2])
        file.attrs["sample_count"] = len(data)
    return path


@pytest.mark.parametrize(
    "kwargs, method",
    [
        (dict(chunks=(3, 2, 1, 4, 5)), "pread"),  # several clips per chunk, a partial last chunk
        (dict(chunks=(1, 1, 1, 4, 5)), "hdf5"),  # chunks smaller than a clip
        (dict(chunks=(1, 2, 1, 4, 5), compression="gzip", shuffle=True), "pread+inflate"),
        (dict(chunks=(1, 2, 1, 4, 5), shuffle=True, **hdf5plugin.Zstd(clevel=3)), "pread+zstd"),
        (dict(chunks=(2, 2, 1, 4, 5), compression="gzip"), "hdf5"),
        (dict(chunks=(1, 2, 1, 4, 5), fletcher32=True), "hdf5"),
    ],
)
def test_other_layouts_and_dtypes(tmp_path, kwargs, method):
    data = np.arange(10 * 2 * 1 * 4 * 5, dtype=">i2").reshape(10, 2, 1, 4, 5)  # big-endian 16-bit
    path = write_layout(tmp_path / "layout.h5", data, **kwargs)
    with BatchReader(path, threads=2) as reader:
        assert reader.method == method
        x, y = reader.read(np.array([0, 2, 3, 4, 9]))
    np.testing.assert_array_equal(x, data[[0, 2, 3, 4, 9]])
    assert y.argmax(1).tolist() == [0, 0, 1, 0, 1]


def test_user_block_offsets(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (6, 2, 1, 3, 3), dtype=np.uint8)
    path = tmp_path / "userblock.h5"
    with h5py.File(path, "w", userblock_size=512) as file:
        file.create_dataset("X", data=data)
        file.create_dataset("Y", data=np.eye(6))
        file.attrs["sample_count"] = 6
    with BatchReader(path) as reader:
        np.testing.assert_array_equal(reader.read(np.array([1, 2, 5]))[0], data[[1, 2, 5]])


def test_out_buffer_is_filled_in_place(files):
    with BatchReader(files["contiguous"]) as reader:
        out = np.zeros((3, 8, 3, 16, 16), dtype=np.uint8)
        x, _ = reader.read(np.array([4, 5, 100]), out=out)
        assert x is out and clip_index(out).tolist() == [4, 5, 100]
        with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(2, 8, 3, 16, 16\)"):
            reader.read(np.array([1, 2]), out=out)


@pytest.mark.parametrize("batch, message", [
    ([197], r"indices must be in \[0, 197\). Received: min 197, max 197"),
    ([-1, 3], r"Received: min -1"),
    ([], "indices must be a non-empty 1-D array"),
])
def test_indices_outside_sample_count_are_refused(files, batch, message):
    with BatchReader(files["clip-chunks"]) as reader, pytest.raises(ValueError, match=message):
        reader.read(np.array(batch, dtype=np.int64))


def test_reading_leaves_the_file_unchanged(files):
    before = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    for path in files.values():
        with BatchReader(path) as reader:
            reader.read(np.arange(0, 197, 3))
    assert {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()} == before


def test_truncated_data_is_a_dataset_error(tmp_path, files):
    path = tmp_path / "cut.h5"
    data = files["contiguous"].read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    with pytest.raises(DatasetError, match="truncated"):
        BatchReader(path)


def test_corrupt_chunk_is_a_dataset_error(tmp_path, files):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(files["gzip"].read_bytes())
    with h5py.File(path, "r", locking=False) as file:
        info = file["X"].id.get_chunk_info_by_coord((5, 0, 0, 0, 0))
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\xff" * 16)
    with BatchReader(path) as reader:
        reader.read(np.array([4]))
        with pytest.raises(DatasetError, match="chunk 5 of 'X' does not inflate"):
            reader.read(np.array([4, 5]))


def test_reader_cannot_be_pickled(files):
    import pickle

    with BatchReader(files["contiguous"]) as reader, pytest.raises(TypeError, match="open one per process"):
        pickle.dumps(reader)


def test_reader_cannot_be_pickled_and_says_which(files):
    import pickle

    with BatchReader(files["contiguous"]) as reader:
        with pytest.raises(TypeError) as raised:
            pickle.dumps(reader)
    assert str(raised.value) == "BatchReader holds an open file and cannot be pickled; open one per process"
    assert reader._fd is None and reader._pool is None  # closed by the with


def test_pread_full_retries_short_reads_and_stops_at_the_end(tmp_path, monkeypatch):
    import os

    from distributed_h5.data.preads import pread_full

    path = tmp_path / "bytes"
    path.write_bytes(bytes(range(10)))
    real_preadv = os.preadv
    calls = []

    def three_at_a_time(fd, buffers, offset):
        calls.append(offset)
        return real_preadv(fd, [buffers[0][:3]], offset)

    monkeypatch.setattr(os, "preadv", three_at_a_time)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = bytearray(8)
        assert pread_full(fd, memoryview(whole), 1) == 8
        assert whole == bytes(range(1, 9)) and calls == [1, 4, 7]
        past_the_end = bytearray(6)
        assert pread_full(fd, memoryview(past_the_end), 7) == 3  # bytes 7, 8, 9, then the end
        assert past_the_end == bytes([7, 8, 9, 0, 0, 0])
    finally:
        os.close(fd)


def test_bad_threads(files):
    with pytest.raises(ValueError, match="threads must be an integer >= 1. Received: threads=0"):
        BatchReader(files["contiguous"], threads=0)


def linked_copy(tmp_path, source, layout):
    """main.h5 whose X is an external link to data.h5's X, over stale bytes of an older X at the same offsets.

    main.h5 starts as a copy of data.h5; its own X is changed for every clip but 0 and then
    unlinked (HDF5 keeps the bytes), and X becomes a link to data.h5. A reader that takes
    offsets from data.h5 but reads main.h5 gets clip 0 right and every other clip stale.
    """
    data, main = tmp_path / f"data-{layout}.h5", tmp_path / f"main-{layout}.h5"
    data.write_bytes(source.read_bytes())
    main.write_bytes(source.read_bytes())
    with h5py.File(main, "r+") as file:
        file["X"][1:] = 255 - file["X"][1:]
        file.create_dataset("after", data=np.zeros(4096, dtype="u1"))  # so X's old bytes are not at the end
        del file["X"]
        file["X"] = h5py.ExternalLink(data.name, "/X")
    return data, main


@pytest.mark.parametrize("layout", ["contiguous", "clip-chunks", "gzip"])
def test_external_link_reads_the_file_that_holds_x(tmp_path, files, layout):
    data, main = linked_copy(tmp_path, files[layout], layout)
    with h5py.File(data, "r", locking=False) as file:
        truth = file["X"][:197]
    with BatchReader(main, threads=2) as reader:
        assert reader.method == EXPECTED_METHOD[layout]  # the fast path is kept, on the right file
        assert reader.data_path == str(data)
        x, _ = reader.read(np.arange(197))
    np.testing.assert_array_equal(x, truth)
    assert clip_index(x).tolist() == list(range(197))


def test_probe_covers_first_last_and_spread_clips():
    from distributed_h5.dataset import probe_indices

    assert probe_indices(197).tolist() == [0, 28, 56, 84, 112, 140, 168, 196]
    assert probe_indices(3).tolist() == [0, 1, 2]
    assert probe_indices(1).tolist() == [0]


def test_external_link_to_a_missing_file_is_one_dataset_error(tmp_path, files):
    path = tmp_path / "dangling.h5"
    with h5py.File(path, "w") as file:
        file["X"] = h5py.ExternalLink("gone.h5", "/X")
        file.create_dataset("Y", data=np.eye(2, dtype="u1"))
        file.attrs["sample_count"] = 2
    with pytest.raises(DatasetError) as caught:
        BatchReader(path)
    assert str(caught.value) == (f"{path}: 'X' is an external link to '/X' in gone.h5, which cannot be opened "
                                 f"(no such file); relative targets are looked for next to {path}")


def test_external_link_to_a_missing_dataset(tmp_path, files):
    path = tmp_path / "wrong-name.h5"
    with h5py.File(path, "w") as file:
        file["X"] = h5py.ExternalLink(str(files["contiguous"]), "/clips")
        file.create_dataset("Y", data=np.eye(2, dtype="u1"))
        file.attrs["sample_count"] = 2
    with pytest.raises(DatasetError, match=f"'X' is an external link to '/clips' in {files['contiguous']}, which "
                                           f"cannot be opened \\({files['contiguous']} has no object '/clips'"):
        BatchReader(path)


def test_x_and_y_both_external_links(tmp_path, files):
    path = tmp_path / "links-only.h5"
    with h5py.File(path, "w") as file:
        file["X"] = h5py.ExternalLink(str(files["gzip"]), "/X")
        file["Y"] = h5py.ExternalLink(str(files["gzip"]), "/Y")
        file.attrs["sample_count"] = 197
    with h5py.File(files["gzip"], "r", locking=False) as file:
        truth_y = file["Y"][:197].astype(np.float32)
    with BatchReader(path) as reader:
        assert (reader.method, reader.data_path) == ("pread+inflate", str(files["gzip"]))
        x, y = reader.read(np.arange(197))
    assert clip_index(x).tolist() == list(range(197))
    np.testing.assert_array_equal(y, truth_y)


def nan_message(path, index, count, clips=1):
    more = f" ({clips} clips of this batch do)" if clips > 1 else ""
    return (f"{path}: clip {index} of dataset 'X' has {count} non-finite value(s) (NaN or infinity){more}; training "
            "on it would make the loss NaN. Rewrite the clips that hold them with finite values (`distributed-h5 "
            "inspect --verify` reads every clip and names the first), or drop them from the file")


def float_clips():
    """12 float32 clips (3 frames): clip 4 holds two infinities in frame 2, clip 7 one NaN in frame 1.
    Neither is among the clips probed at open (0, 2, 3, 5, 6, 8, 9, 11)."""
    data = np.arange(12 * 3 * 1 * 4 * 5, dtype="f4").reshape(12, 3, 1, 4, 5)
    data[4, 2, 0, 1, :2] = [np.inf, -np.inf]
    data[7, 1, 0, 3, 3] = np.nan
    return data


@pytest.mark.parametrize("kwargs, method", [
    (dict(), "pread"),
    (dict(chunks=(1, 3, 1, 4, 5)), "pread"),
    (dict(chunks=(1, 3, 1, 4, 5), compression="gzip", shuffle=True), "pread+inflate"),
    (dict(chunks=(1, 3, 1, 4, 5), compression="lzf"), "hdf5"),
])
def test_non_finite_float_clips_are_refused_by_every_read(tmp_path, kwargs, method):
    data = float_clips()
    path = write_layout(tmp_path / "nan.h5", data, **kwargs)
    with BatchReader(path, threads=2) as reader:
        assert reader.method == method
        np.testing.assert_array_equal(reader.read(np.array([0, 1, 2, 3, 5]))[0], data[[0, 1, 2, 3, 5]])
        with pytest.raises(DatasetError) as caught:
            reader.read(np.array([3, 7, 8]))
        assert str(caught.value) == nan_message(path, 7, 1)
        with pytest.raises(DatasetError) as caught:
            reader.read(np.array([4, 7, 7]))
        assert str(caught.value) == nan_message(path, 4, 2, clips=2)
        # Windows (the augmentation's read) are checked as read: only the frames taken count.
        with pytest.raises(DatasetError) as caught:
            reader.read_windows(np.array([2, 7]), np.array([0, 1]), frames=2)
        assert str(caught.value) == nan_message(path, 7, 1)
        with pytest.raises(DatasetError) as caught:
            reader.read_windows(np.array([4]), np.array([0]), frames=2, stride=2)
        assert str(caught.value) == nan_message(path, 4, 2)
        window, _ = reader.read_windows(np.array([4, 7]), np.array([0, 2]), frames=1)
        np.testing.assert_array_equal(window, data[[4, 7]][np.arange(2), [0, 2]][:, None])


def test_a_non_finite_probe_clip_is_refused_at_open(tmp_path):
    from distributed_h5 import describe

    data = float_clips()
    data[11, 0, 0, 0, 0] = np.nan  # the last clip in use: probed at open
    path = write_layout(tmp_path / "nan.h5", data)
    with pytest.raises(DatasetError) as caught:
        BatchReader(path)
    assert str(caught.value) == nan_message(path, 11, 1)
    with pytest.raises(DatasetError) as caught:
        describe(path, clips=True)
    assert str(caught.value) == nan_message(path, 11, 1)


def test_integer_clips_need_no_finite_check(tmp_path):
    data = np.arange(12 * 3 * 1 * 4 * 5, dtype="i4").reshape(12, 3, 1, 4, 5)
    path = write_layout(tmp_path / "int.h5", data)
    with BatchReader(path) as reader:
        np.testing.assert_array_equal(reader.read(np.arange(12))[0], data)


@pytest.mark.parametrize("kwargs, method", [
    (dict(), "pread"),
    (dict(chunks=(2, 4, 1, 3, 5)), "pread"),
    (dict(chunks=(1, 4, 1, 3, 5), compression="gzip", shuffle=True), "pread+inflate"),
    (dict(chunks=(1, 4, 1, 3, 5), compression="lzf"), "hdf5"),
])
def test_big_endian_clips_are_read_as_native_values(tmp_path, kwargs, method):
    data = (np.arange(10 * 4 * 1 * 3 * 5, dtype=np.float32) / 7).reshape(10, 4, 1, 3, 5)
    path = write_layout(tmp_path / "big.h5", data.astype(">f4"), **kwargs)
    with BatchReader(path, threads=2) as reader:
        assert reader.method == method and reader.info.dtype == np.dtype("float32") and reader.info.dtype.isnative
        x, _ = reader.read(np.array([0, 3, 4, 9]))
        assert x.dtype == np.dtype("float32") and x.dtype.isnative  # what TensorFlow takes ('>f4' it refuses)
        np.testing.assert_array_equal(x, data[[0, 3, 4, 9]])
        windows, _ = reader.read_windows(np.array([1, 6]), np.array([0, 1]), frames=2, stride=2)
        np.testing.assert_array_equal(windows, np.stack([data[1, 0:4:2], data[6, 1:4:2]]))
        whole, _ = reader.read_windows(np.array([2, 5]), np.array([0, 0]), frames=4)
        np.testing.assert_array_equal(whole, data[[2, 5]])


def test_a_corrupt_zstd_chunk_is_one_line_naming_it(files, tmp_path):
    broken = tmp_path / "zstd.h5"
    broken.write_bytes(files["zstd"].read_bytes())
    with h5py.File(broken, "r") as file:
        chunk = file["X"].id.get_chunk_info_by_coord((50, 0, 0, 0, 0))  # clip 50 is not among the probed clips
    with open(broken, "r+b") as handle:
        handle.seek(chunk.byte_offset)
        handle.write(b"\xff" * chunk.size)
    with BatchReader(broken, threads=2) as reader:
        assert reader.method == "pread+zstd"
        with pytest.raises(DatasetError) as failed:
            reader.read(np.array([49, 50]))
    assert str(failed.value).startswith(f"{broken}: chunk 50 of 'X' does not decompress (zstd) (corrupt?): ")


@pytest.mark.parametrize("layout", ["contiguous", "zstd"])
def test_a_batch_is_asked_of_the_disk_before_any_of_it_is_read(files, layout, request):
    """From a cold page cache every read of the batch is queued at once (POSIX_FADV_WILLNEED on each
    run of adjacent clips, or each compressed chunk), not one per reader thread."""
    import os

    batch = np.array([5, 9, 10, 11, 40, 196])
    with BatchReader(files[layout], threads=3) as reader:
        events = request.getfixturevalue("disk_events")  # from here on: not the open's reads
        x, _ = reader.read(batch)
        assert clip_index(x).tolist() == batch.tolist()
        if layout == "contiguous":  # runs [5], [9, 10, 11], [40], [196]
            clip = reader.info.clip_bytes
            spans = [(int(reader._file_offsets(np.array([first]))[0]), count * clip)
                     for first, count in [(5, 1), (9, 3), (40, 1), (196, 1)]]
        else:
            spans = [(int(reader._chunk_offsets[i]), int(reader._chunk_sizes[i])) for i in batch]
    advised = [event for event in events if event[0] == "advise"]
    assert events[: len(advised)] == advised  # every span asked before the first read
    assert [event[1:] for event in advised] == [(*span, os.POSIX_FADV_WILLNEED) for span in spans]
    reads = sorted(event[1:3] for event in events[len(advised):])
    assert sum(size for _, size in reads) == sum(size for _, size in spans)
    assert all(any(o <= offset and offset + size <= o + s for o, s in spans) for offset, size in reads)


def test_a_span_longer_than_the_readahead_window_is_announced_whole(tmp_path):
    """Linux reads ahead at most one readahead window per WILLNEED call and drops the rest
    (here 8 MiB of a 32 MiB span in one call): advise calls once per window, and the kernel
    then has every page of the span (util-linux's fincore counts them)."""
    import os
    import subprocess
    import time

    from distributed_h5.data.preads import advise, readahead_bytes

    path = tmp_path / "span.bin"
    size = 32 << 20
    with open(path, "wb") as handle:
        handle.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
        handle.flush()
        os.fsync(handle.fileno())  # dirty pages would stay cached through the eviction
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        def resident() -> int:
            return int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                                      capture_output=True, text=True, check=True).stdout)

        assert resident() == 0
        advise(fd, [(0, size)], readahead_bytes(fd))
        deadline = time.monotonic() + 30
        while resident() < size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resident() == size
    finally:
        os.close(fd)


def test_the_reader_announces_a_run_in_pieces_of_the_readahead_window(files, disk_events):
    """A run of 100 adjacent clips (614,400 bytes) is announced in windows that tile it exactly."""
    import os

    from distributed_h5.data.preads import READAHEAD_BYTES, readahead_bytes

    with BatchReader(files["contiguous"], threads=2) as reader:
        assert readahead_bytes(reader._fd) % 4096 == 0 and readahead_bytes(reader._fd) >= 4096
        reader._readahead = 100_000  # a window shorter than the run
        opened = len(disk_events)  # the open's probe reads a few clips
        reader.read(np.arange(20, 120))
        start = int(reader._file_offsets(np.array([20]))[0])
    advised = [event[1:] for event in disk_events[opened:] if event[0] == "advise"]
    assert advised == [(start + k * 100_000, 100_000, os.POSIX_FADV_WILLNEED) for k in range(6)] + [
        (start + 600_000, 14_400, os.POSIX_FADV_WILLNEED)]
    assert READAHEAD_BYTES == 128 << 10


def test_the_readahead_window_is_linux_s_default_where_sysfs_does_not_say():
    import os

    from distributed_h5.data.preads import readahead_bytes

    read, write = os.pipe()  # a pipe has no backing device
    try:
        assert readahead_bytes(read) == 128 << 10
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.parametrize("layout", ["gzip", "zstd"])
def test_compressed_chunks_are_read_into_one_buffer_per_thread_not_a_fresh_one_each(files, layout):
    with BatchReader(files[layout], threads=1) as reader:  # one thread: the caller's
        assert reader.method in ("pread+inflate", "pread+zstd")
        x, _ = reader.read(np.array([3, 4, 90]))
        buffer = reader._local.buffer
        x2, _ = reader.read(np.array([7, 150, 196]))
        assert reader._local.buffer is buffer and len(buffer) >= max(reader._chunk_sizes[[3, 4, 90, 7, 150, 196]])
        assert clip_index(x).tolist() == [3, 4, 90] and clip_index(x2).tolist() == [7, 150, 196]
