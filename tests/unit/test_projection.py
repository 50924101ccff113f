"""The scale projection's arithmetic, on round numbers."""

import pytest

from distributed_h5.bench.projection import Assumptions, allreduce_seconds, project, rank_loss, rank_loss_seconds


def test_ring_allreduce_cost():
    # 100 MB over 100 Gb/s (12.5 GB/s) between 2 ranks: 2 * 1/2 * 0.1 / 12.5 s + 2 messages of 5 us.
    assert allreduce_seconds(2, 100_000_000, 12.5e9, 5e-6) == pytest.approx(0.008 + 1e-5)
    assert allreduce_seconds(1, 100_000_000, 12.5e9, 5e-6) == 0.0
    # As p grows the bandwidth term tends to 2 G / B.
    assert allreduce_seconds(512, 100_000_000, 12.5e9, 0.0) == pytest.approx(2 * 511 / 512 * 0.008)


def test_projection_shared_file_system_becomes_the_bottleneck():
    a = Assumptions(compute_seconds=0.1, gradient_bytes=100_000_000, read_bytes=10_000_000,
                    link_gbit_per_second=100, latency_seconds=0, shared_fs_gbyte_per_second=20,
                    local_gbyte_per_second=2, ranks_per_node=8)
    one, eight, big = project(a, [1, 8, 512])
    assert (one.shared_step_seconds, one.shared_efficiency) == (pytest.approx(0.1), pytest.approx(1.0))
    assert eight.nodes == 1 and eight.allreduce_seconds == pytest.approx(2 * 7 / 8 * 0.008)
    # 512 ranks x 10 MB from 20 GB/s takes 0.256 s a step, more than the 0.1 s of compute...
    assert big.shared_io_seconds == pytest.approx(0.256)
    assert big.shared_step_seconds == pytest.approx(0.256 + 2 * 511 / 512 * 0.008)
    # ...while node-local copies (8 ranks x 10 MB at 2 GB/s = 0.04 s) hide behind compute.
    assert big.staged_step_seconds == pytest.approx(0.1 + 2 * 511 / 512 * 0.008)
    assert big.staged_efficiency == pytest.approx(0.1 / (0.1 + 2 * 511 / 512 * 0.008))


def test_a_lost_rank_costs_the_steps_since_the_last_commit():
    a = Assumptions(compute_seconds=0.1, gradient_bytes=0, read_bytes=0, link_gbit_per_second=100, latency_seconds=0,
                    shared_fs_gbyte_per_second=20, local_gbyte_per_second=2, ranks_per_node=8)
    projected = project(a, [8, 64])
    assert rank_loss_seconds(projected[0], 8) == pytest.approx(0.8)
    assert rank_loss(projected, 8) == (
        "a lost rank: with train --elastic --commit-every 8, every rank rolls back at most 8 steps (8 ranks 0.80 s, "
        "64 ranks 0.80 s), plus re-forming the ranks; without --elastic the job ends and its requeue resumes from "
        "the newest checkpoint (at most an epoch back, or a --stop-signal checkpoint).")
