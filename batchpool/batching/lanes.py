"""Lanes of waiting jobs, and when and how they are cut into batches.

Imports ``batchpool.jobs``, ``batchpool.options``, ``batchpool.state`` and
the other ``batching`` modules (``lane``, ``sizing``, ``limits``); backends
call in.

Jobs wait here, in the parent, until a worker can take them; nothing queues
inside workers beyond a small prefetch. A lane holds the jobs of one
(priority, kind, key), the key being the callable unless the user names one.
A worker with a free slot asks ``take()`` for a batch and gets one from the
best ready lane:

* Which ready lane goes first (priority, round robin, aging) and when a lane
  is ready (size, delay, closing): ``batching.lane``.
* How many jobs a batch holds (measured run times, the REALTIME window):
  ``batching.sizing``.

Because jobs collect while every worker is busy, batches grow with load by
themselves and stay small (fast) when the pool is idle.

Retried jobs come back through ``put_delayed`` and wait, without any thread
sleeping, until their backoff has passed.

Worker threads (the thread backend) wait for work in ``take_wait``, parked on
queues of their own (``batching.parking``). A job put while one is parked and
nothing is queued goes to it directly, past the lanes (``put``): the round
trip of a job on an idle pool is then a hand-off, as ``ThreadPoolExecutor``'s
is, instead of a lane lookup, a notify and a cut. Otherwise both backends'
submits append to an inbox without the lock (``lock_free_put``), which the
consumers move into the lanes; a submit then changes nothing a Ctrl-C could
leave half-done.

Per-key limits (``set_limit``; the bookkeeping is ``batching.limits``): a lane
whose key is at its concurrency or rate limit is skipped, so other lanes go on,
and a batch cut from a limited lane holds at most what the limit allows now.
Each job cut from a limited lane holds a slot (``holding``) until the ledger
says it is done (``job_done``) or it comes back to the lanes (``put_back``,
``put_delayed``); unlimited keys never enter ``holding``, so they pay nothing.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from ..jobs import BATCHED_KINDS, CALLS, CHUNK_KINDS, Batch, Job, items_of
from ..options import Priority
from ..state import Phase, PoolState
from .lane import AGE_STEP, Lane, LaneTable, candidates, lane_key
from .limits import KeyLimits, Unlimited
from .parking import Parking
from .sizing import Sizer, timing_key

__all__ = ["AGE_STEP", "Batcher", "lane_key"]

_PAUSED = Phase.PAUSED  # module constants: submit compares with them on every call
_RUNNING = Phase.RUNNING
_CLOSING = Phase.CLOSING
_BROKEN = Phase.BROKEN
_REALTIME = Priority.REALTIME


class Batcher:
    """The lanes of one pool. Thread-safe; ``put`` is cheap (one short lock).

    Args:
        max_batch_size: most jobs in one batch (default for every key).
        max_delay: seconds a partial batch may wait for more jobs (0: none).
        target_batch_time: seconds of measured work one batch should hold.
        max_pending: most jobs queued at once (None: no limit); see ``put``.
        auto: size batches of ``@batched`` functions by measured time too
            (``max_batch_size="auto"``); plain jobs always are.
        clock: monotonic clock, injectable for tests.
        state: the pool's lifecycle, whose lock the lanes share (a fresh one
            by default): nothing is handed out while it is paused, and every
            lane flushes at once once it is closing.

    Example:
        >>> b = Batcher(max_batch_size=8, max_delay=0.0)
        >>> b.put(Job(print, ("hi",), None))  # True: queued
        True
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
        max_pending: int | None = None,
        auto: bool = False,
        clock: Callable[[], float] = time.monotonic,
        state: PoolState | None = None,
    ) -> None:
        self.state = state if state is not None else PoolState(1)
        #: Run-time estimates and batch sizes (``batching.sizing``); under ``_lock``.
        self.sizer = Sizer(target_batch_time=target_batch_time, auto=auto)
        self.max_pending = max_pending
        self._clock = clock
        # One lock for lanes, counters and the pool's lifecycle; every critical
        # section is a few dict/deque operations, and no user code runs under it.
        self._lock = self.state.lock
        self._space = self.state.condition()  # blocked submitters wait here
        self._table = LaneTable(max_batch_size, max_delay, timing_key)  # the lanes (``batching.lane``)
        self._delayed: list[tuple[float, int, Job]] = []  # heap of retries by ready time
        self._seq = itertools.count()
        self._estimates = self.sizer.estimates  # the same dict (tests seed it)
        # Run times recorded without the lock, fed to the sizer by the next
        # look at the lanes (``record``).
        self._timings: deque[tuple[Hashable, int, float]] = deque()
        self._pending = 0  # queued jobs, delayed ones included
        self._submitted = 0  # the user's jobs moved into the lanes (a map chunk counts its items)
        # Jobs put without the lock, in arrival order, not in their lanes yet:
        # every locked method that looks at the lanes moves them there first.
        self._inbox: deque[Job] = deque()
        # Idle worker threads park here (``batching.parking``), woken on every
        # pool transition as a condition of the state would be; a thread
        # looks at the inbox once parked, for a put that did not see it.
        self._parking = Parking(self._lock, self._inbox)
        self._parked = self._parking.parked  # the same deque, read on every put
        self.state.notify_on_transition(self._parking)
        #: ``put`` may append to the inbox instead of taking the lock (when no
        #: ``max_pending`` applies), for a backend whose consumers look at
        #: ``pending`` when woken: the process manager (``notify()`` wakes
        #: it) and the thread backend (the put wakes a parked thread). Then a
        #: submit changes nothing but the inbox, one call into C, so a Ctrl-C
        #: in it cannot leave the lanes' counts half-updated.
        self.lock_free_put = False
        self._space_waiters = 0
        # A job may go straight to a parked thread (``put``) only while no lane
        # may linger: one that did would have waited for batch-mates.
        self._hand_offs = self._table.never_lingers()
        self._keys = KeyLimits()  # per-key limits (``batching.limits``); under ``_lock``
        self._limits = self._keys.limits  # the same dict, read on every take
        #: Job id -> the slot it holds (``KeyLimits.holding``, the same dict).
        #: Read without the lock by the ledger: it is non-empty whenever a job
        #: in it is being settled (the job went in first).
        self.holding: dict[int, Any] = self._keys.holding

    # -- submit side ---------------------------------------------------------

    def set_policy(self, key: Hashable, max_batch_size: int, max_delay: float) -> None:
        """Batching limits for the lane(s) of one key, instead of the defaults."""
        with self._lock:
            self._table.set_policy(key, max_batch_size, max_delay)
            self._hand_offs = self._table.never_lingers()

    def policy(self, key: Hashable) -> tuple[int, float]:
        """The batching limits of one key: (max_batch_size, max_delay)."""
        with self._lock:
            return self._table.policy(key)

    def set_limit(
        self,
        key: Hashable,
        *,
        max_concurrency: int | Unlimited | None = None,
        rate_limit: float | Unlimited | None = None,
        ramp: float | None = None,
    ) -> None:
        """Change the concurrency and rate limits of one key.

        None keeps a limit as it is; ``UNLIMITED`` lifts it. A new
        ``rate_limit`` or ``ramp`` replaces the key's token bucket (ending a
        ramp in progress; the tokens saved up are kept, up to the new burst);
        ``ramp`` alone ramps the current rate again. Jobs running now keep
        counting against the new concurrency limit (``KeyLimits.change``).

        Raises:
            ValueError: ``ramp`` without any rate limit.
        """
        with self._lock:
            self._keys.change(key, self._clock(), max_concurrency=max_concurrency, rate_limit=rate_limit, ramp=ramp)
            self._parking.notify_all()  # a raised limit may let waiting lanes go

    def is_limited(self, job: Job) -> bool:
        """The job's key has a concurrency or rate limit (read without the lock: a hint)."""
        return bool(self._limits) and lane_key(job)[2] in self._limits

    def job_done(self, job: Job) -> None:
        """A job cut from a limited lane has finished: free its slot (the ledger calls this)."""
        with self._lock:
            if self._keys.release(job.id) and self._parked:
                self._parking.notify()

    def key_limits(self) -> dict[Hashable, tuple[int, int | None, float | None, float, int]]:
        """Per limited key: (running, max_concurrency, rate limit now, starts in the last second, waiting)."""
        with self._lock:
            # The inbox is counted where it is, not moved: the main thread asks
            # (stats()), and a move interrupted by a Ctrl-C could lose a job.
            waiting = self._table.waiting(self._limits)
            for job in list(self._inbox):
                user_key = lane_key(job)[2]
                if user_key in self._limits:
                    waiting[user_key] = waiting.get(user_key, 0) + 1
            return self._keys.rows(self._clock(), waiting)

    def put(self, job: Job, *, block: bool = False, timeout: float | None = None) -> bool:
        """Queue one job.

        When ``max_pending`` jobs are queued already: with ``block``, wait for
        room (up to ``timeout`` seconds) and return False if none came;
        without, return False at once. Returns True once the job is queued.

        Raises:
            RuntimeError (or the error given to ``close``): the batcher is closed.
        """
        state = self.state
        if (
            self._parked
            and not self._pending
            and not self._inbox
            and self._hand_offs
            and not self._limits
            and job.kind == CALLS
            and state.phase == _RUNNING
            and not state.close_requested
        ):
            # An idle thread and nothing queued: the job goes to the thread
            # directly, past the lanes (``batching.parking``). Nothing is
            # queued, so no other job is overtaken, and the lane would have
            # been cut at once for the free thread anyway.
            if job.opts.priority == _REALTIME:
                self.sizer.last_realtime = job.t_submit
            if self._parking.hand_off(job):
                return True
        if self.lock_free_put and self.max_pending is None:
            # The lock was taken by every submit and by the consumer on every
            # batch, and under the GIL each contention cost two thread switches
            # (the parent's busiest line). The caller checked the state; a
            # close since then is seen here, after the append: the job is
            # taken back and refused, or the consumer has it already, and then
            # it came in before the close (the consumer's last look at
            # ``pending``, after the close, counts the inbox).
            self._inbox.append(job)
            if state.phase > _PAUSED or state.close_requested:
                with self._lock:
                    try:
                        self._inbox.remove(job)
                    except ValueError:
                        return True  # in its lane already: it runs
                    refusal = state.refusal()
                    assert refusal is not None  # closing or close requested: never accepting again
                    raise refusal
            if self._parked:
                self._parking.notify()  # no lock needed (``batching.parking``)
            return True
        key = lane_key(job)
        with self._lock:
            if self._inbox:
                self._absorb_locked()  # earlier jobs first
            if state.phase > _PAUSED or state.close_requested:
                refusal = state.refusal()
                if refusal is not None:
                    raise refusal
            limit = self.max_pending
            if limit is not None and self._pending >= limit:
                if not block:
                    return False
                deadline = None if timeout is None else self._clock() + timeout
                self._space_waiters += 1
                try:
                    while self._pending >= limit and self.state.accepting:
                        remaining = None if deadline is None else deadline - self._clock()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._space.wait(remaining)
                finally:
                    self._space_waiters -= 1
                refusal = self.state.refusal()
                if refusal is not None:
                    raise refusal
            self._queue_locked(key, job)
            self._submitted += 1 if job.kind == CALLS else items_of(job)
            return True

    def _absorb_locked(self) -> None:
        """Move the jobs put without the lock into their lanes, in arrival order."""
        inbox = self._inbox
        # Runs of jobs of one callable, kind and options (a loop of submits)
        # share a lane: the key is worked out once per run, not per job. The
        # lane cannot go inactive meanwhile: nothing takes from it without the lock.
        fn = opts = lane = None
        kind = -1
        while inbox:
            try:
                job = inbox.popleft()
            except IndexError:
                return  # taken back by a refused put meanwhile
            if job.fn is fn and job.opts is opts and job.kind == kind and lane is not None:
                self._pending += 1  # first, as in _queue_locked
                lane.jobs.append(job)
                if lane.priority == _REALTIME:
                    self.sizer.last_realtime = job.t_submit
            else:
                lane = self._queue_locked(lane_key(job), job)
                fn, opts, kind = job.fn, job.opts, job.kind
            self._submitted += 1 if kind == CALLS else items_of(job)

    @property
    def submitted(self) -> int:
        """The user's jobs ever accepted by ``put`` (a map chunk counts its items); no lock taken."""
        waiting = list(self._inbox)  # a snapshot (a job moving to its lane meanwhile may count twice, briefly)
        inbox = sum(1 if job.kind == CALLS else items_of(job) for job in waiting)
        return self._submitted + inbox + self._parking.handed

    def put_delayed(self, job: Job, delay: float) -> None:
        """Queue a job again after ``delay`` seconds (a retry; never refused)."""
        with self._lock:
            if self.holding:
                self._keys.release(job.id)
            heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), job))
            self._pending += 1
            self._parking.notify()

    def put_back(self, jobs: list[Job]) -> None:
        """Return jobs that were taken but never started to the front of their lanes.

        They keep their place ahead of later arrivals, and are never refused
        (not even by ``max_pending`` or a closing pool: they were accepted).
        """
        with self._lock:
            for job in reversed(jobs):
                if self.holding:
                    self._keys.release(job.id)
                self._table.lane(lane_key(job), job).jobs.appendleft(job)
                self._pending += 1
            if self._parked:
                self._parking.notify(len(jobs))

    def _queue_locked(self, key: tuple[Any, ...], job: Job) -> Lane:
        if key[0] == Priority.REALTIME:
            self.sizer.last_realtime = job.t_submit
        lane = self._table.lane(key, job)
        self._pending += 1  # first: a count one too high is mended at close (take_wait), a job lost is not
        lane.jobs.append(job)
        if self._parked:
            self._parking.notify()
        return lane

    @property
    def max_batch_size(self) -> int:
        """Most jobs in one batch, for keys without a policy of their own."""
        return self._table.max_batch_size

    @property
    def max_delay(self) -> float:
        """Seconds a partial batch may wait, for keys without a policy of their own."""
        return self._table.max_delay

    @property
    def target_batch_time(self) -> float:
        """Seconds of measured work one batch should hold."""
        return self.sizer.target_batch_time

    @property
    def auto(self) -> bool:
        """Batches of ``@batched`` functions are sized by measured time too."""
        return self.sizer.auto

    @property
    def pending(self) -> int:
        """Jobs queued and not yet cut into a batch (cancelled ones included)."""
        return self._pending + len(self._inbox)

    @property
    def waiters(self) -> int:
        """Worker threads blocked in ``take_wait`` (idle), for spawn decisions."""
        return len(self._parked)

    def depths(self) -> dict[str, int]:
        """Jobs waiting per lane, labelled 'PRIORITY/key' (a snapshot)."""
        with self._lock:
            lanes = self._table.depths()
            inbox = list(self._inbox)  # counted where it is, not moved (as in key_limits)
        lanes.extend((lane_key(job), 1) for job in inbox)
        depths: dict[str, int] = {}
        for key, depth in lanes:
            name = key[2] if isinstance(key[2], str) else getattr(key[2], "__qualname__", None) or repr(key[2])
            label = f"{Priority(key[0]).name}/{name}"
            depths[label] = depths.get(label, 0) + depth
        return depths

    # -- worker side ---------------------------------------------------------

    def take(self, *, max_jobs: int, idle_workers: int, prefetch: bool = False, workers: int = 1) -> Batch | None:
        """Cut the next batch, or return None when no lane is ready.

        Args:
            max_jobs: most jobs the asking worker may take (its task budget).
            idle_workers: workers that are idle now, counting the asking one;
                a ready lane is split evenly among them.
            prefetch: the worker is still busy; only take jobs known to be
                quick, or a lane deep enough (two jobs per worker) that no
                worker can run dry while this one waits behind its batch.
            workers: how many workers the pool has (for that depth rule).
        """
        with self._lock:
            return self._take_locked(max_jobs, max(1, idle_workers), prefetch, max(1, workers), self._clock())

    def take_wait(
        self,
        *,
        stop: Callable[[], bool],
        steal: Callable[[float], tuple[Batch | None, float | None]] | None = None,
    ) -> Batch | None:
        """Block until a batch is ready and return it (worker threads).

        ``steal(now)``, called when no lane is ready, may return a batch taken
        from a busy thread instead, or when to ask again. Returns None when
        the pool is closing and nothing is queued, or ``stop()`` is true.
        """
        state = self.state  # its phase is compared directly below: a property call each is this thread's idle path
        with self._lock:
            while True:
                if stop() or state.phase >= _BROKEN:
                    return None
                now = self._clock()
                if self._pending or self._inbox:
                    batch = self._take_locked(self._table.max_batch_size, len(self._parked) + 1, False, 1, now)
                    if batch is not None:
                        return batch
                retry_at = None
                if steal is not None and state.phase != _PAUSED:
                    batch, retry_at = steal(now)
                    if batch is not None:
                        return batch
                if state.phase >= _CLOSING:
                    # Nothing to cut while closing: count the queue again, from
                    # the lanes. A count left half-updated (a Ctrl-C in the
                    # main thread under the lock) would keep every thread
                    # waiting, and shutdown joining them, or leave a job behind.
                    counted = len(self._delayed) + self._table.queued()
                    if counted != self._pending:
                        self._pending = counted
                        continue
                if not self._pending:
                    if self._inbox:
                        continue  # put meanwhile, without the lock
                    if state.phase >= _CLOSING:
                        self._parking.notify_all()  # let the other idle threads see it too
                        return None
                    deadline = None
                else:
                    deadline = self._next_deadline_locked()
                if retry_at is not None:
                    deadline = retry_at if deadline is None else min(deadline, retry_at)
                job = self._parking.wait(None if deadline is None else deadline - now)
                if job is not None:
                    batch = self._handed_locked(job)
                    if batch is not None:
                        return batch

    def _handed_locked(self, job: Job) -> Batch | None:
        """The batch of one job handed to this thread by ``put``; None if it must queue after all.

        The thread that got it takes it, whatever happened meanwhile (the job
        is in no lane, so nothing else would): only a pause made since sends
        it to its lane, to wait with the rest.
        """
        if self.state.phase == _PAUSED:
            self._queue_locked(lane_key(job), job)
            return None
        batch = Batch([job], "free worker", timing_key(job.fn, job.kind))
        batch.fresh = True
        return batch

    def _take_locked(self, max_jobs: int, idle: int, prefetch: bool, workers: int, now: float) -> Batch | None:
        if self._inbox:
            self._absorb_locked()
        if not self._pending:
            return None  # nothing queued, nor waiting for a retry: an idle pool's threads ask often
        if self._timings:
            self._feed_timings_locked()
        if self.state.phase != Phase.RUNNING and not self.state.closing:
            return None  # paused: queued work waits (retry backoffs still count down)
        if self._delayed and self._delayed[0][0] <= now:
            self._promote_locked(now)
        limits = self._limits
        closing = self.state.closing
        for key, lane, reason in candidates(self._table.active, now, closing):
            size = self.sizer.size(lane, max_jobs, idle, prefetch, workers, now, closing)
            if size == 0:
                continue
            limit = limits.get(key[2]) if limits else None
            if limit is not None:
                size = min(size, limit.allowance(now, batched=key[1] in BATCHED_KINDS))
                if size == 0:
                    continue  # at its limit: other lanes go on
                if key[1] in CHUNK_KINDS and limit.bucket is not None:
                    size = 1  # a map chunk is charged its items (below): one at a time
            jobs = lane.pop(size)
            self._pending -= len(jobs)
            if limit is not None:
                cost = sum(len(job.args[0]) for job in jobs) if key[1] in CHUNK_KINDS else len(jobs)
                self._keys.hold(limit, [job.id for job in jobs], now, batched=key[1] in BATCHED_KINDS, cost=cost)
            self._table.served(key, lane, now)
            if self._space_waiters:
                self._space.notify(len(jobs))
            batch = Batch(jobs, reason, lane.timing_key)
            batch.fresh = True
            return batch
        return None

    def _promote_locked(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, job = heapq.heappop(delayed)
            self._pending -= 1
            self._queue_locked(lane_key(job), job)

    # -- timing ----------------------------------------------------------------

    def record(self, key: Hashable, jobs: int, seconds: float) -> None:
        """Feed the measured run time of a finished batch of ``jobs`` jobs into its estimate.

        The rule (a slower sample is believed at once, a quicker one moves the
        estimate by a weighted average) is ``Sizer.record``'s.

        Example:
            >>> b = Batcher(max_batch_size=100, max_delay=0)
            >>> b.record("f", 1, 0.0001); b.estimate("f")
            (0.0001, 1)
            >>> b.record("f", 2, 0.02); b.estimate("f")  # 100x slower per job: believed at once
            (0.01, 2)
        """
        if jobs > 0:
            # Queued, not applied: the thread recording it is on its way back
            # to idle, often with a caller waiting for the GIL. Estimates are
            # only read under the lock, which feeds the queue in first.
            timings = self._timings
            timings.append((key, jobs, seconds))
            if len(timings) >= 512:  # an idle pool's hand-offs never look at the lanes: bound it
                with self._lock:
                    self._feed_timings_locked()

    def _feed_timings_locked(self) -> None:
        timings, record = self._timings, self.sizer.record
        while timings:
            record(*timings.popleft())  # only ever popped under the lock

    def estimate(self, key: Hashable) -> tuple[float, int] | None:
        """Seconds per job and the largest batch measured, for a timing key (None: never timed)."""
        with self._lock:
            if self._timings:
                self._feed_timings_locked()
            return self.sizer.estimates.get(key)

    def next_deadline(self) -> float | None:
        """When a lingering lane or a delayed retry becomes ready (batcher clock)."""
        with self._lock:
            return self._next_deadline_locked()

    def _next_deadline_locked(self) -> float | None:
        if self._inbox:
            self._absorb_locked()
        if not self._pending:
            return None  # no lane lingers and no retry waits
        deadlines = [self._delayed[0][0]] if self._delayed else []
        if self._limits:
            now = self._clock()
            for key in self._table.active_keys():
                limit = self._limits.get(key[2])
                at = limit.ready_at(now) if limit is not None else None
                if at is not None:
                    deadlines.append(at)  # a rate-limited lane gets its next token
        if not self.state.closing:
            deadlines.extend(self._table.linger_deadlines())
        return min(deadlines) if deadlines else None

    # -- lifecycle ---------------------------------------------------------------

    def cancel_queued(self) -> list[Job]:
        """Remove every queued job whose Future has not started, and return them.

        The caller cancels their Futures, outside any lock, since that runs
        callbacks. Jobs already started (a retry waiting for its backoff, or
        the unstarted rest of a batch given back) stay and run.
        """
        with self._lock:
            removed = self._drain_locked(started=False)
            self._parking.notify_all()
            self._space.notify_all()
        return removed

    def drain(self) -> list[Job]:
        """Remove and return every queued job, retries included (a dying pool fails them)."""
        with self._lock:
            removed = self._drain_locked(started=True)
            self._parking.notify_all()
            self._space.notify_all()
        return removed

    def _drain_locked(self, *, started: bool) -> list[Job]:
        self._absorb_locked()
        removed = self._table.clear()
        if started:
            removed.extend(job for _, _, job in self._delayed)
            self._delayed.clear()
        else:
            keep = [job for job in removed if job.started]
            removed = [job for job in removed if not job.started]
            for job in keep:
                self._table.lane(lane_key(job), job).jobs.append(job)
        self._pending = len(self._delayed) + self._table.queued()
        return removed

    def thread_exits(self) -> None:
        """The calling worker thread is leaving: its parking spot goes (its hand-offs stay counted)."""
        with self._lock:
            self._parking.leave()

    def wake_all(self) -> None:
        """Wake every thread blocked in ``take_wait`` (so it re-checks ``stop``)."""
        with self._lock:
            self._parking.notify_all()

    def wake_one(self) -> None:
        """Wake one thread blocked in ``take_wait`` (there is work it may take)."""
        with self._lock:
            self._parking.notify()

    @property
    def closed(self) -> bool:
        """True once the pool is closing (no new jobs; lanes flush at once)."""
        return self.state.closing
