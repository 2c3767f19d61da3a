"""What the Dask backend's manager does with a task that ended or ran over its time.

Imports ``protocol``, the errors, ``jobs`` and this package's ``cluster``,
``remote`` and ``tasks``; ``backend`` (the manager thread, dispatch,
stopping) builds on it. Only the manager thread calls in.

A worker that dies while running a batch (Dask's ``KilledWorker``, a lost
worker, a cancelled task) is handled as a crashed worker process: the batch is
split in halves (its jobs run again, no attempt charged) until the job that
kills workers is alone; that job is then run once with nothing else on the
cluster, and if it kills its worker again it fails with ``WorkerCrashedError``
(its retry policy applies). A task knows no "started" mark, so a job that dies
alone while other batches are in flight may have been a bystander: the run on
an otherwise idle cluster tells. Jobs of a batch lost this way run again
(at-least-once). On a cluster not started by batchpool, Dask itself retries a
task whose worker died ``distributed.scheduler.allowed-failures`` times (3 by
default) before reporting it: a job that kills workers kills that many more.

Time limits: Dask cannot stop a running task. The job's Future fails on time
(``JobTimeoutError``, from the manager's timer); its task runs on, still
counted against the cluster's threads, and its late result is dropped by the
ledger (stale attempt). Shutdown does not wait for such a task.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from concurrent.futures import CancelledError
from typing import Any

from ... import protocol
from ...errors import JobTimeoutError, TransportError, WorkerCrashedError
from ...jobs import Batch, Job
from ..base import Backend, logger
from .cluster import Connection, Scatter, distributed
from .remote import OUTCOMES, ProtocolMismatchError
from .tasks import Sent

__all__ = ["DaskOutcomes"]


class DaskOutcomes(Backend):
    """Settling finished tasks, splitting or isolating lost batches, failing overdue jobs.

    The attributes below are the manager's books, set up by ``DaskBackend.__init__``.
    """

    _conn: Connection
    _scatter: Scatter
    _sent: dict[str, Sent]
    _resend: deque[Batch]
    _isolate: deque[Batch]  # run with nothing else in flight
    _exclusive: Sent | None
    _deadlines: list[tuple[float, int, Job, int, Sent]]
    _threads: int
    _threads_at: float

    def _expire_timeouts(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, job, attempt, sent = heapq.heappop(self._deadlines)
            if sent.key not in self._sent or job.attempt != attempt or job.future.done():
                continue  # finished in time
            timeout = job.opts.timeout
            logger.warning("job %s ran over its %.3g s timeout on Dask (task %s runs on)", job.id, timeout, sent.key)
            self.ledger.fail(job, JobTimeoutError(timeout), attempt=attempt)
            if all(j.future.done() or j.attempt != a for j, a in zip(sent.batch.jobs, sent.attempts, strict=True)):
                sent.timed_out = True  # shutdown need not wait for it
                self._scatter.settled(sent.batch.jobs)

    def _on_report(self, sent: Sent, ok: bool, value: Any) -> None:
        if self._sent.pop(sent.key, None) is None:
            return
        if self._exclusive is sent:
            self._exclusive = None
        sent.future = None  # the cluster may forget the task's result now
        batch = sent.batch
        if ok and value[0] == OUTCOMES:
            (_, _, _, _, run_time), outcomes = protocol.decode_outcome(value[1])
            self._settle(sent, outcomes)
            self.ledger.finish(batch, run_time)
        elif ok:
            self.ledger.forget(batch)
            self._on_undecodable(batch, value[1], value[2])
        elif isinstance(value, (distributed.KilledWorker, CancelledError)):
            self.ledger.forget(batch)
            self._on_lost(sent, value)
        else:
            # The task itself failed on the worker: another batchpool there
            # (ProtocolMismatchError), or batchpool missing (ModuleNotFoundError).
            self.ledger.forget(batch)
            if not isinstance(value, ProtocolMismatchError):
                logger.error("batchpool: a Dask task failed as a whole: %r", value)
            self.ledger.fail_all(batch.jobs, value)
        self._scatter.settled(batch.jobs)

    def _settle(self, sent: Sent, outcomes: list[tuple[bool, Any]]) -> None:
        jobs = sent.batch.jobs
        if all(job.attempt == attempt for job, attempt in zip(jobs, sent.attempts, strict=True)):
            self.ledger.outcomes(jobs, outcomes)
            return
        # Some job was given up on meanwhile (a timeout, then a retry):
        # its late outcome must not settle the attempt that runs now.
        for job, attempt, (good, value) in zip(jobs, sent.attempts, outcomes, strict=True):
            if good:
                self.ledger.succeed(job, value, attempt)
            else:
                self.ledger.fail(job, value, attempt=attempt)

    def _on_undecodable(self, batch: Batch, wrapped: BaseException, fn_failed: bool) -> None:
        if fn_failed or len(batch.jobs) == 1:
            what = "callable" if fn_failed else "call"
            error = TransportError(f"the {what} could not be unpickled on the Dask worker: {wrapped!r}")
            error.__cause__ = wrapped
            self.ledger.fail_all(batch.jobs, error)
            return
        for job in batch.jobs:  # some call does not unpickle there: each alone finds it
            self._resend.append(Batch([job], batch.reason, batch.timing_key))

    def _on_lost(self, sent: Sent, cause: BaseException) -> None:
        """The batch's worker died (or its task was lost): split, isolate, or fail the culprit."""
        self._threads = self._conn.threads()  # the cluster may be smaller now
        self._threads_at = time.monotonic()
        batch = sent.batch
        jobs = [job for job, attempt in zip(batch.jobs, sent.attempts, strict=True) if job.attempt == attempt]
        jobs = [job for job in jobs if not job.future.done()]
        self.metrics.worker_died(None, None)
        logger.warning("batchpool: a Dask worker was lost with a batch of %d jobs: %r", len(jobs), cause)
        if not jobs:
            return
        if len(jobs) > 1:
            half = len(jobs) // 2
            self._resend.append(Batch(jobs[:half], batch.reason, batch.timing_key))
            self._resend.append(Batch(jobs[half:], batch.reason, batch.timing_key))
        elif sent.exclusive:
            error = WorkerCrashedError(None, None)
            error.__cause__ = cause
            self.ledger.fail(jobs[0], error)
        else:
            # It may have been a bystander of another batch's crash: run it
            # again with nothing else on the cluster, where a death is its own.
            self._isolate.append(Batch(jobs, "isolate", batch.timing_key))
