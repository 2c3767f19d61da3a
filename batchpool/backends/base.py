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
from ..options import PoolConfig

__all__ = ["Backend", "cancel_jobs", "fail_jobs", "logger", "settle_failure"]

logger = logging.getLogger("batchpool")


def fail_jobs(jobs: Iterable[Job], exc: BaseException) -> None:
    """Fail each job's Future with ``exc`` (already cancelled ones stay so)."""
    for job in jobs:
        try:
            job.future.set_exception(exc)
        except InvalidStateError:
            pass  # cancelled or settled meanwhile; checking first would race


def settle_failure(job: Job, exc: BaseException, batcher: Batcher) -> None:
    """A run of ``job`` failed with ``exc``: queue a retry if its policy allows, else fail it."""
    policy = job.opts.retry
    if policy is not None and policy.should_retry(exc, attempt=job.attempt):
        delay = policy.delay(job.attempt)
        job.attempt += 1
        logger.info("job %s: retry %d in %.3f s after %r", job.id, job.attempt - 1, delay, exc)
        batcher.put_delayed(job, delay)
        return
    fail_jobs([job], exc)


def cancel_jobs(jobs: Iterable[Job]) -> None:
    """Cancel the Futures of jobs that were never dispatched."""
    for job in jobs:
        job.future.cancel()


class Backend(abc.ABC):
    """Runs the batches of one pool.

    Args:
        config: the pool's validated configuration.
        batcher: where jobs wait; the backend takes batches from it.
    """

    def __init__(self, config: PoolConfig, batcher: Batcher) -> None:
        self.config = config
        self.batcher = batcher

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
    def compat_workers(self) -> dict[Any, Any]:
        """Live workers, for the ``_processes``/``_threads`` compatibility views."""
