"""Jobs across the two hosts of the test cluster (node1 and node2, each its own network
namespace, hostname and node-local TMPDIR): training with and without staging, the same
result as on one node, requeue on SIGUSR1, a node lost mid-job, horovodrun over ssh, and convert."""

import csv
import re
import subprocess

import pytest

from distributed_h5.synthetic import make_synthetic

from .conftest import HERE, ROOT, cluster_dir, ended_state, idle_nodes, job_state, sbatch, slurm_env, wait_for

TRAIN = ("--width", 4, "--depth", 1)


def checkpoints(run_dir) -> list[str]:
    """The epoch checkpoints' names in ``run_dir/checkpoints`` (besides best.keras and the lock)."""
    return sorted(p.name for p in (run_dir / "checkpoints").glob("epoch-*.keras"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("multinode") / "data.h5", samples=96, frames=4, size=(12, 12),
                          classes=3, progress=False)


def readme_two_node_example() -> str:
    """The two-node example of docs/SLURM.md, the bash block after its marker comment."""
    text = (ROOT / "docs" / "SLURM.md").read_text()
    after = text.split("<!-- two-node example: tests/slurm/test_multinode.py runs this block as written -->", 1)[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def training(cluster, data, tmp_path_factory):
    """``run(nodes, stage)``: slurm/train.sbatch with 2 ranks on ``nodes`` node(s), 2 epochs of
    batch 8 per rank; each run happens once per module. (2, "1") is the README's two-node
    example, run as written from a folder that looks like the checkout. Returns (exit status,
    job, log, run dir, data path)."""
    runs = {}

    def run(nodes: int, stage: str):
        if (nodes, stage) in runs:
            return runs[nodes, stage]
        cwd = tmp_path_factory.mktemp(f"train-{nodes}-nodes-stage-{stage}")
        if (nodes, stage) == (2, "1"):
            for name in ("slurm", "launch", ".venv"):
                (cwd / name).symlink_to(ROOT / name)
            env = {**slurm_env(cluster), "PATH": f"{ROOT}/.venv/bin:{slurm_env(cluster)['PATH']}"}
            submitted = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_two_node_example()], env=env, cwd=cwd,
                                       capture_output=True, text=True, timeout=300)
            assert submitted.returncode == 0, submitted.stderr
            job = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
            state = wait_for(lambda: ended_state(cluster, job), 600, lambda: job_state(cluster, job))
            status = 0 if "JobState=COMPLETED" in state else 1
            log, run_dir, path = cwd / f"dh5-train-{job}.out", cwd / "runs" / f"dh5-train-{job}", "data.h5"
        else:
            env = {"DH5_ROOT": str(ROOT), "DH5_RUN_DIR": str(cwd / "run"), "DH5_STAGE": stage}
            result = sbatch(cluster, f"--nodes={nodes}", f"--ntasks-per-node={2 // nodes}", "--cpus-per-task=1",
                            "--output=job-%j.out", ROOT / "slurm" / "train.sbatch", data, "--epochs", 2,
                            "--batch-size", 8, *TRAIN, cwd=cwd, env=env)
            status, job, path = result.returncode, result.stdout.strip(), data
            log, run_dir = cwd / f"job-{job}.out", cwd / "run"
        runs[nodes, stage] = status, job, log.read_text(), run_dir, path
        return runs[nodes, stage]

    return run


@pytest.mark.parametrize("nodes, stage", [(1, "0"), (2, "0"), (2, "1")])
def test_train_sbatch(cluster, training, nodes, stage):
    status, job, log, run_dir, path = training(nodes, stage)
    assert status == 0, log[-5000:]
    assert f"job {job} (start 0): 2 ranks on {nodes} node(s), 1 cpu(s) each" in log
    assert ("NodeList=node[1-2]" if nodes == 2 else "NodeList=node1") in job_state(cluster, job)
    summary = [line for line in log.splitlines() if line.startswith("summary:")]
    assert len(summary) == 1 and "ranks=2 epochs=2" in summary[0]
    assert checkpoints(run_dir) == ["epoch-0001.keras", "epoch-0002.keras"]
    staged = cluster_dir(cluster) / "scratch" / f"dh5-{job}-data.h5"
    if stage == "0":
        assert f"srun --mpi=pmix --kill-on-bad-exit=1 distributed-h5 train {path} " in log
    else:
        # The ranks read `staged`, a path that exists only in each node's private scratch folder
        # (the shared view of that path, cluster_dir/scratch, never has it): sbcast put a copy on
        # every node, and the job removed each one at the end.
        assert f"staging {path} to {staged} on 2 node(s)" in log
        assert f"srun --mpi=pmix --kill-on-bad-exit=1 distributed-h5 train {staged} " in log
        for node in ("node1", "node2"):
            assert not (cluster_dir(cluster) / "nodes" / node / "scratch" / staged.name).exists()
        assert not staged.exists()


