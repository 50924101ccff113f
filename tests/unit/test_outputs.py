"""make-synthetic and convert refuse an unwritable output in one line, before any work, leaving nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "distributed_h5.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@contextmanager
def read_only(folder):
    """A directory no file can be created in, for root too (immutable), else by its permission bits."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", folder], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", folder], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


COMMANDS = {
    "make-synthetic": lambda out, tmp: ["make-synthetic", out, "--samples", 8, "--frames", 2, "--size", 8, 8],
    "convert": lambda out, tmp: ["convert", tmp, out, "--frames", 4, "--size", 8, 8],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", ["missing directory", "directory as output", "parent is a file", "read-only"])
def test_unwritable_output_is_one_line_before_any_work(tmp_path, command, case):
    source = tmp_path / "videos"  # convert fails on this empty folder only if it got past the output check
    source.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    if case == "missing directory":
        out, reason = folder / "absent" / "data.h5", f"directory {folder}/absent does not exist; create it first"
    elif case == "directory as output":
        out, reason = folder, f"is a directory, expected a file path such as {folder}/data.h5"
    elif case == "parent is a file":
        (folder / "file").write_text("")
        out, reason = folder / "file" / "data.h5", f"{folder}/file is not a directory"
    else:
        out, reason = folder / "data.h5", f"cannot create files in {folder} ("
    with read_only(folder) if case == "read-only" else contextmanager(lambda: (yield))():
        result = run_cli(*COMMANDS[command](out, source))
    assert result.returncode == 2
    assert result.stderr.startswith(f"distributed-h5 {command}: error: output {out}")
    assert reason in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    left = sorted(path.name for path in folder.iterdir())
    assert left == (["file"] if case == "parent is a file" else [])  # no .partial, no probe, no parts


def test_make_synthetic_leaves_no_partial_when_interrupted(tmp_path):
    import signal
    import time

    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "big.h5"
    argv = ["make-synthetic", out, "--samples", 3000, "--frames", 16, "--size", 64, 64]  # 590 MB
    # SIGINT as a terminal gives it, whatever this suite inherited: a suite started in the
    # background of a script (`bash .ci/run &`) ignores SIGINT, its children inherit that, and
    # Python then installs no KeyboardInterrupt; make-synthetic ran on and wrote big.h5.
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "distributed_h5.cli", *map(str, argv)], stderr=stderr,
                                   stdout=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        partial = folder / "big.h5.partial"
        deadline = time.monotonic() + 60
        while not partial.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.exists()
        signalled = time.monotonic()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=60)
        stderr.seek(0)
        tail = stderr.read()[-2000:]
    assert status == 130, (f"exit {status} {time.monotonic() - signalled:.2f} s after SIGINT; stdout "
                           f"{process.stdout.read()!r}; stderr ends {tail!r}")
    assert sorted(path.name for path in folder.iterdir()) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, command):
    """A FIFO here; /dev/null or /dev/full alike: the rename at the end would replace the device."""
    source = tmp_path / "videos"
    source.mkdir()
    out = tmp_path / "fifo.h5"
    os.mkfifo(out)
    result = run_cli(*COMMANDS[command](out, source))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        f"distributed-h5 {command}: error: output {out} exists and is not a regular file; expected a file path (it is "
        "written under a temporary name and renamed over OUT)\n"))
    assert out.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["fifo.h5", "videos"]


def test_doctor_names_jax_devices_by_platform_with_the_accelerators_kind():
    from types import SimpleNamespace

    from distributed_h5.doctor import jax_devices

    gpu = SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    cpu = SimpleNamespace(platform="cpu", device_kind="cpu")
    assert jax_devices([gpu, gpu, cpu]) == "1 cpu, 2 gpu (NVIDIA H200)"
    assert jax_devices([cpu]) == "1 cpu"


def test_benchmark_rows_are_written_whole_or_not_at_all(tmp_path):
    """bench au's and bench scaling's CSVs (data.outputs.write_rows): floats to 6 significant
    digits; a row that fails mid-file leaves the previous file as it was and no partial file."""
    from dataclasses import dataclass

    from distributed_h5.data.outputs import write_rows

    @dataclass
    class Row:
        loader: str
        ranks: int
        au: float

    path = tmp_path / "au.csv"
    write_rows(path, ["loader", "ranks", "au"], [Row("distributed_h5", 8, 0.91234567), Row("tf.data", 8, 0.869)])
    assert path.read_text() == "loader,ranks,au\ndistributed_h5,8,0.912346\ntf.data,8,0.869\n"

    def failing():
        yield Row("torch", 1, 0.5)
        raise RuntimeError("the run died")

    with pytest.raises(RuntimeError, match="the run died"):
        write_rows(path, ["loader", "ranks", "au"], failing())
    assert path.read_text() == "loader,ranks,au\ndistributed_h5,8,0.912346\ntf.data,8,0.869\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["au.csv"]
