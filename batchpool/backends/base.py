"""The backend interface: run batches on some workers and report what happened.

A backend owns its workers. It pulls batches from the pool's ``Batcher`` when a
worker has room, runs them (through ``batchpool.runner``, here or far away),
and reports to the pool's ``Ledger``: these jobs produced these outcomes, or
this worker died having started these jobs. It never settles a Future itself.
It reads the pool's ``PoolState`` (paused, closing, target size) and moves it
only to BROKEN (its workers cannot start) or ABORTED (``abort``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable
from typing import Any

from ..batching import Batcher
from ..ledger import Ledger
from ..metrics import Metrics
from ..options import PoolConfig
from ..state import EXIT_MESSAGE

__all__ = ["Backend", "drain_at_exit", "logger"]

logger = logging.getLogger("batchpool")


class Backend(abc.ABC):
    """Runs the batches of one pool.

    Args:
        config: the pool's validated configuration.
        batcher: where jobs wait; the backend takes batches from it.
        metrics: where the backend records batches and workers.
        ledger: where the backend reports outcomes, failures and deaths.
    """

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics, ledger: Ledger) -> None:
        self.config = config
        self.batcher = batcher
        self.state = batcher.state
        self.metrics = metrics
        self.ledger = ledger

    @abc.abstractmethod
    def notify(self) -> None:
        """A job was queued. Called once per submit, so it must be cheap."""

    @abc.abstractmethod
    def begin_shutdown(self) -> None:
        """The pool is closing: finish the queued work, then stop the workers."""

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker and helper thread has stopped; False on timeout."""

    @abc.abstractmethod
    def abort(self, error: BaseException) -> None:
        """Stop now: fail every unfinished job with ``error`` and stop the workers."""

    def in_flight(self) -> int:
        """Jobs dispatched to workers and not settled yet."""
        return self.ledger.in_flight()

    @abc.abstractmethod
    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        """(id, pid, state, jobs done, is a process) for each live worker."""

    @abc.abstractmethod
    def compat_workers(self) -> dict[Any, Any]:
        """Live workers, for the ``_processes``/``_threads`` compatibility views."""


def drain_at_exit(backends: Iterable[Backend]) -> None:
    """Interpreter exit: close every pool (new jobs refused), then wait for each to drain.

    All start draining before any is waited for, so their drains overlap.
    """
    backends = list(backends)
    for backend in backends:
        backend.state.close(EXIT_MESSAGE)
        backend.begin_shutdown()
    for backend in backends:
        backend.join()