def test_two_nodes_train_exactly_as_one(training):
    """Same ranks, global batch and data on one node and on two (the README's example, staged):
    every epoch's metrics agree to the last bit, since the data order depends only on seed and epoch."""
    metrics = {}
    for nodes, stage in [(1, "0"), (2, "1")]:
        status, _, log, run_dir, _ = training(nodes, stage)
        assert status == 0, log[-3000:]
        rows = list(csv.DictReader((run_dir / "logs" / "training.csv").open()))
        metrics[nodes] = [(row["epoch"], row["loss"], row["accuracy"], row["val_loss"], row["val_accuracy"])
                          for row in rows]
    assert len(metrics[1]) == 2
    assert metrics[2] == metrics[1]


def test_signal_before_the_time_limit_checkpoints_requeues_and_resumes_on_two_nodes(cluster, data, tmp_path):
    """SIGUSR1 to the job's ranks on both nodes (what --signal=USR1@300 sends before the limit):
    the ranks stop together, rank 0 checkpoints mid-epoch, the job requeues itself and the
    second start resumes from that step on both nodes and finishes, the epoch count continuing."""
    env = {"DH5_ROOT": str(ROOT), "DH5_RUN_DIR": str(tmp_path / "run")}
    job = sbatch(cluster, "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--output=job-%j.out",
                 ROOT / "slurm" / "train.sbatch", data, "--epochs", 20, "--batch-size", 2, *TRAIN, "--verbose", 2,
                 cwd=tmp_path, env=env, wait=False).stdout.strip()
    log = tmp_path / f"job-{job}.out"
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    wait_for(lambda: "Epoch 3/20" in text(), 300, lambda: text()[-3000:])  # two epochs done and checkpointed
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env(cluster), check=True, timeout=30)
    # A requeued job waits cred_expire + 1 s (16 s in slurm.conf.in) before SLURM starts it again.
    state = wait_for(lambda: ended_state(cluster, job), 600, lambda: job_state(cluster, job) + text()[-3000:])
    assert "JobState=COMPLETED" in state and "Restarts=1" in state and "NodeList=node[1-2]" in state, state
    stopped = re.search(r"stopped by SIGUSR1 after (\d+) epochs and (\d+) (steps|samples)", text())
    assert stopped, text()[-5000:]
    epochs_done = int(stopped.group(1))
    assert epochs_done >= 2
    assert f"job {job}: checkpointed before the time limit; requeueing" in text()
    _, second = text().split(f"job {job} (start 1): 2 ranks on 2 node(s)")
    # The second start finishes the interrupted epoch from its step, then the rest: the count continues.
    assert f"Epoch {epochs_done + 1}/20" in second and f"Epoch {epochs_done}/20" not in second
    assert f"summary: ranks=2 epochs={20 - epochs_done} " in second
    assert checkpoints(tmp_path / "run")[-2:] == ["epoch-0019.keras", "epoch-0020.keras"]


def test_a_lost_node_ends_the_job_and_a_resubmitted_job_resumes(cluster, data, tmp_path):
    """node2's link goes down mid-epoch (no reset reaches anyone, as when a node dies): SLURM
    declares the node down after SlurmdTimeout (20 s) and ends the job instead of leaving rank 0
    blocked in allreduce; the same job submitted again resumes from the newest checkpoint."""
    env = {"DH5_ROOT": str(ROOT), "DH5_RUN_DIR": str(tmp_path / "run")}
    args = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--no-requeue", "--output=job-%j.out",
            ROOT / "slurm" / "train.sbatch", data, "--epochs", 12, "--batch-size", 2, *TRAIN, "--verbose", 2]
    job = sbatch(cluster, *args, cwd=tmp_path, env=env, wait=False).stdout.strip()
    log = tmp_path / f"job-{job}.out"
    text = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    wait_for(lambda: "Epoch 3/12" in text(), 300, lambda: text()[-3000:])
    directory = str(cluster_dir(cluster))
    subprocess.run(["bash", HERE / "cluster.sh", "link", directory, "node2", "down"], check=True, timeout=30)
    try:
        state = wait_for(lambda: ended_state(cluster, job), 180, lambda: job_state(cluster, job) + text()[-3000:], interval=1)
    finally:
        subprocess.run(["bash", HERE / "cluster.sh", "link", directory, "node2", "up"], check=True, timeout=30)
    assert "JobState=NODE_FAIL" in state, state + text()[-3000:]
    wait_for(lambda: len(idle_nodes(slurm_env(cluster))) == 2, 120, lambda: "node2 did not come back")
    written = checkpoints(tmp_path / "run")
    assert written and all(re.fullmatch(r"epoch-\d{4}\.keras", name) for name in written), written
    newest = int(written[-1][6:10])
    assert 2 <= newest < 12
    again = sbatch(cluster, *args, cwd=tmp_path, env=env)
    second = (tmp_path / f"job-{again.stdout.strip()}.out").read_text()
    assert again.returncode == 0, second[-5000:]
    assert f"Epoch {newest + 1}/12" in second and f"Epoch {newest}/12" not in second, second[-5000:]
    assert f"summary: ranks=2 epochs={12 - newest} " in second
    assert checkpoints(tmp_path / "run")[-1] == "epoch-0012.keras"


