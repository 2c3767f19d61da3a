"""The parent's record of a batch on the cluster, and getting finished tasks' results back.

Imports ``jobs`` and the ``cluster`` module's logger only; used by the
backend's manager thread (nothing here runs on Dask's event loop).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from ...jobs import Batch
from .cluster import logger

__all__ = ["GATHER_TIMEOUT", "Sent", "collect", "worker_rows"]

#: Seconds to wait for one finished task's result when a joint gather failed.
GATHER_TIMEOUT = 60.0


class Sent:
    """A batch on the cluster: its task, and the attempt of each job when it left."""

    __slots__ = ("attempts", "batch", "exclusive", "expected", "future", "key", "timed", "timed_out")

    def __init__(self, batch: Batch, key: str, exclusive: bool, estimate: float | None) -> None:
        self.batch = batch
        self.key = key
        self.attempts = [job.attempt for job in batch.jobs]
        # Nothing else ran on the cluster while it did: if its worker dies,
        # it is the one that killed it.
        self.exclusive = exclusive
        self.future: Any = None  # the Dask future, until its outcome is in
        self.timed = batch.jobs[0].opts.timeout is not None
        # Seconds it should run (None: its callable was never timed).
        self.expected = None if estimate is None else estimate * len(batch.jobs)
        self.timed_out = False  # every job of it was failed on time: shutdown need not wait


def collect(client: Any, finished: list[Sent], watch_again: Callable[[Sent], None]) -> list[tuple[Sent, bool, Any]]:
    """``(sent, True, returned value)`` or ``(sent, False, error)`` for each task that ended.

    The results of every finished task come in one ``gather`` (one round
    trip); only when that fails is each fetched alone, to tell which failed.
    A task whose result was lost with its worker is pending again (Dask
    computes it again): ``watch_again`` is called for it, and it is not
    reported now.
    """
    reports: list[tuple[Sent, bool, Any]] = []
    live = [sent for sent in finished if sent.future is not None]
    ready = [sent for sent in live if sent.future.status == "finished"]
    gathered: set[str] = set()
    if ready:
        try:
            values = client.gather([sent.future for sent in ready])
        except Exception:  # noqa: BLE001 - one at a time below, to tell which failed
            logger.debug("batchpool: a joint gather failed", exc_info=True)
        else:
            for sent, value in zip(ready, values, strict=True):
                reports.append((sent, True, value))
                gathered.add(sent.key)
    for sent in live:
        if sent.key in gathered:
            continue
        future = sent.future
        try:
            status = future.status
            if status == "finished":
                reports.append((sent, True, future.result(timeout=GATHER_TIMEOUT)))
            elif status == "error":
                reports.append((sent, False, future.exception(timeout=GATHER_TIMEOUT)))
            elif status == "pending":
                watch_again(sent)
            else:
                reports.append((sent, False, CancelledError(f"the Dask task {sent.key} was {status}")))
        except BaseException as exc:  # noqa: BLE001 - a result lost for good is reported like a lost worker
            reports.append((sent, False, exc))
    return reports


def worker_rows(workers: dict[str, Any]) -> list[tuple[int, int, str, int, bool]]:
    """``Backend.worker_states`` rows from the scheduler's ``workers`` info (no pid: it may be remote).

    Example:
        >>> worker_rows({"tcp://a": {"metrics": {"task_counts": {"executing": 1}}}, "tcp://b": {}})
        [(0, 0, 'busy', 0, False), (1, 0, 'idle', 0, False)]
    """
    rows = []
    for i, (_, info) in enumerate(sorted(workers.items())):
        executing = info.get("metrics", {}).get("task_counts", {}).get("executing", 0)
        rows.append((i, 0, "busy" if executing else "idle", 0, False))
    return rows
