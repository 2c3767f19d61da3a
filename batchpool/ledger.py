"""The ledger: the only code that settles a job's Future, exactly once.

Imports ``batching``, ``jobs``, ``metrics``, ``errors``. Every backend reports to
it and none touches a Future itself::

    claim(batch) ──> jobs RUNNING (cancelled ones dropped), batch recorded as dispatched
         │
         ├─ outcomes(jobs, [(ok, value)...])  a value settles; an error goes to fail()
         ├─ fail(job, exc, charge=True)       retry after backoff (policy allows) or fail
         ├─ requeue(jobs)                     never started: back to the lanes, no attempt spent
         ├─ finish(batch, run_time)           timing, metrics, the batch leaves the books
         └─ abort(error)                      every dispatched or queued job fails now

"First settler wins": a job may be settled by its worker, a watchdog (its time
limit), an abort, or the user's ``cancel()``; whoever comes second is ignored
(``InvalidStateError`` is caught here and nowhere else). A late result of an
attempt that was already given up on (a timed-out thread that finally returns,
while its retry waits) is dropped by comparing attempt numbers.

A job cut from a lane with a per-key limit holds a slot of that limit; the
ledger frees it (``batcher.job_done``) when the job is settled or dropped, and
the batcher frees it when the job comes back to the lanes (a retry, a job
given back). Jobs of unlimited keys hold nothing, so this costs them one
check of an empty dict.

Circuit breakers hear every final outcome here, and a job dropped before it
ran (cancelled) frees its breaker's trial slot. Observers (the journal) hear
every transition: ``job_running``, ``job_done`` (``jobs_done`` for the
successes of one batch), ``job_failed``, ``job_retrying``, ``job_cancelled``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from functools import partial
from typing import Any, Protocol

from .batching import Batcher
from .errors import JobTimeoutError
from .jobs import CHUNK_KINDS, Batch, ChunkResult, Job
from .metrics import Metrics

__all__ = ["Ledger", "LedgerObserver"]

logger = logging.getLogger("batchpool")


class LedgerObserver(Protocol):
    """What an observer of the ledger (the journal) is told. Calls come from pool threads."""

    def job_running(self, jobs: Sequence[Job]) -> None:
        """These jobs were dispatched (their Futures are RUNNING)."""

    def job_done(self, job: Job, value: Any) -> None:
        """The job returned ``value``."""

    def jobs_done(self, outcomes: Sequence[tuple[Job, Any]]) -> None:
        """``job_done`` for each ``(job, value)``: the jobs of one batch that succeeded, told at once."""

    def job_failed(self, job: Job, exc: BaseException) -> None:
        """The job failed for good with ``exc``."""

    def job_retrying(self, job: Job, exc: BaseException) -> None:
        """The job failed with ``exc`` and will run again (``job.attempt`` is the next run)."""

    def job_cancelled(self, job: Job) -> None:
        """The job was cancelled before it ran."""


class Ledger:
    """Settles Futures for one pool and keeps the books of dispatched batches.

    Args:
        batcher: where retries and given-back jobs wait.
        metrics: where outcomes are counted.

    Example:
        >>> from batchpool.batching import Batcher
        >>> from batchpool.jobs import Job
        >>> ledger = Ledger(Batcher(max_batch_size=8, max_delay=0.0), Metrics())
        >>> job = Job(abs, (-1,), None)
        >>> batch = Batch([job], "free worker", None)
        >>> ledger.claim(batch)
        True
        >>> ledger.outcomes([job], [(True, 1)]); ledger.finish(batch, 0.001)
        >>> job.result(), ledger.in_flight()
        (1, 0)
    """

    def __init__(self, batcher: Batcher, metrics: Metrics) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.observers: list[LedgerObserver] = []
        # Batches dispatched and not finished, so that abort() finds every
        # job a backend holds. The lock: the thread backend claims and finishes
        # from several threads; each critical section is one dict operation.
        self._lock = threading.Lock()
        self._claimed: dict[int, Batch] = {}
        # pause(wait=True) waits here for the dispatched batches to finish.
        self._settled = threading.Condition(self._lock)
        self._settled_waiters = 0

    # -- dispatch --------------------------------------------------------------------

    def claim(self, batch: Batch) -> bool:
        """Mark the batch's jobs RUNNING and record it as dispatched.

        Jobs cancelled meanwhile are dropped (their breaker's trial slot freed).
        Returns False when no job is left. Call before anything that can fail
        (pickling, sending), so that whatever happens next, ``abort`` finds it.
        """
        kept = []
        for job in batch.jobs:
            if job.started or job.set_running_or_notify_cancel():
                job.started = True
                kept.append(job)
            else:
                self._dropped(job)
        cancelled = len(batch.jobs) - len(kept)
        if cancelled:
            batch.cancelled += cancelled
            self.metrics.jobs_cancelled(cancelled)
            batch.jobs = kept
        if not kept:
            return False
        with self._lock:
            self._claimed[batch.id] = batch
        if self.observers:
            self._tell("job_running", kept)
        return True

    def forget(self, batch: Batch) -> None:
        """The batch is off the books without a timing (given back, split, or failed whole)."""
        with self._lock:
            self._claimed.pop(batch.id, None)
            if self._settled_waiters and not self._claimed:
                self._settled.notify_all()

    def finish(self, batch: Batch, run_time: float | None) -> None:
        """The batch ran to its end in ``run_time`` seconds (timing and metrics; None: ``timed`` did them)."""
        with self._lock:
            self._claimed.pop(batch.id, None)
            if self._settled_waiters and not self._claimed:
                self._settled.notify_all()
        if run_time is not None:
            self.timed(batch, run_time)

    def timed(self, batch: Batch, run_time: float) -> None:
        """Record the batch's run time (estimates, metrics, ``job_info``).

        ``finish`` does it, unless given ``run_time=None``: the process
        backend's manager calls this first, then settles the batch's last
        outcome, then ``finish``es. The thread backend settles first and then
        ``finish``es with the run time: its waiting caller needs a wake-up,
        which takes longer than this bookkeeping, so it runs meanwhile.
        """
        batch.mark_done(run_time)
        self.batcher.record(batch.timing_key, len(batch.jobs), run_time)
        self.metrics.batch_done(len(batch.jobs), run_time, time.monotonic() - batch.mean_submit, batch.record)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no dispatched batch is unfinished; False if ``timeout`` seconds passed first."""
        with self._lock:
            self._settled_waiters += 1
            try:
                return self._settled.wait_for(lambda: not self._claimed, timeout)
            finally:
                self._settled_waiters -= 1

    def in_flight(self) -> int:
        """Jobs in dispatched batches not finished yet (an upper bound while batches stream)."""
        with self._lock:
            return sum(len(b.jobs) - b.done for b in self._claimed.values())

    # -- outcomes --------------------------------------------------------------------------

    def outcomes(self, jobs: Sequence[Job], outcomes: Sequence[tuple[bool, Any]], attempt: int | None = None) -> None:
        """Settle ``jobs`` with one ``(ok, value_or_exception)`` each, in order."""
        ok = 0
        done: list[tuple[Job, Any]] | None = [] if self.observers else None
        for job, (good, value) in zip(jobs, outcomes, strict=True):
            if good:
                ok += self._succeed(job, value, attempt, done)
            else:
                self.fail(job, value, attempt=attempt)
        if done:
            self._tell("jobs_done", done)
        if ok:
            self.metrics.results(ok)

    def succeed(self, job: Job, value: Any, attempt: int | None = None) -> bool:
        """Settle ``job`` with ``value``; False if it was settled (or given up on) already."""
        ok = self._succeed(job, value, attempt)
        if ok:
            self.metrics.results(ok)
        return ok > 0

    def _succeed(self, job: Job, value: Any, attempt: int | None, done: list[tuple[Job, Any]] | None = None) -> int:
        """Settle; how many of the user's items completed (a map chunk counts its items).

        With ``done``, observers are told later, by the caller, for the whole list.
        """
        if attempt is not None and attempt != job.attempt:
            return 0  # a late result of an attempt already given up on
        if self.batcher.holding:
            self.batcher.job_done(job)
        chunk = job.kind in CHUNK_KINDS and value.__class__ is ChunkResult
        if chunk and value.errors and self._retry_chunk_items(job, value):
            return len(value.values) - len(value.errors)  # these are final; the rest come back later
        try:
            job.set_result(value)
        except InvalidStateError:
            return 0  # settled by an abort, a watchdog, or cancelled meanwhile
        if job.breaker is not None:
            job.breaker.record(True)
        if done is not None:
            done.append((job, value))
        elif self.observers:
            self._tell("job_done", job, value)
        # Final, and the job's own run returned (it was not settled from
        # outside while running): nothing reads its call again, and the
        # user's Future must not keep the arguments alive.
        job.release_call()
        if chunk:
            # Stats count what the user sees: a chunk's items, not the chunk.
            if value.errors:
                self.metrics.jobs_failed(len(value.errors), next(iter(value.errors.values())))
            return len(value.values) - len(value.errors)
        return 1

    def _retry_chunk_items(self, job: Job, chunk: ChunkResult) -> bool:
        """Send a map chunk's retryable failed items again, as a chunk of their own.

        The chunk's Future stays RUNNING until the retry is back; then the
        outcomes are merged in, item by item, and it settles. Returns False
        when no item may be retried (the chunk settles as it is).
        """
        policy = job.opts.retry
        if policy is None:
            return False
        again = [i for i, exc in chunk.errors.items() if policy.should_retry(exc, attempt=job.attempt)]
        if not again:
            return False
        items = job.args[0]
        retry = Job(job.fn, ([items[i] for i in again],), None, job.kind, job.opts)
        retry.attempt = job.attempt + 1
        retry.started = True  # an internal job: its Future never shows RUNNING to anyone
        retry.future.add_done_callback(partial(self._merge_chunk, job, chunk, again))
        self.metrics.job_failed(job.id, chunk.errors[again[0]], final=False)
        self.batcher.put_delayed(retry, policy.delay(job.attempt))
        return True

    def _merge_chunk(self, job: Job, chunk: ChunkResult, again: list[int], done: Future[Any]) -> None:
        try:
            retried: ChunkResult = done.result()
        except BaseException as exc:  # noqa: BLE001 - the retry chunk failed whole (crash, shutdown)
            retried = ChunkResult([None] * len(again), dict.fromkeys(range(len(again)), exc))
        for k, i in enumerate(again):
            chunk.values[i] = retried.values[k]
            if k in retried.errors:
                chunk.errors[i] = retried.errors[k]
            else:
                del chunk.errors[i]
        try:
            job.set_result(chunk)  # its items were counted as they settled
        except InvalidStateError:
            return
        job.release_call()

    def fail(self, job: Job, exc: BaseException, *, charge: bool = True, attempt: int | None = None) -> None:
        """A run of ``job`` failed with ``exc``: retry it if its policy allows, else fail it.

        With ``charge=False`` the job never really ran (its worker died before
        starting it): it goes back to the lanes and no attempt is spent.
        """
        if attempt is not None and attempt != job.attempt:
            return
        if job.done():
            return  # settled already (a timeout raced its worker's own report)
        if not charge:
            self.requeue([job])
            return
        policy = job.opts.retry
        timed_out = isinstance(exc, JobTimeoutError)
        if policy is not None and policy.should_retry(exc, attempt=job.attempt):
            delay = policy.delay(job.attempt)
            job.attempt += 1
            logger.info("job %s: retry %d in %.3f s after %r", job.id, job.attempt - 1, delay, exc)
            self.metrics.job_failed(job.id, exc, final=False, timed_out=timed_out)
            if self.observers:
                self._tell("job_retrying", job, exc)
            self.batcher.put_delayed(job, delay)
            return
        if self.batcher.holding:
            self.batcher.job_done(job)
        try:
            job.set_exception(exc)
        except InvalidStateError:
            return
        if job.breaker is not None:
            job.breaker.record(False)
        self.metrics.job_failed(job.id, exc, final=True, timed_out=timed_out)
        if self.observers:
            self._tell("job_failed", job, exc)
        job.release_call()  # a thread still running it (a timeout) has read its call already

    def fail_all(self, jobs: Iterable[Job], exc: BaseException) -> None:
        """Fail every job with ``exc``, no retries (the pool broke, was aborted, or the callable is bad)."""
        failed = 0
        for job in jobs:
            if self.batcher.holding:
                self.batcher.job_done(job)
            try:
                job.set_exception(exc)
            except InvalidStateError:
                continue  # cancelled or settled meanwhile; checking first would race
            failed += 1
            if job.breaker is not None:
                job.breaker.record(False)
            if self.observers:
                self._tell("job_failed", job, exc)
        self.metrics.jobs_failed(failed, exc)

    def requeue(self, jobs: list[Job]) -> None:
        """Jobs that never started go back to the front of their lanes, attempts untouched."""
        if jobs:
            self.batcher.put_back(jobs)

    def cancel(self, jobs: Iterable[Job]) -> None:
        """Cancel queued jobs that were never dispatched (``shutdown(cancel_futures=True)``, an abort).

        Observers hear ``job_cancelled`` only for jobs the user had cancelled
        already: a job cut off by shutdown did not meet its fate (a journal
        keeps it queued, for ``recover()``).
        """
        cancelled = 0
        for job in jobs:
            by_user = job.cancelled()
            if job.cancel():
                cancelled += 1
                self._dropped(job, tell=by_user)
        self.metrics.jobs_cancelled(cancelled)

    def _dropped(self, job: Job, tell: bool = True) -> None:
        if self.batcher.holding:
            self.batcher.job_done(job)
        if job.breaker is not None:
            job.breaker.release()
        if tell and self.observers:
            self._tell("job_cancelled", job)
        job.release_call()  # out of every lane and batch: a cancelled Future keeps no arguments

    def abort(self, error: BaseException) -> None:
        """Fail every dispatched and every queued job with ``error`` now."""
        with self._lock:
            batches = list(self._claimed.values())
            self._claimed.clear()
            self._settled.notify_all()
        self.fail_all((job for batch in batches for job in batch.jobs), error)
        self.fail_all(self.batcher.drain(), error)

    def _tell(self, event: str, *args: Any) -> None:
        for observer in list(self.observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                logger.exception("batchpool: ledger observer %r failed on %s", observer, event)
