"""Run workloads against executors, interleaved and repeated; no printing here.

Every result is a ratio-friendly number measured in the same process run as
its baselines: jobs (or bytes) per second, median of the repetitions, with
min and max as the spread. The CLI renders what ``run`` returns.
"""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ..executor import BatchPoolExecutor
from ..options import Priority
from . import workloads as w

__all__ = ["EXECUTORS", "WORKLOADS", "Result", "run", "system_info"]


@dataclass
class Result:
    """One workload on one executor: the median and spread of its repetitions."""

    workload: str
    executor: str
    unit: str
    samples: list[float] = field(default_factory=list)
    skipped: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["median"] = None if not self.samples else self.median
        return data


# -- executors -------------------------------------------------------------------


class _AsyncResult:
    """An ApplyResult seen as a Future (``result`` only); no reference cycle."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def result(self, timeout: float | None = None) -> Any:
        return self._inner.get(timeout)


class _PoolAdapter:
    """multiprocessing.Pool behind the two calls the workloads use."""

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context().Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _AsyncResult(self.pool.apply_async(fn, args))

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        return self.pool.map(fn, items, chunksize=max(chunksize, 1000))

    def shutdown(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _with_dashboard(workers: int) -> Any:
    """A process pool with the live dashboard on, rendering into a terminal sink."""
    import io

    from rich.console import Console

    from ..dashboard import Dashboard

    ex = BatchPoolExecutor(workers)
    view = Dashboard(ex, console=Console(file=io.StringIO(), force_terminal=True, width=120))
    view.start()
    ex._add_shutdown_hook(view.stop)
    return ex


class _MapOnly:
    """Pools that only map (joblib, mpire): submit-style workloads do not apply."""

    def __init__(self, run_map: Callable[[Callable[..., Any], Any], list[Any]], close: Callable[[], None]) -> None:
        self._run_map = run_map
        self._close = close

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        value = self._run_map(fn, [args[0]])[0]
        done: Any = type("Done", (), {"result": lambda self, timeout=None: value})()
        return done

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        return self._run_map(fn, list(items))

    def shutdown(self) -> None:
        self._close()


def _joblib(workers: int) -> Any:
    from joblib import Parallel, delayed  # type: ignore[import-not-found]

    parallel = Parallel(n_jobs=workers, batch_size="auto")
    return _MapOnly(lambda fn, items: list(parallel(delayed(fn)(x) for x in items)), lambda: None)


def _mpire(workers: int) -> Any:
    from mpire import WorkerPool  # type: ignore[import-not-found]

    pool = WorkerPool(n_jobs=workers)
    return _MapOnly(lambda fn, items: pool.map(fn, items), pool.terminate)


def _loky(workers: int) -> Any:
    from loky import get_reusable_executor  # type: ignore[import-not-found]

    return get_reusable_executor(max_workers=workers)


EXECUTORS: dict[str, tuple[Callable[[int], Any], str | None]] = {
    # name: (factory, module that must be importable, if any)
    "batchpool-process": (lambda n: BatchPoolExecutor(n), None),
    "batchpool-pipe": (lambda n: BatchPoolExecutor(n, transport="pipe"), None),
    "batchpool-thread": (lambda n: BatchPoolExecutor(n, backend="thread"), None),
    "batchpool+dashboard": (_with_dashboard, None),
    "ThreadPoolExecutor": (lambda n: ThreadPoolExecutor(n), None),
    "ProcessPoolExecutor": (lambda n: ProcessPoolExecutor(n), None),
    "multiprocessing.Pool": (lambda n: _PoolAdapter(n), None),
    "loky": (_loky, "loky"),
    "joblib": (_joblib, "joblib"),
    "mpire": (_mpire, "mpire"),
}
BASELINES = ("ThreadPoolExecutor", "ProcessPoolExecutor", "multiprocessing.Pool")


@contextmanager
def _executor(name: str, workers: int, modules: tuple[str, ...] = ()) -> Iterator[Any]:
    factory, _ = EXECUTORS[name]
    ex = factory(workers)
    try:
        # Every worker up, with the workload's modules imported, before any
        # clock starts: jobs that overlap force the pools that start workers
        # on demand to start them all.
        for f in [ex.submit(w.warm_up, 0.05, modules) for _ in range(workers * 2)]:
            f.result(60)
        yield ex
    finally:
        if name != "loky":  # loky's executor is reusable by design; it stays up
            ex.shutdown()


def _missing(name: str) -> str:
    module = EXECUTORS[name][1]
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return ""


# -- workloads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    submit: int
    submit_slow_pools: int
    map: int
    cpu_jobs: int
    cpu_loops: int
    arrays: int
    batched: int
    latency_seconds: float


FULL = Sizes(200_000, 200_000, 1_000_000, 32, 200_000, 128, 20_000, 5.0)
QUICK = Sizes(20_000, 4_000, 100_000, 8, 100_000, 16, 4_000, 1.5)
#: What a workload's jobs import in the worker: imported while warming up,
#: not on the clock (importing numpy takes longer than moving 1 GB).
_IMPORTS = {"numpy": ("numpy",)}
_SLOW_SUBMIT = ("ProcessPoolExecutor", "multiprocessing.Pool", "loky")
_CHUNKED_MAP = ("ProcessPoolExecutor", "multiprocessing.Pool", "loky")


def _submit(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    n = sizes.submit_slow_pools if name in _SLOW_SUBMIT else sizes.submit
    start = time.perf_counter()
    futures = [ex.submit(w.tiny, i) for i in range(n)]
    for f in futures:
        f.result(600)
    return n / (time.perf_counter() - start), {}


def _map(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    chunksize = 1000 if name in _CHUNKED_MAP else 1
    start = time.perf_counter()
    total = sum(ex.map(w.tiny, range(sizes.map), chunksize=chunksize))
    seconds = time.perf_counter() - start
    assert total == sizes.map * (sizes.map + 1) // 2
    return sizes.map / seconds, {}


def _serial_cpu_rate(sizes: Sizes) -> float:
    start = time.perf_counter()
    for _ in range(sizes.cpu_jobs):
        w.cpu(sizes.cpu_loops)
    return sizes.cpu_jobs / (time.perf_counter() - start)


_serial_rates: dict[Sizes, float] = {}


def _cpu(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    if sizes not in _serial_rates:
        _serial_rates[sizes] = _serial_cpu_rate(sizes)
    start = time.perf_counter()
    futures = [ex.submit(w.cpu, sizes.cpu_loops) for _ in range(sizes.cpu_jobs)]
    for f in futures:
        f.result(600)
    rate = sizes.cpu_jobs / (time.perf_counter() - start)
    return rate, {"speedup_vs_serial": rate / _serial_rates[sizes]}


def _memcpy_gbps(np: Any, arrays: list[Any]) -> tuple[float, float]:
    """Single-core memcpy bandwidth: (hot: one array copied again and again, cold: each array once)."""
    out = np.empty_like(arrays[0])
    np.copyto(out, arrays[0])
    start = time.perf_counter()
    for _ in range(10):
        np.copyto(out, arrays[0])
    hot = 10 * arrays[0].nbytes / (time.perf_counter() - start)
    start = time.perf_counter()
    for arr in arrays:
        np.copyto(out, arr)
    cold = sum(arr.nbytes for arr in arrays) / (time.perf_counter() - start)
    return hot / 1e9, cold / 1e9


def _numpy(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    import numpy as np

    # A stream of 8 MB float64 arrays: 16 distinct ones (128 MB, more than
    # any cache, so every copy reads memory), each job given a view object of
    # its own (the same object n times would be pickled once per batch, by
    # pickle's memo, which measures nothing).
    rng = np.random.default_rng(0)
    distinct = [rng.random(1_000_000) for _ in range(min(16, sizes.arrays))]
    jobs = [distinct[i % len(distinct)][:] for i in range(sizes.arrays)]
    start = time.perf_counter()
    futures = [ex.submit(w.array_sum, arr) for arr in jobs]
    for f in futures:
        f.result(600)
    gbps = sum(arr.nbytes for arr in jobs) / (time.perf_counter() - start) / 1e9
    hot, cold = _memcpy_gbps(np, distinct)
    return gbps, {"share_of_memcpy": gbps / hot, "share_of_cold_memcpy": gbps / cold}


def _batched(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    fn = w.bulk_square if name.startswith("batchpool") else w.square_with_overhead
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(sizes.batched)]
    for f in futures:
        f.result(600)
    return sizes.batched / (time.perf_counter() - start), {}


def _latency(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """REALTIME round trips while a feeder thread keeps BULK work queued."""
    bulk = ex.options(priority=Priority.BULK) if name.startswith("batchpool") else ex
    urgent = ex.options(priority=Priority.REALTIME) if name.startswith("batchpool") else ex
    stop = threading.Event()
    backlog: list[Any] = []

    def feeder() -> None:
        # Keep about 500 BULK jobs queued, topping up in small bursts so the
        # feeder itself does not hold the parent's GIL for long stretches.
        while not stop.is_set():
            backlog[:] = [f for f in backlog if not f.done()]
            for _ in range(min(50, max(0, 500 - len(backlog)))):
                backlog.append(bulk.submit(w.bulk_work, 0.0005))
            stop.wait(0.002)

    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()
    time.sleep(0.3)  # let the flood saturate the pool
    trips: list[float] = []
    end = time.perf_counter() + sizes.latency_seconds
    try:
        while time.perf_counter() < end:
            sent = time.perf_counter()
            urgent.submit(w.probe, sent).result(60)
            trips.append(time.perf_counter() - sent)
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
        for f in backlog:
            f.cancel()
    trips.sort()
    p50 = trips[len(trips) // 2] * 1000
    p99 = trips[min(len(trips) - 1, int(len(trips) * 0.99))] * 1000
    return p99, {"p50_ms": p50, "p99_ms": p99, "probes": float(len(trips))}


WORKLOADS: dict[str, tuple[Callable[[Any, str, Sizes], tuple[float, dict[str, float]]], str]] = {
    "submit": (_submit, "jobs/s"),
    "map": (_map, "items/s"),
    "cpu": (_cpu, "jobs/s"),
    "numpy": (_numpy, "GB/s"),
    "batched": (_batched, "items/s"),
    "latency": (_latency, "p99 ms"),
}
# Where a workload does not apply to an executor, and why.
_NOT_APPLICABLE = {
    **{
        (workload, pool): "it has no submit(); compared on map only"
        for workload in ("submit", "cpu", "numpy", "batched", "latency")
        for pool in ("joblib", "mpire")
    },
    **{
        (workload, "batchpool+dashboard"): "the dashboard's cost is measured on submit and map"
        for workload in ("cpu", "numpy", "batched", "latency")
    },
    **{
        (workload, "batchpool-pipe"): "the transport is compared on submit, map and numpy"
        for workload in ("cpu", "batched", "latency")
    },
    ("latency", "multiprocessing.Pool"): "no way to submit to it under a flood with a timeout",
    ("numpy", "multiprocessing.Pool"): "covered by ProcessPoolExecutor (same transport)",
}


def run(
    workloads: list[str],
    executors: list[str],
    *,
    workers: int = 2,
    repeat: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Run every workload on every executor, ``repeat`` times, interleaved."""
    sizes = QUICK if quick else FULL
    results: dict[tuple[str, str], Result] = {}
    for workload in workloads:
        fn, unit = WORKLOADS[workload]
        for executor in executors:
            result = results[workload, executor] = Result(workload, executor, unit)
            reason = _missing(executor) or _NOT_APPLICABLE.get((workload, executor), "")
            if workload == "numpy" and importlib.util.find_spec("numpy") is None:
                reason = "numpy is not installed (pip install batchpool[bench])"
            result.skipped = reason
        for rep in range(repeat):
            for executor in executors:
                result = results[workload, executor]
                if result.skipped:
                    continue
                progress(f"{workload} on {executor} ({rep + 1}/{repeat})")
                # Garbage left by the previous run is collected now, not on
                # the next run's clock.
                gc.collect()
                with _executor(executor, workers, _IMPORTS.get(workload, ())) as ex:
                    value, extra = fn(ex, executor, sizes)
                result.samples.append(value)
                for key, number in extra.items():
                    result.extra.setdefault(key, 0.0)
                    result.extra[key] += number / repeat
    return list(results.values())


def system_info(workers: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    from .. import __version__

    return {
        "batchpool": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "workers": workers,
        "start_method": multiprocessing.get_start_method(),
        "batchpool_start_method": BatchPoolExecutor(1)._mp_context.get_start_method(),
    }
