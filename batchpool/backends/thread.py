"""Thread backend: worker threads in this process, no serialization.

Threads start as ``ThreadPoolExecutor``'s do: every submit takes an idle token
(a thread that went idle leaves one), and a submit that finds none starts a
new thread, up to ``max_workers``. An idle thread waits in
``Batcher.take_wait``, parked on a queue of its own, and a job submitted to an
idle pool is handed to it directly (``batching.parking``); the batch it gets
runs job by job through the shared runner, and the ledger settles each Future
as soon as its job returns, the last one before the batch's bookkeeping.

Work-conserving: a thread that finds no ready lane takes the unstarted rest
of a busy thread's batch (from its far end) once that thread's current job
has run ``STEAL_AFTER`` seconds, so no job waits behind a slow batch-mate
while a thread is idle (an ``Event.wait`` and its ``Event.set`` batched
together must not deadlock, as they would not with the standard pool).

Resizing (``PoolState.target_workers``): threads above the target exit when
they next go idle (their ``take_wait`` stop predicate retires one at a time,
under the lock, so exactly the surplus goes); a larger target starts threads
for the queued work at once, and more on demand as submits come.

Timeouts: a thread cannot be stopped from outside. A watchdog thread (started
with the first timed job) fails the job on time with ``JobTimeoutError``,
marks its thread abandoned and starts a replacement; the abandoned thread's
late result is dropped by the ledger (its attempt number is stale), the rest
of its batch goes back to the lanes, and it exits when the job returns.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from ..batching import Batcher
from ..errors import JobTimeoutError
from ..jobs import BATCHED_KINDS, Batch, Job
from ..ledger import Ledger
from ..metrics import Metrics
from ..options import PoolConfig
from ..runner import identity, run_batch, run_one
from ..state import Phase
from .base import Backend, logger

__all__ = ["STEAL_AFTER", "ThreadBackend"]

#: An idle thread takes unstarted jobs from a busy thread's batch once the
#: busy thread's current job has run this long (tiny jobs stay batched).
STEAL_AFTER = 0.001

_pool_numbers = itertools.count()
_BROKEN = Phase.BROKEN  # compared after every batch: no property call for it


#: A job's outcome not settled yet: (job, attempt, ok, value or exception).
_Outcome = tuple[Job, int, bool, Any]


class _Run:
    """A batch being run by one thread: its unstarted jobs can be taken from the far end."""

    __slots__ = ("batch", "jobs", "t_job")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.jobs: deque[Job] = deque(batch.jobs)
        self.t_job = time.monotonic()


class ThreadBackend(Backend):
    """Runs batches on up to ``max_workers`` threads of this process."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics, ledger: Ledger) -> None:
        super().__init__(config, batcher, metrics, ledger)
        self._prefix = config.thread_name_prefix or f"BatchPoolExecutor-{next(_pool_numbers)}"
        self._threads: list[threading.Thread] = []
        self._abandoned: set[threading.Thread] = set()
        self._retired: set[threading.Thread] = set()  # above the target: exiting
        # Guards thread creation, the abandoned set and the deadlines (never
        # held while a job runs).
        self._lock = threading.Lock()
        self._names = itertools.count()
        # One token per idle thread, as in ThreadPoolExecutor: a submit that
        # takes one needs no new thread. A deque, not a Semaphore: its append
        # and pop are atomic (on the free-threaded build too) and cost no
        # Python-level lock, on the path of every submit and every batch.
        self._idle: deque[None] = deque()
        self._runs: set[_Run] = set()
        # Timed jobs running now: job id -> (job, attempt, thread), and their
        # deadlines. Whoever pops an entry first (its thread or the watchdog) decides.
        self._timed: dict[int, tuple[Job, int, threading.Thread]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._watch = threading.Condition(self._lock)
        self._watchdog: threading.Thread | None = None
        self._busy: set[threading.Thread] = set()
        self._unsure: set[threading.Thread] = set()  # start() interrupted: they may run (_spawn)
        self.state.watch(self._on_state_change)
        batcher.lock_free_put = True  # a put wakes a parked thread itself (``batching.parking``)

    # -- starting threads --------------------------------------------------------------

    def _live(self) -> int:
        """Threads that run or wait for work (not abandoned, not retiring)."""
        return len(self._threads) - len(self._abandoned) - len(self._retired)

    def notify(self) -> None:
        try:
            self._idle.pop()
            return  # an idle thread will take it
        except IndexError:
            pass
        if self._live() < self.state.target_workers:
            self._spawn()

    def _on_state_change(self) -> None:
        """A larger target: start threads for the work already queued (idle ones wake by themselves)."""
        for _ in range(min(self.state.target_workers - self._live(), self.batcher.pending)):
            if not self._spawn():
                break

    def _spawn(self) -> bool:
        with self._lock:
            if self._live() >= self.state.target_workers or self.state.stopped:
                return False
            if self._retired:
                # Retired threads that have exited leave the books (a pool that
                # shrinks and grows again must not accumulate them).
                gone = {t for t in self._retired if not t.is_alive()}
                self._retired -= gone
                self._threads = [t for t in self._threads if t not in gone]
            thread = threading.Thread(
                target=self._work,
                name=f"{self._prefix}_{next(self._names)}",
                daemon=True,  # joined by the executor's exit hook, not by threading
            )
            # Counted before it starts: an exception inside start() (a Ctrl-C
            # in the submitting thread) may come before the thread exists or
            # after it runs, and start() cannot tell which. It is uncounted
            # then and kept in _unsure for join(); if it runs, _check_in
            # (which waits for this lock) counts it again, or lets it go if
            # the pool is full by then. The append is inside the try: an
            # interrupt just after it must not leave a thread counted that
            # never starts.
            try:
                self._threads.append(thread)
                thread.start()
            except BaseException:
                self._unsure.add(thread)
                if thread in self._threads:
                    self._threads.remove(thread)
                raise
            return True

    def _check_in(self, me: threading.Thread) -> bool:
        """A new thread is counted (see ``_spawn``); False if it must leave at once."""
        with self._lock:
            if me in self._threads:
                return True
            if self._live() >= self.state.target_workers or self.state.stopped:
                return False  # still in _unsure: shutdown joins it
            self._unsure.discard(me)
            self._threads.append(me)
            return True

    def _stop(self) -> bool:
        state = self.state
        calm = not self._abandoned and not self._retired and state.phase < _BROKEN
        if calm and len(self._threads) <= state.target_workers:
            return False  # the usual answer, asked after every batch: no thread lookup for it
        me = threading.current_thread()
        if self.state.stopped or me in self._abandoned:
            return True
        if self._live() > self.state.target_workers:
            with self._lock:  # one thread at a time retires, so exactly the surplus goes
                if self._live() > self.state.target_workers and me not in self._retired:
                    self._retired.add(me)
                    # It may have left an idle token: take one, so that a
                    # submit does not count on this thread (at worst one more
                    # thread starts, never one too few).
                    if self._idle:
                        try:
                            self._idle.pop()
                        except IndexError:  # taken by a submit meanwhile
                            pass
                    return True
        return me in self._retired

    def _work(self) -> None:
        if not self._check_in(threading.current_thread()):
            return
        try:
            self._work_loop()
        finally:
            self.batcher.thread_exits()

    def _work_loop(self) -> None:
        config = self.config
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
            except BaseException:
                logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
                self._initializer_failed()
                return
        me = threading.current_thread()
        while True:
            batch = self.batcher.take_wait(stop=self._stop, steal=self._steal)
            if batch is None:
                return
            if self.state.phase >= _BROKEN:
                # Taken (or handed over) just as the pool stopped: the abort
                # did not see it, so it fails here as the rest did.
                error = self.state.error or BrokenThreadPool("the thread pool stopped")
                self.ledger.fail_all(batch.jobs, error)
                return
            self._run(batch, me)
            # Drop the batch before waiting again: it holds the callable and the
            # arguments, which the user expects to be freed once a job is done.
            del batch
            if self._stop():
                return
            self._idle.append(None)

    # -- running --------------------------------------------------------------------------

    def _run(self, batch: Batch, me: threading.Thread) -> None:
        if not self.ledger.claim(batch):
            return
        batch.mark_dispatched()
        self._busy.add(me)
        t0 = time.perf_counter()
        last: _Outcome | None = None
        try:
            if batch.kind in BATCHED_KINDS:
                ran = self._run_batched(batch, me)
            else:
                ran, last = self._run_calls(batch, me)
            run_time = time.perf_counter() - t0
            batch.jobs = ran  # the jobs this thread ran (others were taken, or given back)
            # Before the settle, so job_info(f).run_time is there when
            # f.result() returns; finish() below stores the same value again.
            batch.mark_done(run_time)
            if last is not None:
                # Settled before the bookkeeping: the caller waiting for it
                # needs a wake-up, which takes longer than the bookkeeping, and
                # then the GIL, which this thread lets go once it is idle. The
                # bookkeeping runs while that caller wakes, off its path.
                job, attempt, ok, value = last
                del last  # the outcome is the caller's now: this frame must not keep it alive
                if ok:
                    self.ledger.succeed(job, value, attempt)
                else:
                    self.ledger.fail(job, value, attempt=attempt)
                del job, value
        finally:
            self._busy.discard(me)
        wait = batch.t_dispatch - batch.mean_submit if batch.fresh else None
        self.metrics.batch_sent(len(batch.jobs), batch.reason, wait)
        self.ledger.finish(batch, run_time)

    def _run_calls(self, batch: Batch, me: threading.Thread) -> tuple[list[Job], _Outcome | None]:
        """Run the batch's jobs in order, settling each as it returns, except the last (returned)."""
        run = _Run(batch)
        if len(run.jobs) > 1:
            self._runs.add(run)
            if self.batcher.waiters:
                # One idle thread is enough to take part of it; waking them all
                # for every batch of tiny jobs would cost a wake-up each.
                self.batcher.wake_one()
        fn, kind, ledger = batch.fn, batch.kind, self.ledger
        ran: list[Job] = []
        try:
            while run.jobs:  # checked first: the usual end costs no exception
                try:
                    job = run.jobs.popleft()
                except IndexError:
                    break  # a thief took the last one meanwhile
                if me in self._abandoned:
                    # Given up on (a timeout): the rest goes back for the replacement.
                    rest = [job, *run.jobs]
                    run.jobs.clear()
                    ledger.requeue(rest)
                    break
                run.t_job = time.monotonic()
                attempt = job.attempt
                timeout = job.opts.timeout
                if timeout is not None:
                    self._watch_job(job, attempt, timeout, me)
                ok, value = run_one(fn, kind, job.args, job.kwargs, identity)
                if timeout is not None:
                    self._unwatch(job)
                ran.append(job)
                batch.done += 1
                if not run.jobs:  # the last one (thieves take only unstarted jobs)
                    return ran, (job, attempt, ok, value)
                if ok:
                    ledger.succeed(job, value, attempt)
                else:
                    ledger.fail(job, value, attempt=attempt)
                # A raised exception's traceback holds this frame; dropping the
                # locals breaks the cycle exception -> frame -> job -> future.
                del value, job
        finally:
            self._runs.discard(run)
        return ran, None

    def _run_batched(self, batch: Batch, me: threading.Thread) -> list[Job]:
        jobs = batch.jobs
        attempts = [job.attempt for job in jobs]
        timeout = jobs[0].opts.timeout
        if timeout is not None:
            for job, attempt in zip(jobs, attempts, strict=True):
                self._watch_job(job, attempt, timeout, me)
        outcomes = run_batch(batch.fn, batch.kind, [(job.args, job.kwargs) for job in jobs], identity)
        for job, attempt, (ok, value) in zip(jobs, attempts, outcomes, strict=True):
            if timeout is not None:
                self._unwatch(job)
            if ok:
                self.ledger.succeed(job, value, attempt)
            else:
                self.ledger.fail(job, value, attempt=attempt)
        batch.done = len(jobs)
        return jobs

    def _steal(self, now: float) -> tuple[Batch | None, float | None]:
        """Take the unstarted half of a slow batch's rest, or say when to look again."""
        if not self._runs:
            return None, None
        retry_at: float | None = None
        for run in list(self._runs):
            if not run.jobs:
                continue
            ready_at = run.t_job + STEAL_AFTER
            if ready_at > now:
                retry_at = ready_at if retry_at is None else min(retry_at, ready_at)
                continue
            stolen: list[Job] = []
            for _ in range(max(1, len(run.jobs) // 2)):
                try:
                    stolen.append(run.jobs.pop())  # the far end: the owner pops the near one
                except IndexError:
                    break
            if stolen:
                stolen.reverse()
                return Batch(stolen, "steal", run.batch.timing_key), None
        return None, retry_at

    # -- timeouts ----------------------------------------------------------------------

    def _watch_job(self, job: Job, attempt: int, timeout: float, thread: threading.Thread) -> None:
        with self._lock:
            self._timed[job.id] = (job, attempt, thread)
            heapq.heappush(self._deadlines, (time.monotonic() + timeout, job.id))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch_loop, name=f"{self._prefix}_watchdog", daemon=True)
                self._watchdog.start()
            self._watch.notify()

    def _unwatch(self, job: Job) -> None:
        with self._lock:
            self._timed.pop(job.id, None)
            if not self._timed and self.batcher.closed:
                self._watch.notify()  # the watchdog may stop now

    def _watch_loop(self) -> None:
        with self._lock:
            while True:
                if (self.batcher.closed or self.state.stopped) and not self._timed:
                    return  # deadlines left are stale: their jobs finished
                now = time.monotonic()
                expired = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, job_id = heapq.heappop(self._deadlines)
                    entry = self._timed.pop(job_id, None)
                    if entry is not None:
                        expired.append(entry)
                        self._abandoned.add(entry[2])
                if not expired:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._watch.wait(wait)
                    continue
                self._lock.release()
                try:
                    for job, attempt, thread in expired:
                        timeout = job.opts.timeout
                        logger.warning(
                            "job %s ran over its %.3g s timeout; thread %s abandoned", job.id, timeout, thread.name
                        )
                        self.ledger.fail(job, JobTimeoutError(timeout), attempt=attempt)
                        self._spawn()  # the replacement
                    self.batcher.wake_all()
                finally:
                    self._lock.acquire()

    # -- lifecycle -----------------------------------------------------------------------

    def _initializer_failed(self) -> None:
        error = BrokenThreadPool("A thread initializer failed, the thread pool is not usable anymore")
        if self.state.break_(error):
            self.ledger.abort(error)

    def begin_shutdown(self) -> None:
        self.batcher.wake_all()
        with self._lock:
            self._watch.notify_all()

    def abort(self, error: BaseException) -> None:
        self.state.abort(error)
        self.ledger.abort(error)
        self.batcher.wake_all()
        with self._lock:
            self._deadlines.clear()
            self._timed.clear()
            self._watch.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        seen: set[threading.Thread] = set()
        while True:
            # Read again after each round: a thread whose start() was
            # interrupted (_spawn) may check in meanwhile, or leave.
            threads = [*self._threads, *self._unsure]
            if self._watchdog is not None:
                threads.append(self._watchdog)
            fresh = [t for t in threads if t not in seen]
            if not fresh:
                return True
            for thread in fresh:
                seen.add(thread)
                if thread is current:  # shutdown() from a done-callback on a worker
                    continue
                if thread in self._abandoned or self.state.phase.name == "ABORTED":
                    continue  # cannot be stopped; it exits when its job returns
                try:
                    thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except RuntimeError:  # never started: an interrupted start() (_spawn)
                    continue
                if thread.is_alive():
                    return False

    def compat_workers(self) -> dict[Any, Any]:
        return {t.ident: t for t in self._threads if t not in self._abandoned and t not in self._retired}

    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        pid = os.getpid()
        busy = self._busy
        return [
            (i, pid, "busy" if t in busy else "idle", 0, False)
            for i, t in enumerate(list(self._threads))
            if t.is_alive() and t not in self._abandoned and t not in self._retired
        ]
