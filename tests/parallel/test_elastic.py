"""Elastic training with Horovod (`horovodrun --gloo --min-np 1 --max-np 2`): a rank killed
mid-epoch, the other rolls back to the last commit and finishes alone from that sample
position; with the lost host back after a cooldown, a new rank joins and receives the state."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from distributed_h5 import sharding

from .conftest import WORKER, horovodrun_env, report, weights

ROOT = Path(__file__).resolve().parents[2]


def second_local_host() -> str:
    """A non-loopback IPv4 address of this machine: a second host name that horovodrun starts
    ranks on without ssh (``localhost`` is the first). Each host has one slot, so losing a
    rank loses a host, as a node failure would."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    pytest.fail("this machine has no non-loopback IPv4 address; the elastic tests need one")


def discovery_script(tmp_path, more: str = ""):
    """A host discovery script: localhost and this machine's other address, one slot each, then ``more``."""
    discover = tmp_path / "discover_hosts.sh"
    discover.write_text(f"#!/bin/sh\necho localhost:1\necho {second_local_host()}:1\n{more}exit 0\n")
    discover.chmod(0o755)
    return discover


def elastic(tmp_path, small_file, *args, add_back=False, victim=1, timeout=300):
    """horovodrun in elastic mode on two one-slot hosts, ``victim`` killed at epoch 1, step 4.
    ``add_back``: once it is dead, the discovery script also lists a third host name of this
    machine (127.0.0.1), so a slot comes back as a new host."""
    discover = discovery_script(tmp_path, f'[ -e {tmp_path / "killed"} ] && echo 127.0.0.1:1\n' if add_back else "")
    argv = ["horovodrun", "--gloo", "-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script",
            str(discover)]
    argv += [sys.executable, str(WORKER), str(small_file), str(tmp_path / "out"), "--elastic", "--batch-size", "4",
             "--commit-every", "2", "--kill", str(victim), "1", "3", "--kill-once", str(tmp_path / "killed"), *map(str, args)]
    result = subprocess.run(argv, env=horovodrun_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert (tmp_path / "killed").exists()
    return tmp_path / "out"


@pytest.mark.parametrize("victim", [1, 0])
def test_a_lost_rank_rolls_back_to_the_last_commit_and_training_finishes_on_one(tmp_path, small_file, victim):
    """A rank dies before step 4 of epoch 1; the last commit was after step 2 (every 2 steps),
    16 samples into the epoch's order. The other retrains from there alone, in global batches
    of 4: the rest of epoch 1 and all of epoch 2 are exactly the batches of a 1-rank run from
    sample 16. When rank 0 is lost, the survivor becomes rank 0, takes the checkpoint
    directory's lock and writes the later checkpoints."""
    out = elastic(tmp_path, small_file, "--epochs", 3, "--checkpoint-dir", tmp_path / "ck", victim=victim)
    facts = report(out, 0)
    assert (facts["size"], facts["epochs"]) == (1, [0, 1, 2])
    assert set(facts["history"]) >= {"loss", "val_loss", "val_accuracy"} and len(facts["history"]["val_loss"]) == 3
    assert sorted(p.name for p in (tmp_path / "ck").glob("epoch-*.keras")) == ["epoch-0002.keras", "epoch-0003.keras"]
    two = sharding.ShardPlan(101, validation_ratio=0.3, seed=0, rank=1 - victim, size=2, batch_size=4)
    one = sharding.ShardPlan(101, validation_ratio=0.3, seed=0, rank=0, size=1, batch_size=4)
    trained = facts["trained"]
    steps = {epoch: [clips for at, clips in trained if at == epoch] for epoch in (0, 1, 2)}
    assert steps[0] == [b.tolist() for b in two.batches(0)]
    after = [b.tolist() for b in one.batches(1, 16)]
    assert len(after) == 14  # (72 - 16) / 4: 70 training clips padded to 72
    assert steps[1][:2] == [b.tolist() for b in two.batches(1)[:2]]  # committed before the loss
    assert steps[1][-len(after):] == after
    assert steps[2] == [b.tolist() for b in one.batches(2)]


def test_a_slot_added_back_gets_a_new_rank_that_receives_the_state(tmp_path, small_file):
    """The same loss, then the discovery script lists a new host: a new rank starts on it, joins
    at a commit, receives the weights, optimizer state and position, and the two ranks end
    with identical weights after 6 epochs."""
    out = elastic(tmp_path, small_file, "--epochs", 6, "--slow-while-alone", 0.3, add_back=True)
    assert [report(out, r)["size"] for r in (0, 1)] == [2, 2]
    assert [report(out, r)["epochs"] for r in (0, 1)] == [list(range(6))] * 2
    for a, b in zip(weights(out, 0), weights(out, 1)):
        assert (a == b).all()


def test_launch_horovodrun_elastic_runs_the_cli(tmp_path, small_file):
    """launch/horovodrun.sh --elastic: horovodrun in elastic mode on Gloo, `train --elastic`."""
    discover = discovery_script(tmp_path)
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "horovodrun.sh"), "--elastic", "-np", "2", "--min-np", "1", "--max-np", "2",
         "--host-discovery-script", str(discover), str(small_file), "--epochs", "2", "--batch-size", "4", "--width",
         "4", "--depth", "1", "--verbose", "0", "--checkpoint-dir", str(tmp_path / "ck")],
        env=horovodrun_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"horovodrun -np 2 --min-np 1 --max-np 2 --host-discovery-script {discover} --gloo distributed-h5 train " \
           f"{small_file} --elastic" in result.stderr
    summaries = [line for line in result.stdout.splitlines() if "summary: " in line]
    assert len(summaries) == 1 and " ranks=2 epochs=2 " in summaries[0], result.stdout[-3000:]
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.keras")) == ["best.keras", "epoch-0001.keras",
                                                                         "epoch-0002.keras"]
