"""Counters, throughput windows and latency histograms, and their snapshots.

Imports ``batchpool.options`` only (rich is the dashboard's business).

Recording is O(1) per batch: a batch of n jobs adds its mean queue wait and
mean run time to the histograms with weight n, bumps a few counters under one
short lock (never one that ``submit`` waits on), and drops n completions into
the current one-second bucket. ``Metrics.snapshot`` turns that into a frozen
``Stats``; the dashboard, the Prometheus exporter and ``ex.stats()`` only ever
read snapshots.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Histogram", "LatencyStats", "Listener", "Metrics", "Stats", "WorkerStats"]

logger = logging.getLogger("batchpool")

#: Histogram buckets: 4 per doubling (each about 19% wide), from 1 us up.
_BUCKETS_PER_DOUBLING = 4
_BASE = 1e-6
_NBUCKETS = 4 * 40  # up to about 10^6 seconds
_WINDOW = 60  # seconds of one-second completion buckets kept


class Histogram:
    """A fixed log-bucket histogram: O(1) add, percentiles within one bucket (~19%).

    Example:
        >>> h = Histogram()
        >>> for ms in range(1, 101):
        ...     h.add(ms / 1000)
        >>> 0.045 < h.percentile(50) < 0.06
        True
    """

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    @staticmethod
    def _index(value: float) -> int:
        if value <= _BASE:
            return 0
        return min(_NBUCKETS - 1, int(math.log2(value / _BASE) * _BUCKETS_PER_DOUBLING) + 1)

    def add(self, value: float, weight: int = 1) -> None:
        """Record ``value`` (seconds) ``weight`` times."""
        self.counts[self._index(value)] += weight
        self.count += weight
        self.total += value * weight
        if value > self.max:
            self.max = value

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100): the geometric middle of its bucket."""
        if not self.count:
            return 0.0
        rank = q / 100 * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                if i == 0:
                    return _BASE
                low = _BASE * 2 ** ((i - 1) / _BUCKETS_PER_DOUBLING)
                high = low * 2 ** (1 / _BUCKETS_PER_DOUBLING)
                return min(math.sqrt(low * high), self.max)
        return self.max

    def summary(self) -> LatencyStats:
        """p50/p95/p99/max/mean of what was recorded."""
        return LatencyStats(
            p50=self.percentile(50),
            p95=self.percentile(95),
            p99=self.percentile(99),
            max=self.max,
            mean=self.total / self.count if self.count else 0.0,
            count=self.count,
        )


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
    """Jobs settled per second over the last full second."""
    throughput_10s: float
    """Jobs settled per second over the last ten seconds."""
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data.

        Example:
            >>> import json
            >>> sorted(json.loads(json.dumps(Metrics().snapshot().to_dict())))[:3]
            ['batch_size_mean', 'batch_sizes', 'batches']
        """
        return asdict(self)

    def to_prometheus(self, prefix: str = "batchpool") -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {prefix}_{name} {help_text}")
            lines.append(f"# TYPE {prefix}_{name} {kind}")
            for labels, value in samples:
                lines.append(f"{prefix}_{name}{labels} {value:g}")

        for name, help_text in (
            ("submitted", "Jobs accepted."),
            ("completed", "Jobs that returned a result."),
            ("failed", "Jobs that failed after all retries."),
            ("cancelled", "Jobs cancelled before they ran."),
            ("retried", "Retries scheduled."),
            ("timed_out", "Runs stopped by their timeout."),
            ("batches", "Batches sent to workers."),
            ("worker_restarts", "Workers replaced after dying."),
        ):
            metric(f"{name}_total", "counter", help_text, [("", getattr(self, name))])
        metric("in_flight", "gauge", "Jobs running in workers.", [("", self.in_flight)])
        metric("queued", "gauge", "Jobs waiting in lanes.", [("", self.queued)])
        metric(
            "lane_depth",
            "gauge",
            "Jobs waiting per lane.",
            [(f'{{lane="{_escape(lane)}"}}', depth) for lane, depth in self.lanes.items()],
        )
        metric("throughput", "gauge", "Jobs settled per second over the last 10 s.", [("", self.throughput_10s)])
        latencies = (("queue_wait", self.queue_wait), ("run_time", self.run_time), ("end_to_end", self.end_to_end))
        for name, stats in latencies:
            metric(
                f"{name}_seconds",
                "summary",
                f"Job latency: {name.replace('_', ' ')}.",
                [
                    ('{quantile="0.5"}', stats.p50),
                    ('{quantile="0.95"}', stats.p95),
                    ('{quantile="0.99"}', stats.p99),
                    ("_sum", stats.mean * stats.count),
                    ("_count", stats.count),
                ],
            )
        metric(
            "flushes_total",
            "counter",
            "Batches per flush reason.",
            [(f'{{reason="{_escape(r)}"}}', n) for r, n in self.flush_reasons.items()],
        )
        metric(
            "worker_rss_bytes",
            "gauge",
            "Resident memory per worker.",
            [(f'{{worker="{w.id}",pid="{w.pid}"}}', w.rss) for w in self.workers if w.rss is not None],
        )
        return "\n".join(line.replace("}_sum", "_sum}").replace("}_count", "_count}") for line in lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


Listener = Callable[..., None]


@dataclass
class _Listeners:
    on_batch_done: list[Listener] = field(default_factory=list)
    on_job_failed: list[Listener] = field(default_factory=list)
    on_worker_died: list[Listener] = field(default_factory=list)


class Metrics:
    """The live counters of one pool; backends record, ``snapshot`` reads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        # One lock for everything recorded per batch; submit never takes it.
        self._lock = threading.Lock()
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._retried = 0
        self._timed_out = 0
        self._batches = 0
        self._restarts = 0
        self._flush: Counter[str] = Counter()
        self._sizes: Counter[int] = Counter()
        self._size_total = 0
        self._queue_wait = Histogram()
        self._run_time = Histogram()
        self._end_to_end = Histogram()
        self._seconds: deque[tuple[int, int]] = deque(maxlen=_WINDOW + 2)  # (second, jobs settled)
        self._errors: deque[str] = deque(maxlen=8)
        self._listeners = _Listeners()
        self._procs: dict[int, Any] = {}  # psutil.Process per pid, for CPU deltas

    # -- recording (backends) ------------------------------------------------------

    def batch_sent(self, size: int, reason: str, mean_wait: float) -> None:
        """A batch of ``size`` jobs left its lane for ``reason``."""
        with self._lock:
            self._batches += 1
            self._flush[reason] += 1
            self._sizes[1 << max(0, size - 1).bit_length()] += 1
            self._size_total += size
            self._queue_wait.add(mean_wait, size)

    def results(self, ok: int) -> None:
        """``ok`` jobs returned a result."""
        with self._lock:
            self._completed += ok
            self._count_settled(ok)

    def batch_done(self, jobs: int, run_time: float, mean_end_to_end: float, info: Any = None) -> None:
        """A batch of ``jobs`` finished after ``run_time`` seconds in its worker."""
        if jobs:
            with self._lock:
                self._run_time.add(run_time / jobs, jobs)
                self._end_to_end.add(mean_end_to_end, jobs)
        if self._listeners.on_batch_done:
            self._emit(self._listeners.on_batch_done, info)

    def job_failed(self, job_id: int, exc: BaseException, *, final: bool, timed_out: bool = False) -> None:
        """A run failed; ``final``: no retry follows, its Future fails."""
        with self._lock:
            if timed_out:
                self._timed_out += 1
            if final:
                self._failed += 1
                self._count_settled(1)
            else:
                self._retried += 1
            self._errors.append(f"job {job_id}: {type(exc).__name__}: {exc}"[:200])
        if final and self._listeners.on_job_failed:
            self._emit(self._listeners.on_job_failed, job_id, exc)

    def jobs_cancelled(self, n: int) -> None:
        """``n`` queued jobs turned out to be cancelled."""
        if n:
            with self._lock:
                self._cancelled += n

    def jobs_failed(self, n: int, exc: BaseException) -> None:
        """``n`` jobs failed for good, all with ``exc`` (no retry)."""
        if n:
            with self._lock:
                self._failed += n
                self._count_settled(n)
                self._errors.append(f"{n} jobs: {type(exc).__name__}: {exc}"[:200])
            if self._listeners.on_job_failed:
                for _ in range(n):
                    self._emit(self._listeners.on_job_failed, None, exc)

    def worker_died(self, pid: int | None, exitcode: int | None, *, replaced: bool = True) -> None:
        """A worker process ended unexpectedly."""
        with self._lock:
            if replaced:
                self._restarts += 1
        if self._listeners.on_worker_died:
            self._emit(self._listeners.on_worker_died, pid, exitcode)

    def _count_settled(self, n: int) -> None:
        second = int(self._clock())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1] = (second, self._seconds[-1][1] + n)
        else:
            self._seconds.append((second, n))

    # -- listeners -------------------------------------------------------------------

    def add_listener(
        self,
        on_batch_done: Listener | None = None,
        on_job_failed: Listener | None = None,
        on_worker_died: Listener | None = None,
    ) -> None:
        """Register callbacks; see ``BatchPoolExecutor.add_listener``."""
        for name, fn in (
            ("on_batch_done", on_batch_done),
            ("on_job_failed", on_job_failed),
            ("on_worker_died", on_worker_died),
        ):
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
                getattr(self._listeners, name).append(fn)

    def _emit(self, listeners: list[Listener], *args: Any) -> None:
        for fn in list(listeners):
            try:
                fn(*args)
            except Exception:
                logger.exception("batchpool listener %r raised; ignored", fn)

    # -- reading -----------------------------------------------------------------------

    def snapshot(
        self,
        *,
        submitted: int = 0,
        in_flight: int = 0,
        queued: int = 0,
        lanes: dict[str, int] | None = None,
        workers: Iterable[tuple[int, int, str, int, bool]] = (),
    ) -> Stats:
        """A frozen copy of the current numbers (cheap; safe from any thread)."""
        now = self._clock()
        with self._lock:
            completed, failed, cancelled = self._completed, self._failed, self._cancelled
            seconds = list(self._seconds)
            queue_wait = self._queue_wait.summary()
            run_time = self._run_time.summary()
            end_to_end = self._end_to_end.summary()
            sizes = dict(sorted(self._sizes.items()))
            flush = dict(self._flush)
            batches, size_total, restarts = self._batches, self._size_total, self._restarts
            retried, timed_out = self._retried, self._timed_out
            errors = list(self._errors)
        current = int(now)
        per_second = dict(seconds)
        history = [per_second.get(s, 0) for s in range(current - _WINDOW, current)]
        uptime = max(now - self._start, 1e-9)
        return Stats(
            uptime=uptime,
            submitted=submitted,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            retried=retried,
            timed_out=timed_out,
            in_flight=in_flight,
            queued=queued,
            lanes=dict(lanes or {}),
            throughput_1s=float(history[-1]) if history else 0.0,
            throughput_10s=sum(history[-10:]) / 10,
            throughput_total=(completed + failed) / uptime,
            history=history,
            queue_wait=queue_wait,
            run_time=run_time,
            end_to_end=end_to_end,
            batches=batches,
            batch_size_mean=size_total / batches if batches else 0.0,
            batch_sizes=sizes,
            flush_reasons=flush,
            workers=[self._worker(*w) for w in workers],
            worker_restarts=restarts,
            recent_errors=errors,
        )

    def _worker(self, wid: int, pid: int, state: str, jobs: int, is_process: bool) -> WorkerStats:
        if not is_process or pid == os.getpid():
            return WorkerStats(wid, pid, state, jobs, None, None)
        try:
            import psutil

            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measurement
            return WorkerStats(wid, pid, state, jobs, proc.cpu_percent(None), proc.memory_info().rss)
        except Exception:  # noqa: BLE001 - a worker that just died has no numbers
            self._procs.pop(pid, None)
            return WorkerStats(wid, pid, "dead", jobs, None, None)
