"""One lane of waiting jobs: its key, its record, when it is ready, and which ready lane goes first.

Imports ``batchpool.jobs`` and ``batchpool.options`` only; the Batcher
(``batching.lanes``) holds the lanes and calls in, under its lock.

A lane holds the jobs of one (priority, kind, key), the key being the
callable unless the user names one.

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
from collections.abc import Hashable
from typing import Any

from ..jobs import Job
from ..options import Priority

__all__ = ["AGE_STEP", "Lane", "candidates", "lane_key"]

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
        self.timed = job.opts.timeout is not None
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
