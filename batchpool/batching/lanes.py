"""Lanes of waiting jobs, and when and how they are cut into batches.

Imports ``batchpool.jobs`` and ``batchpool.options`` only; backends call in.

Jobs wait here, in the parent, until a worker can take them; nothing queues
inside workers beyond a small prefetch. A lane holds the jobs of one
(priority, kind, callable). A worker with a free slot asks ``take()`` for a
batch and gets one from the best ready lane:

* priority first (REALTIME, NORMAL, BULK), round robin among lanes of one
  priority so one busy callable cannot starve another;
* a lane is ready when it has ``max_batch_size`` jobs, when its oldest job has
  waited ``max_delay``, when the pool is closing, or at once when ``max_delay``
  is 0 (the default: flush as soon as a worker is free);
* size: up to ``max_batch_size``, split evenly over the idle workers, and for
  jobs whose measured run time is known, no more than ``target_batch_time``
  worth of them, so slow jobs still spread over every worker. A callable never
  seen before goes out one job at a time until its first batch has been timed.

Because jobs collect while every worker is busy, batches grow with load by
themselves and stay small (fast) when the pool is idle.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from ..jobs import Batch, Job
from ..options import Priority

__all__ = ["Batcher", "lane_key"]

# How strongly one new timing sample moves a callable's run-time estimate.
_EWMA_WEIGHT = 0.3
# Timing estimates are kept by name, not by object (an object key would keep
# the user's callable, and anything bound to it, alive); bounded like a cache.
_MAX_ESTIMATES = 4096


def lane_key(job: Job) -> Hashable:
    """The lane a job waits in: its priority, its kind and its callable."""
    fn = job.fn
    try:
        hash(fn)
    except TypeError:
        # An unhashable callable gets a lane of its own identity; take() checks
        # callables by identity too, so an id reused later cannot mix batches.
        return (job.priority, job.kind, "id", id(fn))
    return (job.priority, job.kind, fn)


def timing_key(fn: Callable[..., Any], kind: int) -> Hashable:
    """Name-based key of a callable's run-time estimate (holds no reference)."""
    target = getattr(fn, "__func__", fn)
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return (module, name, kind)


class _Lane:
    __slots__ = ("jobs", "key", "priority", "timing_key")

    def __init__(self, key: Hashable, job: Job) -> None:
        self.key = key
        self.priority = job.priority
        self.timing_key = timing_key(job.fn, job.kind)
        self.jobs: deque[Job] = deque()


