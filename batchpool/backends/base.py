"""The backend interface, and the helpers every backend uses to settle Futures.

A backend owns its workers. It pulls batches from the pool's ``Batcher`` when a
worker has room, runs them, and resolves each job's Future. The executor only
calls the few methods below, so a new backend (a cluster, say) plugs in without
touching it.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable
from concurrent.futures import InvalidStateError
from typing import Any

from ..batching import Batcher
from ..jobs import Job
from ..metrics import Metrics
from ..options import PoolConfig

__all__ = ["Backend", "cancel_jobs", "fail_jobs", "logger", "settle_failure"]

logger = logging.getLogger("batchpool")


def fail_jobs(jobs: Iterable[Job], exc: BaseException, metrics: Metrics | None = None) -> None:
    """Fail each job's Future with ``exc`` (already cancelled ones stay so)."""
    failed = 0
    for job in jobs:
        try:
            job.future.set_exception(exc)
            failed += 1
        except InvalidStateError:
            pass  # cancelled or settled meanwhile; checking first would race
    if metrics is not None:
        metrics.jobs_failed(failed, exc)


def settle_failure(job: Job, exc: BaseException, batcher: Batcher, metrics: Metrics) -> None:
    """A run of ``job`` failed with ``exc``: queue a retry if its policy allows, else fail it."""
    policy = job.opts.retry
    timed_out = isinstance(exc, TimeoutError)
    if policy is not None and policy.should_retry(exc, attempt=job.attempt):
        delay = policy.delay(job.attempt)
        job.attempt += 1
        logger.info("job %s: retry %d in %.3f s after %r", job.id, job.attempt - 1, delay, exc)
        metrics.job_failed(job.id, exc, final=False, timed_out=timed_out)
        batcher.put_delayed(job, delay)
        return
    try:
        job.future.set_exception(exc)
    except InvalidStateError:
        return
    metrics.job_failed(job.id, exc, final=True, timed_out=timed_out)


def cancel_jobs(jobs: Iterable[Job]) -> None:
    """Cancel the Futures of jobs that were never dispatched."""
    for job in jobs:
        job.future.cancel()


class Backend(abc.ABC):
    """Runs the batches of one pool.

    Args:
        config: the pool's validated configuration.
        batcher: where jobs wait; the backend takes batches from it.
        metrics: where the backend records batches, outcomes and workers.
    """

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics) -> None:
        self.config = config
        self.batcher = batcher
        self.metrics = metrics

    @abc.abstractmethod
    def notify(self) -> None:
        """A job was queued. Called once per submit, so it must be cheap."""

    @abc.abstractmethod
    def begin_shutdown(self) -> None:
        """The batcher is closed: finish the queued work, then stop the workers."""

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker and helper thread has stopped; False on timeout."""

    @abc.abstractmethod
    def abort(self, error: BaseException) -> None:
        """Stop now: fail every unfinished job with ``error`` and stop the workers."""

    @property
    @abc.abstractmethod
    def broken(self) -> BaseException | None:
        """The error every new submit gets once the pool cannot run work at all."""

    @abc.abstractmethod
    def in_flight(self) -> int:
        """Jobs dispatched to workers and not settled yet."""

    @abc.abstractmethod
    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        """(id, pid, state, jobs done, is a process) for each live worker."""

    @abc.abstractmethod
    def compat_workers(self) -> dict[Any, Any]:
        """Live workers, for the ``_processes``/``_threads`` compatibility views."""
