"""Counters, throughput windows and latency histograms, and their snapshots.

Imports ``batchpool.stats`` only (rich is the dashboard's business).

Recording is O(1) per batch: a batch of n jobs adds its mean queue wait and
mean run time to the histograms with weight n, bumps a few counters, and drops
n completions into the current one-second bucket. The per-batch figures
(``batch_sent``, ``batch_done``, ``results``) are not applied where they are
recorded: each is one tuple appended to a deque (atomic, no lock), and the
tuples are folded into the counters under the lock by the next snapshot, or
once ``_FOLD_AT`` of them wait. A worker thread going idle after a batch, with
its caller waiting for the GIL, then pays three appends instead of three
locked updates; a snapshot folds first, so what it shows is never behind.

``Metrics.snapshot`` turns that into a frozen ``Stats`` (the records are in
``batchpool.stats``); the dashboard, the Prometheus exporter and
``ex.stats()`` only ever read snapshots. The Prometheus format itself lives in
``batchpool.prometheus``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .stats import KeyLimitStats, LatencyStats, Stats, WorkerStats

__all__ = ["Histogram", "KeyLimitStats", "LatencyStats", "Listener", "Metrics", "Stats", "WorkerStats"]

logger = logging.getLogger("batchpool")

#: Histogram buckets: 4 per doubling (each about 19% wide), from 1 us up.
_BUCKETS_PER_DOUBLING = 4
_BASE = 1e-6
_NBUCKETS = 4 * 40  # up to about 10^6 seconds
_WINDOW = 60  # seconds of one-second completion buckets kept
_FOLD_AT = 512  # per-batch figures queued before the recording thread folds them itself
# The kinds of queued figures (first field of each tuple).
_SENT, _DONE, _RESULTS = 0, 1, 2
#: Upper bounds of the cumulative buckets a snapshot exports: one per doubling,
#: from 1 us to about 134 s. Each is a bound of the fine buckets as well
#: (every fourth), so a cumulative count is exact, not interpolated.
EXPORT_BOUNDS = tuple(_BASE * 2.0**k for k in range(28))


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

    def add(self, value: float, weight: int = 1) -> None:
        """Record ``value`` (seconds) ``weight`` times."""
        # The bucket is computed inline (no helper call): this runs a few
        # times per batch, on the worker's path back to idle.
        if value <= _BASE:
            self.counts[0] += weight
        else:
            self.counts[min(_NBUCKETS - 1, int(math.log2(value / _BASE) * _BUCKETS_PER_DOUBLING) + 1)] += weight
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

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """(upper bound in seconds, values at or below it) at each of ``EXPORT_BOUNDS``.

        Example:
            >>> h = Histogram()
            >>> h.add(0.0015, weight=3)
            >>> dict(h.cumulative())[0.001024], dict(h.cumulative())[0.002048]
            (0, 3)
        """
        out: list[tuple[float, int]] = []
        seen = 0
        done = 0  # fine buckets already summed
        for k, bound in enumerate(EXPORT_BOUNDS):
            # Fine bucket i holds [BASE * 2**((i-1)/4), BASE * 2**(i/4)): the
            # values below BASE * 2**k are in buckets 0 to 4k.
            end = 4 * k + 1
            seen += sum(self.counts[done:end])
            done = end
            out.append((bound, seen))
        return tuple(out)

    def summary(self) -> LatencyStats:
        """p50/p95/p99/max/mean of what was recorded."""
        return LatencyStats(
            p50=self.percentile(50),
            p95=self.percentile(95),
            p99=self.percentile(99),
            max=self.max,
            mean=self.total / self.count if self.count else 0.0,
            count=self.count,
            total=self.total,
            buckets=self.cumulative(),
        )


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
        self._errors: deque[tuple[bool, str]] = deque(maxlen=8)  # (final, text)
        self._listeners = _Listeners()
        self._procs: dict[int, Any] = {}  # psutil.Process per pid, for CPU deltas
        self._figures: deque[tuple[Any, ...]] = deque()  # per-batch figures not folded yet (module docstring)

    # -- recording (backends) ------------------------------------------------------

    def batch_sent(self, size: int, reason: str, mean_wait: float | None) -> None:
        """A batch of ``size`` jobs went to a worker (``reason``: why it left its lane).

        ``mean_wait`` is the jobs' mean wait since submit; None for a batch
        sent again (split, given back), whose jobs' wait was counted already.
        """
        figures = self._figures
        figures.append((_SENT, size, reason, mean_wait))
        if len(figures) >= _FOLD_AT:
            self._fold()

    def results(self, ok: int) -> None:
        """``ok`` jobs returned a result."""
        figures = self._figures
        figures.append((_RESULTS, ok, self._clock()))
        if len(figures) >= _FOLD_AT:
            self._fold()

    def batch_done(self, jobs: int, run_time: float, mean_end_to_end: float, info: Any = None) -> None:
        """A batch of ``jobs`` finished after ``run_time`` seconds in its worker."""
        if jobs:
            figures = self._figures
            figures.append((_DONE, jobs, run_time, mean_end_to_end))
            if len(figures) >= _FOLD_AT:
                self._fold()
        if self._listeners.on_batch_done:
            self._emit(self._listeners.on_batch_done, info)

    def _fold(self) -> None:
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        figures = self._figures
        while figures:
            try:
                figure = figures.popleft()
            except IndexError:  # folded by another thread meanwhile
                return
            kind = figure[0]
            if kind == _RESULTS:
                self._completed += figure[1]
                self._count_settled(figure[1], figure[2])
            elif kind == _DONE:
                _, jobs, run_time, mean_end_to_end = figure
                self._run_time.add(run_time / jobs, jobs)
                self._end_to_end.add(mean_end_to_end, jobs)
            else:
                _, size, reason, mean_wait = figure
                self._batches += 1
                self._flush[reason] += 1
                self._sizes[1 << max(0, size - 1).bit_length()] += 1
                self._size_total += size
                if mean_wait is not None:
                    self._queue_wait.add(mean_wait, size)

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
            self._errors.append((final, f"job {job_id}: {type(exc).__name__}: {exc}"[:200]))
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
                self._errors.append((True, f"{n} jobs: {type(exc).__name__}: {exc}"[:200]))
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

    def _count_settled(self, n: int, when: float | None = None) -> None:
        second = int(self._clock() if when is None else when)
        seconds = self._seconds
        # Queued results are folded after later ones were counted directly
        # (failures), so a second may already have its bucket, or a later one.
        for i in range(len(seconds) - 1, -1, -1):
            at, count = seconds[i]
            if at == second:
                seconds[i] = (second, count + n)
                return
            if at < second:
                if i == len(seconds) - 1:
                    seconds.append((second, n))  # the usual case (a full deque drops its oldest)
                else:
                    if len(seconds) == seconds.maxlen:
                        seconds.popleft()
                        i -= 1
                    seconds.insert(i + 1, (second, n))
                return
        if len(seconds) != seconds.maxlen:  # older than every second kept: outside the window otherwise
            seconds.appendleft((second, n))

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
            self._fold_locked()
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
        settled = completed + failed

        def rate(window: int) -> float:
            # A pool younger than the window has settled everything inside
            # it: divide by its age, not by the window (ten jobs in the first
            # second are 10 jobs/s, not 1). Older: whole seconds only, divided
            # by the part of them the pool was alive for.
            if uptime < window:
                return settled / uptime
            alive = min(float(window), current - self._start)
            return sum(history[-window:]) / alive if alive > 0 else settled / uptime

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
            throughput_1s=rate(1),
            throughput_10s=rate(10),
            throughput_total=settled / uptime,
            history=history,
            queue_wait=queue_wait,
            run_time=run_time,
            end_to_end=end_to_end,
            batches=batches,
            batch_size_mean=size_total / batches if batches else 0.0,
            batch_sizes=sizes,
            flush_reasons=flush,
            workers=self._workers(workers),
            worker_restarts=restarts,
            recent_errors=[text for _, text in errors],
            recent_errors_final=[final for final, _ in errors],
        )

    def _workers(self, workers: Iterable[tuple[int, int, str, int, bool]]) -> list[WorkerStats]:
        out = [self._worker(*w) for w in workers]
        # Forget exited workers: a pool that replaces workers for days must not
        # keep a psutil handle (and its cached numbers) for each one it ever had.
        live = {w.pid for w in out}
        for pid in [pid for pid in self._procs if pid not in live]:
            del self._procs[pid]
        return out

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