class Batcher:
    """The lanes of one pool. Thread-safe; ``put`` is cheap (one short lock).

    Args:
        max_batch_size: most jobs in one batch.
        max_delay: seconds a partial batch may wait for more jobs (0: none).
        target_batch_time: seconds of measured work one batch should hold.
        clock: monotonic clock, injectable for tests.

    Example:
        >>> from concurrent.futures import Future
        >>> b = Batcher(max_batch_size=8, max_delay=0.0)
        >>> b.put(Job(print, ("hi",), None, Future()))
        >>> batch = b.take(max_jobs=8, idle_workers=1)
        >>> len(batch.jobs), batch.reason
        (1, 'free worker')
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_delay: float,
        target_batch_time: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.target_batch_time = target_batch_time
        self._clock = clock
        # One lock for lanes and counters; every critical section is a few
        # dict/deque operations, and no user code runs under it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._lanes: dict[Hashable, _Lane] = {}
        # Lanes that hold jobs, per priority, in round-robin order.
        self._active: dict[int, OrderedDict[Hashable, _Lane]] = {int(p): OrderedDict() for p in Priority}
        self._estimates: OrderedDict[Hashable, float] = OrderedDict()
        self._pending = 0
        self._waiters = 0  # threads blocked in take_wait(); read without the lock
        self._closed = False  # no more put(); every lane flushes at once
        self._closed_reason = ""
        self._closed_error: type[BaseException] = RuntimeError

    # -- submit side ---------------------------------------------------------

    def put(self, job: Job) -> None:
        """Queue one job. Raises RuntimeError once the batcher is closed."""
        key = lane_key(job)
        with self._lock:
            if self._closed:
                raise self._closed_error(self._closed_reason)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key, job)
            if not lane.jobs:
                self._active[lane.priority][key] = lane
            lane.jobs.append(job)
            self._pending += 1
            if self._waiters:
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Jobs queued and not yet cut into a batch (cancelled ones included)."""
        return self._pending

    @property
    def waiters(self) -> int:
        """Worker threads blocked in ``take_wait`` (idle), for spawn decisions."""
        return self._waiters

    # -- worker side ---------------------------------------------------------

    def take(self, *, max_jobs: int, idle_workers: int, prefetch: bool = False) -> Batch | None:
        """Cut the next batch, or return None when no lane is ready.

        Args:
            max_jobs: most jobs the asking worker may take (its task budget).
            idle_workers: workers that are idle now, counting the asking one;
                a ready lane is split evenly among them.
            prefetch: the worker is still busy; only take jobs known to be
                quick, so nothing waits behind a slow batch that another worker
                could have run.
        """
        with self._lock:
            return self._take_locked(max_jobs, max(1, idle_workers), prefetch, self._clock())

    def take_wait(self, *, stop: Callable[[], bool]) -> Batch | None:
        """Block until a batch is ready and return it (worker threads).

        Returns None when the batcher is closed and empty, or ``stop()`` is true.
        """
        with self._lock:
            while True:
                if stop():
                    return None
                now = self._clock()
                batch = self._take_locked(self.max_batch_size, self._waiters + 1, False, now)
                if batch is not None:
                    return batch
                if self._closed and not self._pending:
                    self._cond.notify_all()  # let the other idle threads see it too
                    return None
                deadline = self._next_deadline_locked()
                self._waiters += 1
                try:
                    self._cond.wait(None if deadline is None else max(0.0, deadline - now))
                finally:
                    self._waiters -= 1

    def _take_locked(self, max_jobs: int, idle: int, prefetch: bool, now: float) -> Batch | None:
        for priority in (0, 1, 2):
            active = self._active[priority]
            for key, lane in active.items():
                reason = self._ready(lane, now)
                if reason is None:
                    continue
                size = self._size(lane, max_jobs, idle, prefetch)
                if size == 0:
                    continue
                jobs = self._pop(lane, size)
                if lane.jobs:
                    active.move_to_end(key)  # round robin within a priority
                else:
                    del active[key]
                    del self._lanes[key]  # empty lanes go: they hold the callable
                return Batch(jobs, reason, lane.timing_key)
        return None

    def _ready(self, lane: _Lane, now: float) -> str | None:
        if self._closed:
            return "shutdown"
        if len(lane.jobs) >= self.max_batch_size:
            return "size"
        if self.max_delay == 0 or lane.priority == Priority.REALTIME:
            return "free worker"
        if now - lane.jobs[0].t_submit >= self.max_delay:
            return "delay"
        return None

    def _size(self, lane: _Lane, max_jobs: int, idle: int, prefetch: bool) -> int:
        queued = len(lane.jobs)
        size = min(self.max_batch_size, max_jobs, queued)
        if self.max_delay and not self._closed:
            return size  # the user asked for size-or-delay batches: keep them whole
        estimate = self._estimates.get(lane.timing_key)
        if estimate is None:
            # Never timed: probe with single jobs until the first batch is back.
            return 0 if prefetch else min(size, 1)
        if estimate > 0:
            size = min(size, max(1, int(self.target_batch_time / estimate)))
        if prefetch and estimate * size > self.target_batch_time:
            return 0
        return min(size, math.ceil(queued / idle))

    def _pop(self, lane: _Lane, size: int) -> list[Job]:
        jobs = lane.jobs
        first = jobs.popleft()
        out = [first]
        fn = first.fn
        # A batch carries one callable; equal-but-distinct callables are fine
        # (bound methods are created anew on every attribute access).
        while len(out) < size and jobs and (jobs[0].fn is fn or jobs[0].fn == fn):
            out.append(jobs.popleft())
        self._pending -= len(out)
        return out

    # -- timing ----------------------------------------------------------------

    def record(self, key: Hashable, jobs: int, seconds: float) -> None:
        """Feed the measured run time of a finished batch into its estimate."""
        if jobs <= 0:
            return
        sample = seconds / jobs
        with self._lock:
            old = self._estimates.pop(key, None)
            self._estimates[key] = sample if old is None else old + _EWMA_WEIGHT * (sample - old)
            if len(self._estimates) > _MAX_ESTIMATES:
                self._estimates.popitem(last=False)

    def estimate(self, key: Hashable) -> float | None:
        """Seconds one job of this timing key is expected to run, if measured."""
        return self._estimates.get(key)

    def next_deadline(self) -> float | None:
        """When the next lingering lane becomes ready, on this batcher's clock."""
        with self._lock:
            return self._next_deadline_locked()

    def _next_deadline_locked(self) -> float | None:
        if not self.max_delay or self._closed:
            return None
        oldest = [
            lane.jobs[0].t_submit
            for active in self._active.values()
            for lane in active.values()
            if lane.priority != Priority.REALTIME
        ]
        return min(oldest) + self.max_delay if oldest else None

    # -- lifecycle ---------------------------------------------------------------

    def close(
        self,
        reason: str,
        *,
        cancel: bool = False,
        error: type[BaseException] = RuntimeError,
    ) -> list[Job]:
        """Refuse new jobs from now on; flush every lane without lingering.

        ``put`` raises ``error(reason)`` from now on; a later call with another
        error (a pool that breaks while shutting down) replaces it. With
        ``cancel``, remove every queued job and return them (the caller cancels
        their Futures, outside any lock, since that runs callbacks).
        """
        with self._lock:
            if not self._closed or error is not RuntimeError:
                self._closed = True
                self._closed_reason = reason
                self._closed_error = error
            removed = self._drain_locked() if cancel else []
            self._cond.notify_all()
        return removed

    def drain(self) -> list[Job]:
        """Remove and return every queued job (a broken pool fails them)."""
        with self._lock:
            removed = self._drain_locked()
            self._cond.notify_all()
        return removed

    def _drain_locked(self) -> list[Job]:
        removed = [job for lane in self._lanes.values() for job in lane.jobs]
        self._lanes.clear()
        for active in self._active.values():
            active.clear()
        self._pending = 0
        return removed

    def wake_all(self) -> None:
        """Wake every thread blocked in ``take_wait`` (so it re-checks ``stop``)."""
        with self._lock:
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed
