"""A fake :class:`~distributed_h5.engines.collective.Collective`: N simulated ranks in one process.

Each rank runs in its own thread (:func:`run_ranks`). Every host call is a rendezvous: each
rank posts its call and argument, the last to arrive completes the round, and every rank
returns what the real engine would (sums over ranks, rank 0's object, ...). A round in
which ranks made different calls fails on every rank with :class:`CollectiveMismatch` (a
real job would hang or mix up data there); a round some rank never joins fails after
``timeout`` seconds with :class:`CollectiveTimeout` naming the ranks that are missing (a
real job would hang); a rank that raised makes every rank still waiting fail at once with
:class:`RankLeft`.

The in-graph calls (``average_gradients``, ``sum_in_step``) raise NotImplementedError: the
glue tests drive callbacks' hooks and never run a compiled step.

Example:
    >>> run_ranks(3, lambda collective: collective.sum([np.array([collective.rank])])[0].tolist())
    [[3], [3], [3]]
"""

from __future__ import annotations

import copy
import functools
import threading
import time

import numpy as np

TIMEOUT = 30.0  # seconds a rank waits for the others in one collective call: far above any glue test


class CollectiveMismatch(AssertionError):
    """The ranks made different collective calls in the same round."""


class CollectiveTimeout(AssertionError):
    """Some rank never made the collective call the others wait in (a hang in a real job)."""


class RankLeft(RuntimeError):
    """Another rank raised while this one waited in a collective call."""


class World:
    """The rendezvous the ranks of one simulated job share."""

    def __init__(self, size: int, timeout: float = TIMEOUT):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1. Received: size={size!r}")
        self.size, self.timeout = size, timeout
        self._condition = threading.Condition()
        self._posted: dict[int, tuple[str, object]] = {}
        self._round = 0  # rounds completed
        self._completed: list[tuple[str, object]] = []  # the last completed round's posts, in rank order
        self._left: tuple[int, BaseException] | None = None

    def exchange(self, rank: int, call: str, value):
        """Post ``(call, value)`` for this round; return every rank's value, in rank order."""
        with self._condition:
            self._raise_if_left(rank, call)
            this_round = self._round
            self._posted[rank] = (call, value)
            if len(self._posted) == self.size:
                self._completed = [self._posted[r] for r in range(self.size)]
                self._posted = {}
                self._round += 1
                self._condition.notify_all()
            elif not self._condition.wait_for(lambda: self._round > this_round or self._left is not None,
                                              self.timeout):
                missing = sorted(set(range(self.size)) - set(self._posted))
                raise CollectiveTimeout(
                    f"rank {rank}: {call} (collective call {this_round + 1}) waited {self.timeout:g} s for rank(s) "
                    f"{missing}, which never made it: in a real job every rank would hang here")
            if self._round == this_round:  # woken by a rank that left, not by the round completing
                self._raise_if_left(rank, call)
            # The next round cannot complete before this rank posts to it: _completed is this round's.
            calls = [posted_call for posted_call, _ in self._completed]
            if len(set(calls)) > 1:
                raise CollectiveMismatch(f"rank {rank}: collective call {this_round + 1} differs between ranks: "
                                         + ", ".join(f"rank {r} {c}" for r, c in enumerate(calls)))
            return [posted_value for _, posted_value in self._completed]

    def leave(self, rank: int, error: BaseException) -> None:
        """Rank ``rank`` raised ``error``: wake every rank waiting for it."""
        with self._condition:
            if self._left is None:
                self._left = (rank, error)
            self._condition.notify_all()

    def _raise_if_left(self, rank, call):
        if self._left is not None:
            gone, error = self._left
            raise RankLeft(f"rank {rank}: {call}: rank {gone} left the job with "
                           f"{type(error).__name__}: {error}")


