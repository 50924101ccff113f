"""Opening and validating files: every malformed input gets a DatasetError, and no file changes."""

import hashlib
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from distributed_h5 import DatasetError, describe
from distributed_h5.dataset import open_file, read_labels


def write(path, x_shape=(6, 2, 1, 4, 4), y_shape=(6, 3), sample_count=6, x_dtype="u1", y=None, **extra):
    with h5py.File(path, "w") as file:
        if x_shape is not None:
            file.create_dataset("X", shape=x_shape, dtype=x_dtype)
        if y is not None:
            file.create_dataset("Y", data=y)
        elif y_shape is not None:
            file.create_dataset("Y", shape=y_shape, dtype="u1")
        if sample_count is not None:
            file.attrs["sample_count"] = sample_count
        for key, value in extra.items():
            file.attrs[key] = value
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_describe_reports_the_layout(files):
    info = describe(files["gzip"])
    assert (info.sample_count, info.rows, info.clip_shape, info.classes) == (197, 203, (8, 3, 16, 16), 5)
    assert (info.dtype, info.chunks, info.compression) == (np.uint8, (1, 8, 3, 16, 16), "gzip")
    assert describe(files["contiguous"]).chunks is None


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path}/nope.h5: no such file"):
        describe(tmp_path / "nope.h5")


def test_directory(tmp_path):
    with pytest.raises(DatasetError, match="is a directory, expected an HDF5 file"):
        describe(tmp_path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="cannot be opened as HDF5") as caught:
        describe(path)
    assert isinstance(caught.value.__cause__, OSError)


def test_truncated(tmp_path, files):
    path = tmp_path / "truncated.h5"
    path.write_bytes(files["contiguous"].read_bytes()[:5000])
    with pytest.raises(DatasetError, match="truncated"):
        describe(path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x_shape=None), "dataset 'X' is missing; expected datasets 'X' and 'Y'"),
        (dict(y_shape=None), "dataset 'Y' is missing"),
        (dict(x_shape=(6, 2, 4, 4)), r"dataset 'X' has shape \(6, 2, 4, 4\), expected 5 dimensions"),
        (dict(y_shape=(6, 3, 1)), r"dataset 'Y' has shape \(6, 3, 1\), expected 2 dimensions"),
        (dict(y_shape=(5, 3)), "'X' has 6 rows but 'Y' has 5; expected equal row counts"),
        (dict(x_dtype="S4"), "dataset 'X' has dtype |S4, expected a numeric dtype"),
        (dict(sample_count=None), "root attribute 'sample_count' is missing"),
        (dict(sample_count=2.5), "attribute 'sample_count' is 2.5 .*expected an integer"),
        (dict(sample_count="6"), "attribute 'sample_count' is '6'"),
        (dict(sample_count=0), r"attribute 'sample_count' is 0, expected an integer in \[1, 6\]"),
        (dict(sample_count=7), r"attribute 'sample_count' is 7, expected an integer in \[1, 6\]"),
    ],
)
def test_malformed_layouts(tmp_path, kwargs, message):
    path = write(tmp_path / "bad.h5", **kwargs)
    before = digest(path)
    with pytest.raises(DatasetError, match=message) as caught:
        describe(path)
    assert str(path) in str(caught.value)
    assert digest(path) == before


def test_x_that_is_a_group(tmp_path):
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as file:
        file.create_group("X")
        file.create_dataset("Y", data=np.eye(2))
        file.attrs["sample_count"] = 2
    with pytest.raises(DatasetError, match="'X' is a Group, expected a dataset"):
        describe(path)


def test_labels_must_be_one_hot(tmp_path):
    y = np.eye(3, dtype="f4")[[0, 1, 2, 0, 1, 2]]
    y[4] = [0, 0.5, 0.5]
    path = write(tmp_path / "soft.h5", y=y)
    with open_file(path) as file:
        with pytest.raises(DatasetError, match=r"row 4 of 'Y' is \[0.0, 0.5, 0.5\], expected one-hot"):
            read_labels(file, 6)
        assert read_labels(file, 4).tolist() == [0, 1, 2, 0]  # rows past sample_count are not read


def test_a_row_of_zeros_is_not_one_hot(tmp_path):
    y = np.eye(3, dtype="u1")[[0, 1, 2, 0, 1, 2]]
    y[2] = 0
    with open_file(write(tmp_path / "zero.h5", y=y)) as file, pytest.raises(DatasetError, match="row 2 of 'Y'"):
        read_labels(file, 6)


