"""What each benchmark workload measures on one pool: a number and its side figures.

A measure takes a ready pool (workers up, the workload's modules imported),
the pool's name and the sizes, and returns ``(value, extra)``. Imports
``bench.workloads`` (the job functions) and the options; no printing.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..options import Priority
from . import workloads as w

__all__ = ["FULL", "QUICK", "Sizes", "batched", "cpu", "gc_objects", "latency", "map_items", "numpy", "submit"]


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does (``--quick`` or full)."""

    submit: int
    submit_slow_pools: int
    map: int
    cpu_jobs: int
    cpu_loops: int
    arrays: int
    batched: int
    latency_seconds: float
    idle_probes: int
    gc_jobs: int
    dask_jobs: int


FULL = Sizes(200_000, 200_000, 1_000_000, 32, 200_000, 128, 20_000, 5.0, 1_000, 20_000, 20_000)
QUICK = Sizes(20_000, 4_000, 100_000, 8, 100_000, 16, 4_000, 1.5, 200, 4_000, 2_000)
#: Pools that pay a round trip per submit: fewer jobs measure their rate without a minute's wait.
SLOW_SUBMIT = ("ProcessPoolExecutor", "multiprocessing.Pool", "loky", "mpire")
_CHUNKED_MAP = ("ProcessPoolExecutor", "multiprocessing.Pool", "loky")


def _drain(futures: list[Any]) -> None:
    for f in futures:
        f.result(600)


def submit(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """Tiny jobs, one ``submit()`` each: jobs/s."""
    n = sizes.submit_slow_pools if name in SLOW_SUBMIT else sizes.submit
    start = time.perf_counter()
    _drain([ex.submit(w.tiny, i) for i in range(n)])
    return n / (time.perf_counter() - start), {}


def map_items(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """Tiny items through ``map``: items/s (the stdlib process pools with ``chunksize=1000``)."""
    chunksize = 1000 if name in _CHUNKED_MAP else 1
    # batchpool+retry (timeout=30 and a RetryPolicy) maps the same items:
    # time limits and retries act per item inside chunks.
    n = sizes.map
    start = time.perf_counter()
    total = sum(ex.map(w.tiny, range(n), chunksize=chunksize))
    seconds = time.perf_counter() - start
    assert total == n * (n + 1) // 2
    return n / seconds, {}


_serial_rates: dict[Sizes, float] = {}


def cpu(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """Pure-Python jobs of ~10 ms: jobs/s, and the speed-up over a serial loop."""
    if sizes not in _serial_rates:
        start = time.perf_counter()
        for _ in range(sizes.cpu_jobs):
            w.cpu(sizes.cpu_loops)
        _serial_rates[sizes] = sizes.cpu_jobs / (time.perf_counter() - start)
    start = time.perf_counter()
    _drain([ex.submit(w.cpu, sizes.cpu_loops) for _ in range(sizes.cpu_jobs)])
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


def numpy(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """8 MB arrays summed in the worker: GB/s, and its share of one core's memcpy."""
    import numpy as np

    # A stream of 8 MB float64 arrays: 16 distinct ones (128 MB, more than
    # any cache, so every copy reads memory), each job given a view object of
    # its own (the same object n times would be pickled once per batch, by
    # pickle's memo, which measures nothing).
    rng = np.random.default_rng(0)
    distinct = [rng.random(1_000_000) for _ in range(min(16, sizes.arrays))]
    if name == "batchpool+empty":
        # The same data in arrays made by ex.empty(): they travel as handles
        # to the pool's shared memory (mapped once per worker), not as bytes.
        made = []
        for arr in distinct:
            made.append(ex.empty(arr.shape, arr.dtype))
            made[-1][:] = arr
        distinct = made
    jobs = [distinct[i % len(distinct)][:] for i in range(sizes.arrays)]
    start = time.perf_counter()
    _drain([ex.submit(w.array_sum, arr) for arr in jobs])
    gbps = sum(arr.nbytes for arr in jobs) / (time.perf_counter() - start) / 1e9
    hot, cold = _memcpy_gbps(np, distinct)
    return gbps, {"share_of_memcpy": gbps / hot, "share_of_cold_memcpy": gbps / cold}


def batched(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """A function with a 0.2 ms cost per call: items/s (batchpool calls it once per batch)."""
    fn = w.bulk_square if name.startswith("batchpool") else w.square_with_overhead
    start = time.perf_counter()
    _drain([ex.submit(fn, i) for i in range(sizes.batched)])
    return sizes.batched / (time.perf_counter() - start), {}


def _percentiles_ms(trips: list[float]) -> tuple[float, float]:
    trips = sorted(trips)
    return trips[len(trips) // 2] * 1000, trips[min(len(trips) - 1, int(len(trips) * 0.99))] * 1000


def latency(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """Round trips: idle (one ``submit().result()`` at a time), then REALTIME under a BULK flood.

    The value is the flood's p99 in ms; ``idle_p50_ms``/``idle_p99_ms`` and the
    flood's ``p50_ms`` go alongside.
    """
    trips: list[float] = []
    for i in range(sizes.idle_probes + 20):
        sent = time.perf_counter()
        ex.submit(w.probe, sent).result(60)
        if i >= 20:  # the first few warm the path up
            trips.append(time.perf_counter() - sent)
    idle_p50, idle_p99 = _percentiles_ms(trips)
    ours = name.startswith("batchpool")
    bulk = ex.options(priority=Priority.BULK) if ours else ex
    urgent = ex.options(priority=Priority.REALTIME) if ours else ex
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
    trips = []
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
    p50, p99 = _percentiles_ms(trips)
    extra = {"p50_ms": p50, "p99_ms": p99, "probes": float(len(trips))}
    return p99, {**extra, "idle_p50_ms": idle_p50, "idle_p99_ms": idle_p99}


def gc_objects(ex: Any, name: str, sizes: Sizes) -> tuple[float, dict[str, float]]:
    """GC-tracked objects per job in the parent, the Futures held: a count, not a timing.

    With the collector off, ``len(gc.get_objects())`` after every job is done,
    minus before, over the jobs: what a job leaves for the collector to track
    (its Future and what hangs on it, and cyclic garbage). Collected then, what
    stays is what a held Future keeps. batchpool runs with a fixed batch size
    here (``max_batch_size=64``, batches leave full), so the figure does not
    depend on how the batches happened to be cut.
    """
    n = sizes.gc_jobs
    _drain([ex.submit(w.tiny, i) for i in range(256)])  # lanes, caches, threads in place
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        futures = [ex.submit(w.tiny, i) for i in range(n)]
        _drain(futures)
        live = len(gc.get_objects())
        gc.collect()
        kept = len(gc.get_objects())
    finally:
        gc.enable()
    del futures
    return (live - before) / n, {"held_per_job": (kept - before) / n, "garbage_per_job": (live - kept) / n}


def median(samples: list[float]) -> float:
    """The median (NaN when there is none)."""
    return statistics.median(samples) if samples else float("nan")