class FakeCollective:
    """One simulated rank's collective, Horovod-like: per-rank model replicas, host calls
    reduced across ranks. ``calls`` records each host call and this rank's argument."""

    name = "fake"
    global_step = False  # per-rank steps, as under Horovod: the glue averages moving statistics

    def __init__(self, world: World, rank: int, local_rank: int | None = None):
        if not 0 <= rank < world.size:
            raise ValueError(f"rank must be in [0, {world.size}). Received: rank={rank!r}")
        self.world, self.rank, self.size = world, rank, world.size
        self.local_rank = rank if local_rank is None else local_rank
        self.calls: list[tuple[str, object]] = []

    def _exchange(self, call: str, value):
        self.calls.append((call, value))
        return self.world.exchange(self.rank, call, value)

    # --- in-graph: the glue tests run no compiled step ------------------------------
    def average_gradients(self, grads):
        raise NotImplementedError("the fake collective runs no compiled step (average_gradients)")

    def sum_in_step(self, tensor):
        raise NotImplementedError("the fake collective runs no compiled step (sum_in_step)")

    # --- on the host --------------------------------------------------------------
    def sum(self, arrays):
        arrays = [np.asarray(a) for a in arrays]
        every = self._exchange("sum", arrays)
        return [functools.reduce(np.add, column).astype(a.dtype) for a, column in zip(arrays, zip(*every))]

    def mean(self, arrays):
        arrays = [np.asarray(a) for a in arrays]
        every = self._exchange("mean", arrays)
        return [(functools.reduce(np.add, column) / self.size).astype(a.dtype)
                for a, column in zip(arrays, zip(*every))]

    def max(self, value):
        return int(max(self._exchange("max", int(value))))

    def broadcast_object(self, value, root=0):
        # A deep copy: the real engines pickle, so no rank shares rank 0's object.
        return copy.deepcopy(self._exchange(f"broadcast_object(root={root})", value)[root])

    def broadcast_arrays(self, arrays, root=0):
        every = self._exchange(f"broadcast_arrays(root={root})", [np.array(a) for a in arrays])
        return [np.array(a) for a in every[root]]

    def broadcast_variables(self, variables, root=0):
        values = [np.array(v.numpy()) for v in variables]
        every = self._exchange(f"broadcast_variables(root={root})", values)
        if [np.shape(v) for v in every[root]] != [np.shape(v) for v in values]:
            raise CollectiveMismatch(f"rank {self.rank}: broadcast_variables: shapes "
                                     f"{[np.shape(v) for v in values]} differ from root's "
                                     f"{[np.shape(v) for v in every[root]]}")
        if self.rank != root:
            for variable, value in zip(variables, every[root]):
                variable.assign(value)

    def place(self, variables, values):
        # Not a collective: every rank assigns the values it holds (the same on every rank).
        for variable, value in zip(variables, values):
            variable.assign(value)

    def barrier(self):
        self._exchange("barrier", None)

    def release(self, variables):
        pass  # no collective: this process alone


def run_ranks(size: int, fn, timeout: float = TIMEOUT) -> list:
    """Run ``fn(collective)`` on ``size`` simulated ranks, one thread each (named ``rank<R>``).

    Returns each rank's result, in rank order. If a rank raised, re-raises the first
    exception raised (not the :class:`RankLeft` it caused elsewhere), with a note naming its rank.
    """
    world = World(size, timeout)
    results: list = [None] * size
    errors: list[tuple[float, int, BaseException]] = []

    def rank_main(rank: int) -> None:
        try:
            results[rank] = fn(FakeCollective(world, rank))
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            errors.append((time.monotonic(), rank, error))
            world.leave(rank, error)

    threads = [threading.Thread(target=rank_main, args=(rank,), name=f"rank{rank}", daemon=True)
               for rank in range(size)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout * 4  # a bound on a hang only: each call times out after ``timeout``
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise CollectiveTimeout(f"{thread.name} still runs {timeout * 4:g} s after the ranks started (a hang "
                                    "outside a collective call)")
    if errors:
        first = sorted(errors, key=lambda e: (isinstance(e[2], RankLeft), e[0]))[0]
        _, rank, error = first
        error.add_note(f"(raised on simulated rank {rank} of {size})")
        raise error
    return results