def test_file_is_opened_read_only(files):
    with open_file(files["contiguous"]) as file:
        assert file.mode == "r"
        with pytest.raises(KeyError, match="no write intent on file"):
            file.attrs["sample_count"] = 1


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *args], capture_output=True, text=True)


def test_cli_inspect_prints_the_layout(files):
    result = run_cli("inspect", str(files["clip-chunks"]))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("class"))
    assert lines["X"] == "(203, 8, 3, 16, 16) uint8 (samples, frames=8, channels=3, rows=16, cols=16)"
    assert lines["chunks"] == "(1, 8, 3, 16, 16)"
    assert lines["sample_count"] == "197"
    with h5py.File(files["clip-chunks"], "r", locking=False) as file:  # as the package opens it
        labels = file["Y"][:197].argmax(1)
    counts = ", ".join(f"{k}: {n}" for k, n in enumerate(np.bincount(labels, minlength=5)))
    assert f"class counts  {counts}" in result.stdout


def test_cli_inspect_bad_file_exits_2_without_traceback(tmp_path):
    path = write(tmp_path / "bad.h5", sample_count=9)
    before = digest(path)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert result.stderr == (f"distributed-h5 inspect: error: {path}: attribute 'sample_count' is 9, "
                             "expected an integer in [1, 6]\n")
    assert "Traceback" not in result.stderr
    assert digest(path) == before


def written(path, chunks=None, write_rows=None, sample_count=6):
    """X of 6 clips, written for ``write_rows`` only (all rows when None); one-hot Y."""
    with h5py.File(path, "w") as file:
        x = file.create_dataset("X", shape=(6, 2, 1, 4, 4), dtype="u1", chunks=chunks)
        for row in range(6) if write_rows is None else write_rows:
            x[row] = row + 1
        file.create_dataset("Y", data=np.eye(3, dtype="u1")[[0, 1, 2, 0, 1, 2]])
        file.attrs["sample_count"] = sample_count
    return path


def test_storage_never_written_is_refused(tmp_path):
    path = written(tmp_path / "empty.h5", write_rows=[])
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: dataset 'X' was never written (its storage is not allocated, so every "
                                 "read gives the fill value); pass allow_unwritten=True (train --allow-unwritten) "
                                 "to read it anyway")
    assert describe(path, allow_unwritten=True).sample_count == 6  # the user asked for it


def test_rows_in_use_never_written_are_refused(tmp_path):
    path = written(tmp_path / "holes.h5", chunks=(2, 2, 1, 4, 4), write_rows=[0, 1, 2, 3])
    with pytest.raises(DatasetError, match=r"dataset 'X' has rows never written: 1 chunk row\(s\) of 2 rows among "
                                           r"the 6 in use, the first at row 4 "):
        describe(path)


def test_rows_past_sample_count_may_be_unwritten(tmp_path):
    path = written(tmp_path / "tail.h5", chunks=(2, 2, 1, 4, 4), write_rows=[0, 1, 2, 3], sample_count=4)
    assert describe(path).sample_count == 4


def virtual(path, source_name):
    layout = h5py.VirtualLayout(shape=(6, 2, 1, 4, 4), dtype="u1")
    layout[:] = h5py.VirtualSource(source_name, "X", shape=(6, 2, 1, 4, 4))
    with h5py.File(path, "w") as file:
        file.create_virtual_dataset("X", layout, fillvalue=0)
        file.create_dataset("Y", data=np.eye(3, dtype="u1")[[0, 1, 2, 0, 1, 2]])
        file.attrs["sample_count"] = 6
    return path


def test_virtual_dataset_with_a_missing_source_is_refused(tmp_path):
    path = virtual(tmp_path / "vds.h5", "gone.h5")
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: dataset 'X' is a virtual dataset and its source file gone.h5 is missing, "
                                 "so it would read as the fill value; pass allow_unwritten=True (train --allow-unwritten) to read it anyway")
    written(tmp_path / "gone.h5")  # the source appears: the same file is now valid and reads real clips
    assert describe(path).sample_count == 6
    from distributed_h5.reader import BatchReader

    with BatchReader(path) as reader:
        assert reader.method == "hdf5"
        assert reader.read(np.array([0, 5]))[0][:, 0, 0, 0, 0].tolist() == [1, 6]