def test_convert_with_ranks_on_two_hosts(cluster, tmp_path):
    """The README's cluster conversion line, one task on each node: each converts its share of
    the videos into part files on the shared file system, rank 0 joins them."""
    from ..videos import make_tree

    make_tree(tmp_path / "videos")
    line = (f"srun --mpi=pmix {ROOT}/.venv/bin/distributed-h5 convert {tmp_path}/videos {tmp_path}/videos.h5 "
            "--frames 8 --size 24 32 --part-videos 4")
    result = sbatch(cluster, "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--output=job-%j.out",
                    "--wrap", line, cwd=tmp_path)
    job = result.stdout.strip()
    log = (tmp_path / f"job-{job}.out").read_text()
    assert result.returncode == 0, log[-3000:]
    assert "NodeList=node[1-2]" in job_state(cluster, job)
    assert log.count(f"converted 14 video(s) into {tmp_path}/videos.h5") == 1
    assert "  blue/blue_corrupt.mp4: cannot be decoded" in log


def test_convert_refuses_srun_without_pmix(cluster, tmp_path):
    """Plain srun starts two tasks without MPI's wire-up: each refuses in one line before
    touching MPI or writing anything, instead of both converting everything into the same
    parts folder (or Open MPI aborting each with a screenful)."""
    from ..videos import make_tree

    make_tree(tmp_path / "videos")
    line = f"srun {ROOT}/.venv/bin/distributed-h5 convert {tmp_path}/videos {tmp_path}/videos.h5 --frames 8 --size 24 32"
    result = sbatch(cluster, "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--output=job-%j.out",
                    "--wrap", line, cwd=tmp_path)
    log = (tmp_path / f"job-{result.stdout.strip()}.out").read_text()
    assert result.returncode != 0
    refusal = ("distributed-h5 convert: error: the launcher started 2 tasks (SLURM_PROCID) without MPI's wire-up (no PMIX_RANK), "
               "so every task would act as rank 0 of 1: launch with `srun --mpi=pmix` (not pmi2 or none), mpirun or "
               "horovodrun")
    assert log.count(refusal) == 2, log[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["videos", f"job-{result.stdout.strip()}.out"])


def test_horovodrun_gloo_across_two_hosts(cluster, data, tmp_path):
    """launch/horovodrun.sh from node1 with -H node1:1,node2:1 and the interface named: Gloo by
    default on a machine without a GPU, rank 1 started on node2 over ssh (the cluster's sshd
    there, listening only on node2's address), the ranks meeting over eth0."""
    ssh = cluster_dir(cluster) / "ssh"
    assert ssh.is_dir(), "horovodrun across hosts needs sshd in the test cluster: apt-get install openssh-server"
    line = (f"export PATH={ROOT}/.venv/bin:$PATH; {ROOT}/launch/horovodrun.sh -np 2 -H node1:1,node2:1 "
            f"--network-interface eth0 {data} --epochs 1 --batch-size 8 --width 4 --depth 1")
    result = sbatch(cluster, "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--output=job-%j.out",
                    "--wrap", line, cwd=tmp_path)
    job = result.stdout.strip()
    log = (tmp_path / f"job-{job}.out").read_text()
    assert result.returncode == 0, log[-5000:]
    assert (f"horovodrun -np 2 -H node1:1,node2:1 --gloo --network-interface eth0 distributed-h5 train {data} "
            "--epochs 1") in log
    assert re.search(r"summary: ranks=2 epochs=1 ", log), log[-3000:]
    assert "Accepted publickey for root from 10.199." in (cluster_dir(cluster) / "nodes" / "node2" / "sshd.log").read_text()
