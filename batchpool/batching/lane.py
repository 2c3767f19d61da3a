"""Lanes of waiting jobs: their keys and records, when one is ready, which ready one goes first.

Imports ``batchpool.jobs`` and ``batchpool.options`` only; the Batcher
(``batching.lanes``) holds the lanes and calls in, under its lock.

A lane holds the jobs of one (priority, kind, key), the key being the
callable unless the user names one. ``LaneTable`` holds one pool's lanes,
the active ones (holding jobs) per priority, and per-key batching policies.

* Priority: REALTIME before NORMAL before BULK, round robin among the lanes of
  one priority. Aging keeps lower lanes from starving: a lane whose oldest job
  has waited ``AGE_STEP`` seconds, and which was not served in the last
  ``AGE_STEP`` seconds, is served next whatever its priority. So under any load
  a BULK lane still gets a batch at least every ``AGE_STEP`` seconds, and a
  REALTIME job waits behind at most one such batch.
* Ready: a lane is ready when it has ``max_batch_size`` jobs, when its oldest
  job has waited ``max_delay``, when the pool is closing, or at once when
  ``max_delay`` is 0 (the default: flush as soon as a worker is free).
  REALTIME lanes never linger. Both limits can be set per key.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from ..jobs import CHUNK_KINDS, Job
from ..options import Priority

__all__ = ["AGE_STEP", "Lane", "LaneTable", "candidates", "lane_key"]

#: Seconds after which a waiting lower-priority lane is served regardless.
AGE_STEP = 0.25


def lane_key(job: Job) -> tuple[Any, ...]:
    """The lane a job waits in: priority, kind, key (or callable), timed or not."""
    opts = job.opts
    key: Hashable = opts.key if opts.key is not None else job.fn
    try:
        hash(key)
    except TypeError:
        # An unhashable callable gets a lane of its own identity; pop() checks
        # callables by identity too, so an id reused later cannot mix batches.
        key = ("id", id(key))
    return (opts.priority, job.kind, key, opts.timeout is not None)


class Lane:
    """The jobs of one lane key, in arrival order, and the limits they are cut by."""

    __slots__ = ("jobs", "key", "last_served", "max_batch_size", "max_delay", "priority", "timed", "timing_key")

    def __init__(
        self, key: tuple[Any, ...], job: Job, max_batch_size: int, max_delay: float, timing_key: Hashable
    ) -> None:
        self.key = key
        self.priority = int(job.opts.priority)
        # A call with a time limit goes alone and nothing is prefetched behind
        # it: stopping it means killing its worker. A map chunk's items are
        # stopped by the worker itself, so chunks batch and prefetch as usual.
        self.timed = job.opts.timeout is not None and job.kind not in CHUNK_KINDS
        self.timing_key = timing_key
        self.max_batch_size = max_batch_size
        self.max_delay = 0.0 if self.priority == Priority.REALTIME else max_delay
        self.last_served = job.t_submit
        self.jobs: deque[Job] = deque()

    def ready(self, now: float, closing: bool) -> str | None:
        """Why the lane may be cut now (a batch's ``reason``), or None while it lingers."""
        if closing:
            return "shutdown"
        if len(self.jobs) >= self.max_batch_size:
            return "size"
        if self.max_delay == 0:
            return "free worker"
        if now - self.jobs[0].t_submit >= self.max_delay:
            return "delay"
        return None

    def pop(self, size: int) -> list[Job]:
        """Take up to ``size`` jobs of one callable from the front (at least one)."""
        jobs = self.jobs
        first = jobs.popleft()
        out = [first]
        fn = first.fn
        # A batch carries one callable; equal-but-distinct callables are fine
        # (bound methods are created anew on every attribute access).
        while len(out) < size and jobs and (jobs[0].fn is fn or jobs[0].fn == fn):
            out.append(jobs.popleft())
        return out


def candidates(
    active: dict[int, OrderedDict[tuple[Any, ...], Lane]], now: float, closing: bool
) -> list[tuple[tuple[Any, ...], Lane, str]]:
    """Ready lanes in the order they should be served (``active``: lanes with jobs, per priority)."""
    ready: list[tuple[tuple[Any, ...], Lane, str]] = []
    starving: list[tuple[tuple[Any, ...], Lane, str]] = []
    for priority in (0, 1, 2):
        for key, lane in active[priority].items():
            reason = lane.ready(now, closing)
            if reason is None:
                continue
            if priority and now - lane.last_served >= AGE_STEP and now - lane.jobs[0].t_submit >= AGE_STEP:
                starving.append((key, lane, reason))
            else:
                ready.append((key, lane, reason))
    return starving + ready


class LaneTable:
    """One pool's lanes by key, the active ones per priority in round-robin order, per-key policies.

    No lock of its own: the Batcher calls it under its lock.

    Args:
        max_batch_size: the default most jobs in one batch.
        max_delay: the default seconds a partial batch may wait.
        timing: the timing key of a callable and kind (``sizing.timing_key``).
    """

    def __init__(self, max_batch_size: int, max_delay: float, timing: Callable[[Any, int], Hashable]) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self._timing = timing
        self.lanes: dict[tuple[Any, ...], Lane] = {}
        # Lanes that hold jobs, per priority, in round-robin order.
        self.active: dict[int, OrderedDict[tuple[Any, ...], Lane]] = {int(p): OrderedDict() for p in Priority}
        self.policies: dict[Hashable, tuple[int, float]] = {}

    def set_policy(self, key: Hashable, max_batch_size: int, max_delay: float) -> None:
        """Batching limits for the lane(s) of one key, instead of the defaults."""
        self.policies[key] = (max_batch_size, max_delay)
        for lane in self.lanes.values():
            if lane.key[2] == key:
                lane.max_batch_size = max_batch_size
                lane.max_delay = 0.0 if lane.priority == Priority.REALTIME else max_delay

    def policy(self, key: Hashable) -> tuple[int, float]:
        """The batching limits of one key: (max_batch_size, max_delay)."""
        return self.policies.get(key, (self.max_batch_size, self.max_delay))

    def never_lingers(self) -> bool:
        """No lane waits for batch-mates: neither the default nor any key's policy has a ``max_delay``."""
        return self.max_delay == 0 and all(delay == 0 for _, delay in self.policies.values())

    def lane(self, key: tuple[Any, ...], job: Job) -> Lane:
        """The lane of ``key``, made if needed, and marked active (it is about to get a job)."""
        lane = self.lanes.get(key)
        if lane is None:
            size, delay = self.policy(key[2])
            lane = self.lanes[key] = Lane(key, job, size, delay, self._timing(job.fn, job.kind))
        if not lane.jobs:
            self.active[lane.priority][key] = lane
        return lane

    def served(self, key: tuple[Any, ...], lane: Lane, now: float) -> None:
        """A batch was cut from the lane: it goes to the back of its round, or away when empty."""
        lane.last_served = now
        active = self.active[lane.priority]
        if lane.jobs:
            active.move_to_end(key)  # round robin within a priority
        else:
            del active[key]
            del self.lanes[key]  # empty lanes go: they hold the callable

    def active_keys(self) -> Iterator[tuple[Any, ...]]:
        """The keys of the lanes that hold jobs."""
        for active in self.active.values():
            yield from active

    def linger_deadlines(self) -> Iterator[float]:
        """When each lingering lane (``max_delay`` set) becomes ready by delay."""
        for active in self.active.values():
            for lane in active.values():
                if lane.max_delay:
                    yield lane.jobs[0].t_submit + lane.max_delay

    def waiting(self, keys: dict[Hashable, Any]) -> dict[Hashable, int]:
        """Jobs waiting per user key, for the keys in ``keys``."""
        waiting: dict[Hashable, int] = {}
        for key, lane in self.lanes.items():
            if key[2] in keys:
                waiting[key[2]] = waiting.get(key[2], 0) + len(lane.jobs)
        return waiting

    def depths(self) -> list[tuple[tuple[Any, ...], int]]:
        """(lane key, jobs waiting) of each lane that holds jobs."""
        return [(key, len(lane.jobs)) for key, lane in self.lanes.items() if lane.jobs]

    def clear(self) -> list[Job]:
        """Remove every lane; returns their jobs."""
        removed = [job for lane in self.lanes.values() for job in lane.jobs]
        self.lanes.clear()
        for active in self.active.values():
            active.clear()
        return removed

    def queued(self) -> int:
        """Jobs waiting in all lanes."""
        return sum(len(lane.jobs) for lane in self.lanes.values())