def test_virtual_dataset_with_a_missing_source_dataset(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.create_dataset("clips", data=np.zeros(3))
    path = virtual(tmp_path / "vds.h5", "other.h5")
    with pytest.raises(DatasetError, match=f"its source dataset 'X' is missing from {tmp_path}/other.h5"):
        describe(path)


def test_train_refuses_unwritten_storage_in_one_line_unless_allowed(tmp_path):
    path = written(tmp_path / "empty.h5", chunks=(1, 2, 1, 4, 4), write_rows=[0, 1, 2, 3, 4])
    args = ("train", str(path), "--epochs", "1", "--batch-size", "2", "--validation-ratio", "0", "--width", "1",
            "--depth", "1", "--tf-threads", "1")
    refused = run_cli(*args)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"distributed-h5 train: error: {path}: dataset 'X' has rows never written: 1 chunk row(s) of 1 rows among "
        "the 6 in use, the first at row 5 (they would read as the fill value); pass allow_unwritten=True "
        "(train --allow-unwritten) to read it anyway"]
    allowed = run_cli(*args, "--allow-unwritten")
    assert allowed.returncode == 0, allowed.stderr
    assert "ranks=1 epochs=1 " in allowed.stdout


def test_reader_refuses_unwritten_storage_unless_allowed(tmp_path):
    from distributed_h5.reader import BatchReader

    path = written(tmp_path / "empty.h5", chunks=(1, 2, 1, 4, 4), write_rows=[])
    with pytest.raises(DatasetError, match="dataset 'X' was never written"):
        BatchReader(path)
    with BatchReader(path, allow_unwritten=True) as reader:
        assert reader.read(np.array([0, 5]))[0].max() == 0  # the fill value, as asked


def test_external_raw_storage_that_is_missing_is_refused(tmp_path):
    from distributed_h5.reader import BatchReader

    data = np.arange(6 * 2 * 1 * 4 * 4, dtype="u1").reshape(6, 2, 1, 4, 4)
    raw = tmp_path / "clips.raw"
    raw.write_bytes(data.tobytes())
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("X", shape=data.shape, dtype="u1", external=[(str(raw), 0, data.nbytes)])
        file.create_dataset("Y", data=np.eye(3, dtype="u1")[[0, 1, 2, 0, 1, 2]])
        file.attrs["sample_count"] = 6
    with BatchReader(path) as reader:  # present: read through h5py, exactly
        assert reader.method == "hdf5"
        np.testing.assert_array_equal(reader.read(np.arange(6))[0], data)
    raw.unlink()
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == f"{path}: dataset 'X' is stored in external raw file {raw}, which is missing"


