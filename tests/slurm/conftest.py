"""A real two-node SLURM cluster for the scheduler tests, started by tests/slurm/cluster.sh.

Each node is a network namespace with its own address, hostname and node-local scratch
folder (TMPDIR in its tasks); every other path is shared, as on a cluster's file system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
NODES = 2
_started: list[Path] = []  # the cluster directory started here, for its logs on failure


def slurm_env(conf: str) -> dict:
    env = dict(os.environ, SLURM_CONF=conf, TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def idle_nodes(env: dict) -> list[str]:
    try:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in state.stdout.splitlines() if line.split()[1:] == ["idle"]]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """``SLURM_CONF`` of a cluster of two idle nodes: an existing one if ``SLURM_CONF`` points at
    one that cluster.sh started (the tests look into its node folders), else one started here
    and stopped at the end. Where SLURM cannot run at all the tests skip with the reason,
    except in CI, where that is a failure."""
    existing = os.environ.get("SLURM_CONF")
    if existing and (Path(existing).parent / "task-prolog").exists() and len(idle_nodes(slurm_env(existing))) >= NODES:
        yield existing
        return
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch", "ip", "unshare", "nsenter")
               if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    reason = (f"SLURM is not installed ({', '.join(missing)} missing): run `make install-test`" if missing
              else "starting SLURM's daemons in network namespaces needs root" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    # sshd in each node for horovodrun across hosts (that test fails without it, naming the package).
    ssh = ["--ssh"] if Path("/usr/sbin/sshd").exists() else []
    started = subprocess.run(["bash", HERE / "cluster.sh", "start", directory, "--nodes", str(NODES), *ssh],
                             capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh could not start SLURM:\n{started.stderr}")
    _started.append(directory)
    try:
        yield str(directory / "slurm.conf")
    finally:
        subprocess.run(["bash", HERE / "cluster.sh", "stop", directory], capture_output=True, timeout=180)
        _started.remove(directory)


def cluster_dir(conf: str) -> Path:
    """The directory cluster.sh started the cluster in (node logs in nodes/NAME/, node scratch in nodes/NAME/scratch)."""
    return Path(conf).parent


def node_logs(lines: int = 30) -> str:
    """The last lines of slurmctld's and every slurmd's log of the cluster started here."""
    text = []
    for directory in _started:
        for log in [directory / "slurmctld.log", *sorted(directory.glob("nodes/*/slurmd.log"))]:
            if log.exists():
                text.append(f"==> {log} <==\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on the cluster shows the daemons' logs too."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "cluster" in getattr(item, "fixturenames", ()) and _started:
        report.sections.append(("SLURM daemons' logs", node_logs()))


def sbatch(conf: str, *args, cwd: Path, timeout: float = 600, env: dict | None = None,
           wait: bool = True) -> subprocess.CompletedProcess:
    """``sbatch --parsable`` from ``cwd``, with ``env`` added to the environment; with ``wait``
    it returns when the job has ended, its ``returncode`` the job's exit status (as
    ``sbatch --wait`` gives, which polls at growing intervals of up to 10 s: about 5 s lost
    per job on average, so the job's state is polled here every 0.5 s instead)."""
    submitted = subprocess.run(["sbatch", "--parsable", *map(str, args)], env={**slurm_env(conf), **(env or {})},
                               cwd=cwd, capture_output=True, text=True, timeout=60)
    if not wait or submitted.returncode != 0:
        return submitted
    job = submitted.stdout.strip().split(";")[0]
    state = wait_for(lambda: ended_state(conf, job), timeout, lambda: job_state(conf, job), interval=0.5)
    status, signal = map(int, re.search(r"\bExitCode=(\d+):(\d+)", state).groups())
    returncode = status if "JobState=COMPLETED" in state or status else 128 + signal if signal else 1
    return subprocess.CompletedProcess(submitted.args, returncode, submitted.stdout, submitted.stderr)


def ended_state(conf: str, job: str) -> str:
    """The job's ``scontrol show job`` once it has ended for good (not requeued), else ''."""
    state = job_state(conf, job)
    return state if re.search(r"JobState=(COMPLETED|FAILED|NODE_FAIL|CANCELLED|TIMEOUT|OUT_OF_MEMORY|BOOT_FAIL|"
                               r"DEADLINE)\b", state) else ""


def job_state(conf: str, job: str) -> str:
    """``scontrol show job`` for ``job`` (SLURM keeps ended jobs for MinJobAge, 300 s here)."""
    return subprocess.run(["scontrol", "show", "job", job], env=slurm_env(conf), capture_output=True, text=True,
                          timeout=30).stdout


def wait_for(condition, timeout: float, what, interval: float = 0.5):
    """Poll ``condition()`` until it returns something true; fail with ``what()`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s: {what()}")
        time.sleep(interval)
    return result
