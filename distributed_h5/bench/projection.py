"""A cost model for rank counts beyond one machine, fed by figures measured on this one.

Per step and rank, at ``p`` ranks on ``ceil(p / ranks_per_node)`` nodes:

* compute ``t_c``: measured (one rank's forward, backward and update), or given;
* ring allreduce of ``G`` gradient bytes: ``2 (p - 1) / p * G / B + 2 (p - 1) * L`` over
  links of bandwidth ``B`` and per-message latency ``L`` (Patarasuk and Yuan 2009; the
  algorithm Horovod uses across nodes);
* input of ``R`` bytes per rank per step, read ahead of use so it overlaps compute:
  from a shared file system of aggregate bandwidth ``F`` shared by all ranks,
  ``t_io = p * R / F``, or from node-local copies (``DH5_STAGE=1``) at ``S`` per node,
  ``t_io = ranks_per_node * R / S``.

Step time ``max(t_c, t_io) + t_allreduce``: this package averages gradients in one grouped
allreduce after the backward pass, so communication is not overlapped with compute.
Weak-scaling efficiency is ``t_step(1) / t_step(p)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Assumptions:
    compute_seconds: float  # per step, one rank
    gradient_bytes: int  # allreduced per step
    read_bytes: int  # per rank per step
    link_gbit_per_second: float = 100.0  # inter-node network, per node
    latency_seconds: float = 5e-6  # per message in the ring
    shared_fs_gbyte_per_second: float = 20.0  # aggregate, all clients together
    local_gbyte_per_second: float = 2.0  # node-local NVMe, per node
    ranks_per_node: int = 8


@dataclass(frozen=True)
class Projection:
    ranks: int
    nodes: int
    compute_seconds: float
    allreduce_seconds: float
    shared_io_seconds: float
    staged_io_seconds: float
    shared_step_seconds: float
    staged_step_seconds: float
    shared_efficiency: float
    staged_efficiency: float


def allreduce_seconds(ranks: int, gradient_bytes: int, link_bytes_per_second: float, latency: float) -> float:
    """Ring allreduce time: each rank sends and receives 2 (p - 1) / p of the data in 2 (p - 1) messages."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * gradient_bytes / link_bytes_per_second + 2 * (ranks - 1) * latency


def project(assumptions: Assumptions, ranks: list[int]) -> list[Projection]:
    """The projected step time and efficiency at each rank count."""
    a = assumptions
    link = a.link_gbit_per_second * 1e9 / 8

    def point(p: int) -> Projection:
        nodes = math.ceil(p / a.ranks_per_node)
        reduce = allreduce_seconds(p, a.gradient_bytes, link, a.latency_seconds)
        shared_io = p * a.read_bytes / (a.shared_fs_gbyte_per_second * 1e9)
        staged_io = min(p, a.ranks_per_node) * a.read_bytes / (a.local_gbyte_per_second * 1e9)
        shared = max(a.compute_seconds, shared_io) + reduce
        staged = max(a.compute_seconds, staged_io) + reduce
        return Projection(p, nodes, a.compute_seconds, reduce, shared_io, staged_io, shared, staged, 0.0, 0.0)

    base = point(1)
    return [
        Projection(**{**vars(q), "shared_efficiency": base.shared_step_seconds / q.shared_step_seconds,
                      "staged_efficiency": base.staged_step_seconds / q.staged_step_seconds})
        for q in map(point, ranks)
    ]


def describe(assumptions: Assumptions) -> str:
    a = assumptions
    return "\n".join([
        "assumptions:",
        f"  compute per step, one rank      {a.compute_seconds * 1e3:.2f} ms",
        f"  gradient bytes allreduced/step  {a.gradient_bytes / 1e6:.3f} MB",
        f"  bytes read per rank per step    {a.read_bytes / 1e6:.3f} MB",
        f"  network link per node           {a.link_gbit_per_second:g} Gb/s, {a.latency_seconds * 1e6:g} us per message",
        f"  shared file system, aggregate   {a.shared_fs_gbyte_per_second:g} GB/s",
        f"  node-local storage, per node    {a.local_gbyte_per_second:g} GB/s",
        f"  ranks per node                  {a.ranks_per_node}",
    ])


def table(projections: list[Projection]) -> str:
    lines = [f"{'ranks':>6}{'nodes':>6}{'compute ms':>11}{'allred. ms':>11}{'io ms shared':>13}{'io ms staged':>13}"
             f"{'step ms shared':>15}{'eff. shared':>12}{'eff. staged':>12}"]
    for q in projections:
        lines.append(f"{q.ranks:>6}{q.nodes:>6}{q.compute_seconds * 1e3:>11.2f}{q.allreduce_seconds * 1e3:>11.3f}"
                     f"{q.shared_io_seconds * 1e3:>13.3f}{q.staged_io_seconds * 1e3:>13.3f}"
                     f"{q.shared_step_seconds * 1e3:>15.2f}{q.shared_efficiency:>12.3f}{q.staged_efficiency:>12.3f}")
    return "\n".join(lines)


def rank_loss_seconds(projection: Projection, commit_every: int) -> float:
    """Training time a lost rank costs under ``train --elastic``, at most: the steps since the
    last commit (a rank lost in the step before a commit loses ``commit_every`` steps' work,
    every rank rolling back), at the projected step time (shared file system). Re-forming the
    ranks (Horovod's rendezvous, a new rank's start) comes on top and is not modelled."""
    return commit_every * projection.shared_step_seconds


def rank_loss(projections: list[Projection], commit_every: int) -> str:
    """What a lost rank costs, per projected rank count: with ``--elastic``, and without."""
    costs = ", ".join(f"{q.ranks} ranks {rank_loss_seconds(q, commit_every):.2f} s" for q in projections)
    return (f"a lost rank: with train --elastic --commit-every {commit_every}, every rank rolls back at most "
            f"{commit_every} steps ({costs}), plus re-forming the ranks; without --elastic the job ends and its "
            "requeue resumes from the newest checkpoint (at most an epoch back, or a --stop-signal checkpoint).")