def describe_in_a_subprocess(path):
    """describe(path)'s error, from another process: a hang guard (opening a FIFO blocks until a writer comes)."""
    code = ("import sys\nfrom distributed_h5 import describe\ntry:\n    describe(sys.argv[1])\n"
            "except ValueError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.rstrip("\n")


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    import os

    fifo = tmp_path / "data.h5"
    os.mkfifo(fifo)
    assert describe_in_a_subprocess(fifo) == f"{fifo}: is a FIFO (named pipe), expected an HDF5 file (a regular file)"
    link = tmp_path / "link.h5"
    link.symlink_to(fifo)
    assert describe_in_a_subprocess(link) == (f"{link}: is a FIFO (named pipe) (the link resolves to {fifo}), "
                                              "expected an HDF5 file (a regular file)")
    from distributed_h5.reader import BatchReader

    with pytest.raises(DatasetError, match="is a FIFO"):  # the reader opens through the same helper
        BatchReader(fifo)


def test_a_directory_or_device_is_refused_in_one_line(tmp_path):
    assert describe_in_a_subprocess(tmp_path) == f"{tmp_path}: is a directory, expected an HDF5 file (a regular file)"
    assert describe_in_a_subprocess("/dev/null") == ("/dev/null: is a character device, expected an HDF5 file "
                                                     "(a regular file)")


def test_an_external_link_to_a_fifo_is_refused_before_it_is_followed(tmp_path):
    import os

    fifo = tmp_path / "clips.h5"
    os.mkfifo(fifo)
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as file:
        file["X"] = h5py.ExternalLink(str(fifo), "X")
        file.create_dataset("Y", data=np.eye(2))
        file.attrs["sample_count"] = 2
    assert describe_in_a_subprocess(path) == (f"{path}: 'X' is an external link to {fifo}, which is a FIFO (named "
                                              "pipe); expected an HDF5 file (a regular file)")


# Storage that would read as zeros: 96 clips of 4096 bytes (one file-system block each).
CLIP_SHAPE = (1, 1, 64, 64)
ROWS = 96
ALLOW_LINE = "pass allow_unwritten=True (train --allow-unwritten) to read it anyway"


def clips_and_labels(file, make_x):
    make_x(file)
    file.create_dataset("Y", data=np.eye(3, dtype="u1")[np.arange(ROWS) % 3])
    file.attrs["sample_count"] = ROWS


def external_file(tmp_path, raw):
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as file:
        clips_and_labels(file, lambda f: f.create_dataset("X", shape=(ROWS, *CLIP_SHAPE), dtype="u1",
                                                          external=[(str(raw), 0, ROWS * 4096)]))
    return path


@pytest.mark.parametrize("raw_rows, message", [
    (0, "which has 0 bytes; the 96 rows in use need 393216 bytes of it from byte 0, so rows 0 to 95 would read "
        "as zeros (is it truncated?)"),
    (86, "which has 352256 bytes; the 96 rows in use need 393216 bytes of it from byte 0, so rows 86 to 95 would "
         "read as zeros (is it truncated?)"),
])
def test_external_raw_storage_too_short_is_refused(tmp_path, raw_rows, message):
    raw = tmp_path / "clips.raw"
    raw.write_bytes(b"\1" * 4096 * raw_rows)
    path = external_file(tmp_path, raw)
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == f"{path}: dataset 'X' is stored in external raw file {raw}, {message}; {ALLOW_LINE}"
    assert describe(path, allow_unwritten=True).sample_count == ROWS
    raw.write_bytes(b"\1" * 4096 * ROWS)
    assert describe(path).sample_count == ROWS  # whole: accepted


def test_external_raw_storage_on_a_device_is_refused(tmp_path):
    path = external_file(tmp_path, "/dev/zero")
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: dataset 'X' is stored in external raw file /dev/zero, which is a character "
                                 "device, expected a regular file holding the clips (it would read as anything, "
                                 f"/dev/zero as zeros); {ALLOW_LINE}")


def test_external_raw_storage_is_looked_for_where_hdf5_looks(tmp_path, monkeypatch):
    (tmp_path / "clips.raw").write_bytes(b"\1" * 4096 * ROWS)
    path = external_file(tmp_path, "clips.raw")  # relative: HDF5 opens it from the working directory
    monkeypatch.chdir("/")
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: dataset 'X' is stored in external raw file clips.raw, which HDF5 looks for "
                                 f"as /clips.raw, where it is missing; it is in {tmp_path}: run from there or set "
                                 "HDF5_EXTFILE_PREFIX='${ORIGIN}' (the file's folder)")
    monkeypatch.chdir(tmp_path)
    assert describe(path).sample_count == ROWS


def virtual_rows(tmp_path, mapped):
    """A virtual X of ROWS rows whose rows ``mapped`` (a slice) come from a source file holding them."""
    count = len(range(ROWS)[mapped])
    with h5py.File(tmp_path / "source.h5", "w") as file:
        file.create_dataset("X", data=np.ones((count, *CLIP_SHAPE), dtype="u1"))
    layout = h5py.VirtualLayout(shape=(ROWS, *CLIP_SHAPE), dtype="u1")
    layout[mapped] = h5py.VirtualSource("source.h5", "X", shape=(count, *CLIP_SHAPE))
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as file:
        clips_and_labels(file, lambda f: f.create_virtual_dataset("X", layout, fillvalue=0))
    return path


@pytest.mark.parametrize("mapped, unmapped, first", [(slice(0, 10), 86, 10), (slice(0, ROWS, 2), 48, 1)])
def test_virtual_rows_in_use_that_no_source_maps_are_refused(tmp_path, mapped, unmapped, first):
    path = virtual_rows(tmp_path, mapped)
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: dataset 'X' is a virtual dataset that maps no source to {unmapped} of the "
                                 f"96 rows in use, the first at row {first} (they would read as the fill value); "
                                 f"{ALLOW_LINE}")
    with h5py.File(path, "r+") as file:
        file.attrs["sample_count"] = first  # the rows in use are all mapped
    assert describe(path).sample_count == first


def test_a_virtual_dataset_mapping_every_row_is_accepted(tmp_path):
    assert describe(virtual_rows(tmp_path, slice(None))).sample_count == ROWS


