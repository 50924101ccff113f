"""launch/horovodrun.sh stopped by a signal: a non-zero status and no process of the run left.

Each test starts the script on 2 ranks for far more epochs than it lets run, waits for the
first epoch checkpoint, sends SIGTERM to the script or to horovodrun, and checks the status
the script exits with and that the ranks, horovodrun and mpirun have all ended.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from .conftest import horovodrun_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "horovodrun.sh"
STARTUP_S = 300  # hang guards, generous for loaded machines: not speed assertions
STOP_S = 120


def start(tmp_path: Path, small_file, controller: str):
    """launch/horovodrun.sh training 100000 epochs; returns the script's process once rank 0
    has written an epoch checkpoint (training is under way)."""
    checkpoints = tmp_path / "ck"
    script = subprocess.Popen(
        ["bash", str(SCRIPT), "-np", "2", f"--{controller}", str(small_file), "--epochs", "100000", "--batch-size",
         "4", "--width", "4", "--depth", "1", "--verbose", "0", "--checkpoint-dir", str(checkpoints)],
        env=horovodrun_env(), cwd=tmp_path, stdout=(tmp_path / "stdout").open("w"),
        stderr=(tmp_path / "stderr").open("w"))
    deadline = time.monotonic() + STARTUP_S
    while not any(checkpoints.glob("epoch-*.keras")):
        if script.poll() is not None or time.monotonic() > deadline:
            script.kill()
            pytest.fail(f"no epoch checkpoint within {STARTUP_S} s (script status {script.poll()}):\n"
                        f"{output(tmp_path)}")
        time.sleep(0.5)
    return script


def horovodrun(script: subprocess.Popen) -> psutil.Process:
    """The horovodrun process: the script's child, or the script itself where it execs horovodrun.
    Under --mpi horovodrun has replaced itself with `/bin/sh -c mpirun ...`."""
    process = psutil.Process(script.pid)
    for candidate in [process, *process.children()]:
        argv = candidate.cmdline()
        mpirun_shell = argv[:2] == ["/bin/sh", "-c"] and argv[2].startswith("mpirun ")
        if mpirun_shell or any(Path(part).name == "horovodrun" for part in argv[:2]):
            return candidate
    pytest.fail(f"no horovodrun among {[' '.join(p.cmdline()) for p in [process, *process.children()]]}")


def output(tmp_path: Path) -> str:
    return f"{(tmp_path / 'stdout').read_text()[-3000:]}\n{(tmp_path / 'stderr').read_text()[-3000:]}"


def stop(tmp_path: Path, script: subprocess.Popen, target: psutil.Process) -> tuple[int, list[str]]:
    """SIGTERM to ``target``; the script's exit status and the processes of the run still alive
    (those started under the script, ranks included, 10 s after it exited)."""
    run = [psutil.Process(script.pid), *psutil.Process(script.pid).children(recursive=True)]
    ranks = [p for p in run if any(Path(part).name == "distributed-h5" for part in p.cmdline()[:2])]
    assert len(ranks) == 2, [p.cmdline() for p in run]
    target.send_signal(signal.SIGTERM)
    try:
        status = script.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        for process in run:
            process.kill()
        pytest.fail(f"the script had not exited {STOP_S} s after SIGTERM:\n{output(tmp_path)}")
    _, alive = psutil.wait_procs(run, timeout=10)
    left = [" ".join(p.cmdline())[:120] for p in alive]
    for process in alive:
        process.kill()
    return status, left


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_sigterm_to_the_script_stops_every_rank_and_exits_143(tmp_path, small_file, controller):
    """As scancel and a time limit do: the script passes SIGTERM on to horovodrun's process group
    and exits 128 + 15, never 0, as a command killed by SIGTERM does."""
    script = start(tmp_path, small_file, controller)
    status, left = stop(tmp_path, script, psutil.Process(script.pid))
    assert status == 143, output(tmp_path)
    assert left == []
    assert "launch/horovodrun.sh: stopped by SIGTERM before training finished" in output(tmp_path)
    assert "summary:" not in (tmp_path / "stdout").read_text()


@pytest.mark.parametrize("controller, expected", [("gloo", 1), ("mpi", 143)])
def test_sigterm_to_horovodrun_fails_the_script_and_leaves_no_rank(tmp_path, small_file, controller, expected):
    """horovodrun itself sent SIGTERM: under --gloo it stops the ranks and exits 1; under --mpi
    it is `sh -c mpirun ...`, which dies of it (143) alone, and the script stops mpirun and the
    ranks it left running."""
    script = start(tmp_path, small_file, controller)
    status, left = stop(tmp_path, script, horovodrun(script))
    assert status == expected, output(tmp_path)
    assert left == []
    assert "summary:" not in (tmp_path / "stdout").read_text()
