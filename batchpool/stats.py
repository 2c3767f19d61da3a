"""The frozen records ``ex.stats()`` returns: ``Stats`` and its parts, and their exports.

Imports nothing from batchpool at module level (``to_prometheus`` loads
``batchpool.prometheus`` on use). ``batchpool.metrics`` records; these only
describe a moment, with a docstring per field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KeyLimitStats", "LatencyStats", "Stats", "WorkerStats"]


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one latency, in seconds."""

    p50: float
    """Median."""
    p95: float
    """95th percentile."""
    p99: float
    """99th percentile."""
    max: float
    """Largest value seen."""
    mean: float
    """Average."""
    count: int
    """Jobs measured."""
    total: float = 0.0
    """Sum of the values (seconds), as Prometheus's ``_sum``."""
    buckets: tuple[tuple[float, int], ...] = ()
    """Cumulative counts: (upper bound in seconds, jobs at or below it), one per doubling."""


@dataclass(frozen=True)
class WorkerStats:
    """One worker, as seen at the snapshot."""

    id: int
    """The pool's number for this worker (a replacement gets a new one)."""
    pid: int
    """Process id (the pool's own pid for the thread backend)."""
    state: str
    """'idle', 'busy', 'starting' or 'dead'."""
    jobs: int
    """Jobs it finished."""
    cpu_percent: float | None
    """CPU use since the previous snapshot (None for threads)."""
    rss: int | None
    """Resident memory in bytes (None for threads)."""


@dataclass(frozen=True)
class KeyLimitStats:
    """One key's concurrency and rate limits, as seen at the snapshot (``Stats.key_limits``)."""

    running: int
    """Jobs (``@batched``: calls) of the key dispatched and not finished."""
    limit: int | None
    """Its ``max_concurrency`` (None: no limit)."""
    rate_limit: float | None
    """Starts per second allowed now, rising during a ramp (None: no limit)."""
    rate: float
    """Starts (``@batched``: items) in the last second."""
    waiting: int
    """Jobs of the key queued."""


@dataclass(frozen=True)
class Stats:
    """A snapshot of a pool (``BatchPoolExecutor.stats()``). Times in seconds."""

    uptime: float
    """Seconds since the pool was made."""
    submitted: int
    """Jobs accepted by submit/map."""
    completed: int
    """Jobs that returned a result."""
    failed: int
    """Jobs whose Future holds an exception (after all retries)."""
    cancelled: int
    """Jobs cancelled before they ran."""
    retried: int
    """Retries scheduled (one job may count several times)."""
    timed_out: int
    """Runs stopped by their timeout."""
    in_flight: int
    """Jobs dispatched to a worker and not settled yet."""
    queued: int
    """Jobs waiting in the pool's lanes (and retries waiting for their backoff)."""
    lanes: dict[str, int]
    """Jobs waiting per lane ('PRIORITY/key')."""
    throughput_1s: float
    """Jobs settled per second over the last full second (since start, for a pool younger than 1 s)."""
    throughput_10s: float
    """Jobs settled per second over the last ten seconds (since start, for a pool younger than 10 s)."""
    throughput_total: float
    """Jobs settled per second since the pool was made."""
    history: list[int]
    """Jobs settled in each of the last 60 seconds, oldest first."""
    queue_wait: LatencyStats
    """From submit to dispatch."""
    run_time: LatencyStats
    """In the worker (per job: its batch's run time over its size)."""
    end_to_end: LatencyStats
    """From submit to the result being back in the parent."""
    batches: int
    """Batches sent to workers."""
    batch_size_mean: float
    """Jobs per batch, on average."""
    batch_sizes: dict[int, int]
    """Batches per size bucket (a power of two: the bucket's upper bound)."""
    flush_reasons: dict[str, int]
    """Batches per reason they left their lane: size, delay, free worker, shutdown."""
    workers: list[WorkerStats]
    """Each live worker."""
    worker_restarts: int
    """Workers that died and were replaced."""
    recent_errors: list[str]
    """The last few failures, newest last."""
    recent_errors_final: list[bool] = field(default_factory=list)
    """For each of ``recent_errors``: True when no retry followed (the Future failed)."""
    runs: dict[str, Any] = field(default_factory=dict)
    """``map_pages`` runs in progress on this pool: run id -> its ``RunProgress``."""
    target_workers: int | None = None
    """The workers the pool aims at (``resize``); the live ones are ``workers``."""
    paused: bool = False
    """``pause()`` is in force: no batch is handed out."""
    key_limits: dict[str, KeyLimitStats] = field(default_factory=dict)
    """Per key with a concurrency or rate limit (``set_policy``), by readable name."""
    journal_lag: int | None = None
    """Journal records not committed yet (None: the pool has no journal)."""
    journal_lag_seconds: float | None = None
    """Seconds the oldest uncommitted journal record has waited (None: no journal)."""
    journal_commits_per_s: float | None = None
    """Journal transactions committed per second, over the last full second (None: no journal)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data.

        Example:
            >>> import json
            >>> from batchpool.metrics import Metrics
            >>> sorted(json.loads(json.dumps(Metrics().snapshot().to_dict())))[:3]
            ['batch_size_mean', 'batch_sizes', 'batches']
        """
        return asdict(self)

    def to_prometheus(self, prefix: str = "batchpool", pool: str = "default") -> str:
        """The Prometheus text exposition format (version 0.0.4).

        Latencies are histograms (cumulative ``_bucket{le=...}``, ``_sum``,
        ``_count``, in seconds) and every sample carries a ``pool`` label, so
        the figures of several pools and processes aggregate. See
        ``batchpool.prometheus``.

        Example:
            >>> from batchpool.metrics import Metrics
            >>> text = Metrics().snapshot().to_prometheus(pool="api")
            >>> 'batchpool_completed_total{pool="api"} 0' in text
            True
        """
        from .prometheus import exposition

        return exposition(self, prefix=prefix, pool=pool)