def file_system_reports_holes(folder):
    import os

    probe = folder / "sparse.probe"
    with open(probe, "wb") as handle:
        handle.truncate(1 << 20)
    with open(probe, "rb") as handle:
        try:
            return os.lseek(handle.fileno(), 0, os.SEEK_HOLE) == 0
        except OSError:
            return False
        finally:
            probe.unlink()


def early_allocated(tmp_path, written_rows):
    """Contiguous X allocated when created (H5D_ALLOC_TIME_EARLY), its clips aligned to 4 KiB blocks, and
    rows ``[0, written_rows)`` written in one call."""
    path = tmp_path / "early.h5"
    with h5py.File(path, "w", alignment_threshold=1, alignment_interval=4096) as file:
        def make_x(f):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            h5py.h5d.create(f.id, b"X", h5py.h5t.NATIVE_UINT8, h5py.h5s.create_simple((ROWS, *CLIP_SHAPE)), dcpl=dcpl)
            if written_rows:
                f["X"][:written_rows] = 1

        clips_and_labels(file, make_x)
    return path


@pytest.mark.parametrize("written_rows", [0, 40])
def test_early_allocated_storage_never_written_is_refused(tmp_path, written_rows):
    if not file_system_reports_holes(tmp_path):
        pytest.skip("this file system does not report holes (SEEK_HOLE), so unwritten storage cannot be seen")
    path = early_allocated(tmp_path, written_rows)
    with pytest.raises(DatasetError) as caught:
        describe(path)
    # The file system may write zeros just past written data instead of leaving a hole (ext4 up to 32 KiB:
    # extent_max_zeroout_kb), so a partly written X is seen from a row at most 8 clips later.
    first = int(re.search(r"the first at row (\d+) ", str(caught.value)).group(1))
    assert written_rows <= first <= written_rows + (8 if written_rows else 0)
    assert str(caught.value) == (
        f"{path}: dataset 'X' has storage allocated but never written (a hole in the file): {ROWS - first} "
        f"clip(s) among the 96 rows in use, the first at row {first} (they read as zeros; if those clips really "
        f"are all zeros, the file was copied sparse or the file system stores zeros as holes); {ALLOW_LINE}")
    with h5py.File(path, "r+") as file:
        file.attrs["sample_count"] = max(1, written_rows)
    assert describe(path, allow_unwritten=not written_rows).sample_count == max(1, written_rows)


def test_what_hdf5_cannot_tell_apart_from_written_zeros(tmp_path):
    """Documented limits (README): storage HDF5 filled at allocation reads as zeros and is accepted."""
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as file:  # the last 8-clip chunk written for 4 of its clips only
        clips_and_labels(file, lambda f: f.create_dataset("X", shape=(ROWS, *CLIP_SHAPE), dtype="u1",
                                                          chunks=(8, *CLIP_SHAPE)))
        file["X"][:92] = 1
    assert describe(path).sample_count == ROWS
    with h5py.File(path, "r") as file:
        assert file["X"][92:].max() == 0 and file["X"][:92].min() == 1
    early = tmp_path / "early-chunks.h5"
    with h5py.File(early, "w") as file:  # chunks allocated early: HDF5 writes the fill value into each
        def make_x(f):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_chunk((8, *CLIP_SHAPE))
            h5py.h5d.create(f.id, b"X", h5py.h5t.NATIVE_UINT8, h5py.h5s.create_simple((ROWS, *CLIP_SHAPE)), dcpl=dcpl)

        clips_and_labels(file, make_x)
    assert describe(early).sample_count == ROWS


def declared_rows(path, rows, sample_count, written=96):
    """X and Y declaring ``rows`` rows (chunked, extendible: nothing is allocated for them), the first
    ``written`` written: clip i holds i, label i % 3."""
    with h5py.File(path, "w") as file:
        x = file.create_dataset("X", shape=(rows, 1, 1, 8, 8), maxshape=(None, 1, 1, 8, 8), chunks=(1, 1, 1, 8, 8),
                                dtype="u1")
        y = file.create_dataset("Y", shape=(rows, 3), maxshape=(None, 3), chunks=(1024, 3), dtype="u1")
        x[:written] = np.arange(written, dtype="u1")[:, None, None, None, None]
        y[:written] = np.eye(3, dtype="u1")[np.arange(written) % 3]
        file.attrs["sample_count"] = sample_count
    return path


def test_rows_declared_but_not_in_use_cost_nothing(tmp_path):
    from distributed_h5.reader import BatchReader

    path = declared_rows(tmp_path / "huge.h5", 2**40, 96)
    info = describe(path, labels=True, clips=True)
    assert (info.rows, info.sample_count) == (2**40, 96)
    with BatchReader(path) as reader:  # its chunk table covers the 96 rows in use, not 2**40
        assert reader.method == "pread"
        x, y = reader.read(np.array([0, 50, 95]))
        assert x[:, 0, 0, 0, 0].tolist() == [0, 50, 95] and y.argmax(1).tolist() == [0, 2, 2]


def test_a_sample_count_no_machine_can_index_is_one_line(tmp_path):
    import os

    path = declared_rows(tmp_path / "huge.h5", 2**40, 2**40)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for allow_unwritten in (False, True):
        with pytest.raises(DatasetError) as caught:
            describe(path, allow_unwritten=allow_unwritten)
        assert str(caught.value) == (
            f"{path}: attribute 'sample_count' is 1099511627776, more samples than this machine can index (their "
            f"labels and order alone need 16384 GiB, it has {memory / 2**30:.0f} GiB); expected the number of clips "
            "written to X, which declares 1099511627776 rows")


def test_unwritten_rows_in_use_are_counted_without_a_table_of_every_row(tmp_path):
    import tracemalloc

    path = declared_rows(tmp_path / "huge.h5", 2**28, 2**28)  # in use, not written: a table of them is 2 GiB
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as caught:
            describe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (f"{path}: dataset 'X' has rows never written: {2**28 - 96} chunk row(s) of 1 rows "
                                 f"among the {2**28} in use, the first at row 96 (they would read as the fill value); "
                                 f"{ALLOW_LINE}")
    assert peak < 16 << 20


def test_many_classes_need_no_identity_matrix(tmp_path):
    import tracemalloc

    from distributed_h5.reader import BatchReader

    classes = 200_000
    path = tmp_path / "classes.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=np.repeat(np.arange(96, dtype="u1"), 4).reshape(96, 1, 1, 2, 2))
        y = file.create_dataset("Y", shape=(96, classes), dtype="u1", chunks=(1, classes), compression="gzip")
        for row in range(96):
            one_hot = np.zeros(classes, dtype="u1")
            one_hot[row * 2000 + 7] = 1
            y[row] = one_hot
        file.attrs["sample_count"] = 96
    tracemalloc.start()
    try:
        assert describe(path, labels=True).classes == classes
        with BatchReader(path) as reader:
            x, labels = reader.read(np.array([1, 95]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.shape == (2, classes) and labels.dtype == np.float32
    assert np.flatnonzero(labels[0]).tolist() == [2007] and np.flatnonzero(labels[1]).tolist() == [190007]
    assert labels.sum() == 2
    assert peak < 64 << 20  # an identity of 200,000 classes would be 149 GiB


def test_synthetic_files_with_many_classes_need_no_identity_matrix(tmp_path):
    import tracemalloc

    from distributed_h5.synthetic import make_synthetic

    tracemalloc.start()
    try:
        path = make_synthetic(tmp_path / "many.h5", samples=4, frames=2, size=(4, 4), classes=200_000, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with h5py.File(path, "r") as file:
        y = file["Y"][:]
    assert y.shape == (4, 200_000) and y.sum(axis=1).tolist() == [1, 1, 1, 1]
    assert peak < 128 << 20  # np.eye(200_000) as uint8 would be 37 GiB


def test_a_file_without_samples_says_so(tmp_path):
    path = write(tmp_path / "empty.h5", x_shape=(0, 2, 1, 4, 4), y_shape=(0, 3), sample_count=0)
    with pytest.raises(DatasetError) as caught:
        describe(path)
    assert str(caught.value) == (f"{path}: the file has no samples ('X' and 'Y' have 0 rows); expected at least one "
                                 "clip in X with its label in Y, and sample_count >= 1")


def test_train_refuses_a_batch_larger_than_the_training_samples_in_one_line(tmp_path):
    path = written(tmp_path / "small.h5")
    result = run_cli("train", str(path), "--epochs", "1", "--batch-size", "100000000", "--validation-ratio", "0",
                     "--width", "1", "--depth", "1", "--tf-threads", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "distributed-h5 train: error: batch_size (--batch-size) must be at most the 6 training samples "
        "(sample_count=6, split='random'). Received: batch_size=100000000"]
