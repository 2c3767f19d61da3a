"""Run workloads against pools, interleaved and repeated; no printing here.

Every result is a number measured in the same process run as its baselines:
jobs (or items, or bytes) per second, milliseconds, or objects, the median of
the repetitions with min and max as the spread. A workload lists the pools it
applies to (the others are not run, and not reported); a pool that is not
installed or not in this build is reported once, with the reason. ``pages``
and ``dask`` bring their own pools (a paginated source, a local cluster).
The CLI renders what ``run`` returns (``bench.report``).
"""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ..executor import BatchPoolExecutor
from . import measures as m
from . import workloads as w
from .executors import EXECUTORS, PEERS, unavailable

__all__ = ["BASELINES", "EXECUTORS", "PEERS", "VARIANTS", "WORKLOADS", "Result", "Workload", "run", "system_info"]


@dataclass
class Result:
    """One workload on one pool: the median and spread of its repetitions."""

    workload: str
    executor: str
    unit: str
    samples: list[float] = field(default_factory=list)
    skipped: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    lower_is_better: bool = False

    @property
    def median(self) -> float:
        """The median of the samples (NaN when skipped)."""
        return m.median(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """Every field, and the median, JSON-able."""
        data = asdict(self)
        data["median"] = None if not self.samples else self.median
        return data


MeasureFn = Callable[[Any, str, m.Sizes], tuple[float, dict[str, float]]]
StandaloneFn = Callable[[int, m.Sizes, Callable[[str], None]], list[Result]]

_CORE = ("batchpool-process", "batchpool-thread", "ThreadPoolExecutor", "ProcessPoolExecutor", "multiprocessing.Pool")


@dataclass(frozen=True)
class Workload:
    """A workload: what it measures, its unit, and the pools it applies to."""

    title: str
    """One line for the table's title."""
    unit: str
    """The value's unit."""
    measure: MeasureFn | None = None
    """Measures one pool (None: ``standalone`` brings its own pools)."""
    pools: tuple[str, ...] = ()
    """The pools it is run on, in the table's order."""
    lower_is_better: bool = False
    """Milliseconds and object counts: smaller wins."""
    imports: tuple[str, ...] = ()
    """Modules its jobs import, imported while the workers warm up."""
    batchpool_kwargs: tuple[tuple[str, Any], ...] = ()
    """Constructor arguments of the batchpool pools for this workload."""
    standalone: StandaloneFn | None = None
    """(workers, sizes, progress) -> results, for workloads with pools of their own."""


def _pages(workers: int, sizes: m.Sizes, progress: Callable[[str], None]) -> list[Result]:
    try:
        from . import pages  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError as exc:
        del exc
        return [Result("pages", "map_pages", "items/s", skipped="not in this build (bench/pages.py)")]
    progress("pages: pipelined and serial pagination")
    try:
        figures = pages.measure(workers=workers, quick=sizes is m.QUICK)
    except Exception as exc:  # noqa: BLE001 - one broken workload must not lose the others' numbers
        return [Result("pages", "map_pages", "items/s", skipped=f"failed: {type(exc).__name__}: {exc}")]
    numbers = {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    pipelined = next((v for k, v in numbers.items() if "pipelined" in k), float("nan"))
    serial = next((v for k, v in numbers.items() if "serial" in k), float("nan"))
    return [
        Result("pages", "map_pages", "items/s", [pipelined], extra=numbers),
        Result("pages", "serial loop", "items/s", [serial]),
    ]


def _dask(workers: int, sizes: m.Sizes, progress: Callable[[str], None]) -> list[Result]:
    import inspect

    def skipped(reason: str) -> list[Result]:
        return [Result("dask", name, "jobs/s", skipped=reason) for name in ("batchpool-dask", "get_executor")]

    if importlib.util.find_spec("distributed") is None:
        return skipped("not installed")
    if "client" not in inspect.signature(BatchPoolExecutor).parameters:
        return skipped("no Dask backend in this build")
    from distributed import Client, LocalCluster  # type: ignore[import-not-found,import-untyped,unused-ignore]

    progress("dask: starting a local cluster")
    results = []
    cluster = LocalCluster(  # type: ignore[no-untyped-call,unused-ignore]
        n_workers=workers,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        processes=True,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787, which another cluster may hold
    )
    try:
        with Client(cluster) as client:  # type: ignore[no-untyped-call,unused-ignore]
            try:
                ours: Any = BatchPoolExecutor(backend="dask", client=client)  # type: ignore[call-arg,unused-ignore]
            except TypeError as exc:
                return skipped(f"no Dask backend in this build ({type(exc).__name__}: {exc})")
            pools = (
                ("batchpool-dask", ours, sizes.dask_jobs),
                ("get_executor", client.get_executor(), sizes.dask_jobs // 10),
            )
            for name, ex, n in pools:
                progress(f"dask on {name}")
                ex.submit(w.tiny, 0).result(60)
                start = time.perf_counter()
                for f in [ex.submit(w.tiny, i) for i in range(n)]:
                    f.result(600)
                results.append(Result("dask", name, "jobs/s", [n / (time.perf_counter() - start)]))
                ex.shutdown(wait=True)
    finally:
        cluster.close()
    return results


_SUBMIT_POOLS = (*_CORE, "loky", "mpire")
WORKLOADS: dict[str, Workload] = {
    "submit": Workload(
        "tiny jobs, one submit() each",
        "jobs/s",
        m.submit,
        (
            *_SUBMIT_POOLS[:2],
            "batchpool-pipe",
            "batchpool+dashboard",
            "batchpool+journal",
            "batchpool+journal-full",
            *_SUBMIT_POOLS[2:],
        ),
    ),
    "map": Workload(
        "tiny items through map()",
        "items/s",
        m.map_items,
        (*_CORE[:2], "batchpool-pipe", "batchpool+dashboard", "batchpool+retry", *_CORE[2:], "loky", "joblib", "mpire"),
    ),
    "cpu": Workload("pure-Python jobs of ~10 ms", "jobs/s", m.cpu, _SUBMIT_POOLS),
    "numpy": Workload(
        "8 MB arrays summed in the worker",
        "GB/s",
        m.numpy,
        (
            "batchpool-process",
            "batchpool+empty",
            "batchpool-pipe",
            "batchpool-thread",
            "ThreadPoolExecutor",
            "ProcessPoolExecutor",
            "loky",
        ),
        imports=("numpy",),
    ),
    "batched": Workload("a call that costs 0.2 ms, per item or per batch", "items/s", m.batched, _SUBMIT_POOLS),
    "latency": Workload(
        "round trip: idle, then REALTIME under a BULK flood",
        "ms p99",
        m.latency,
        ("batchpool-process", "batchpool-thread", "ThreadPoolExecutor", "ProcessPoolExecutor", "loky"),
        lower_is_better=True,
    ),
    "gc": Workload(
        "GC-tracked objects per job in the parent",
        "objects",
        m.gc_objects,
        _SUBMIT_POOLS,
        lower_is_better=True,
        batchpool_kwargs=(("max_batch_size", 64), ("max_delay", 0.05)),
    ),
    "pages": Workload("map_pages on a 50 ms-latency source vs a serial loop", "items/s", standalone=_pages),
    "dask": Workload("tiny jobs on a 2-worker local Dask cluster", "jobs/s", standalone=_dask),
}
BASELINES = ("ThreadPoolExecutor", "ProcessPoolExecutor", "multiprocessing.Pool")
#: Variants compared with the plain process pool (their cost), as ``extra["share_of_plain"]``.
VARIANTS = ("batchpool-pipe", "batchpool+dashboard", "batchpool+retry", "batchpool+journal", "batchpool+journal-full")


@contextmanager
def _executor(name: str, workers: int, workload: Workload) -> Iterator[Any]:
    pool = EXECUTORS[name]
    ex = pool.make(workers, dict(workload.batchpool_kwargs) if name.startswith("batchpool") else {})
    try:
        if hasattr(ex, "submit"):
            # Every worker up, with the workload's modules imported, before
            # any clock starts: jobs that overlap force the pools that start
            # workers on demand to start them all.
            for f in [ex.submit(w.warm_up, 0.05, workload.imports) for _ in range(workers * 2)]:
                f.result(60)
        yield ex
    finally:
        if not pool.stays_up:
            ex.shutdown()


def run(
    workloads: list[str],
    executors: list[str],
    *,
    workers: int = 2,
    repeat: int = 3,
    quick: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Run the workloads on the pools (those of ``executors`` each applies to), ``repeat`` times, interleaved.

    Returns the applicable pairs, and the pools that could not run, with
    ``skipped`` saying why ('not installed', or what this build lacks).
    """
    sizes = m.QUICK if quick else m.FULL
    results: list[Result] = []
    probed: dict[str, str] = {}
    for name in workloads:
        workload = WORKLOADS[name]
        if workload.standalone is not None:
            results.extend(workload.standalone(workers, sizes, progress))
            continue
        assert workload.measure is not None
        rows = []
        for executor in (e for e in workload.pools if e in executors):
            row = Result(name, executor, workload.unit, lower_is_better=workload.lower_is_better)
            row.skipped = unavailable(executor, probed)
            if name == "numpy" and importlib.util.find_spec("numpy") is None:
                row.skipped = "numpy is not installed (pip install batchpool[bench])"
            rows.append(row)
        for rep in range(repeat):
            for row in rows:
                if row.skipped:
                    continue
                progress(f"{name} on {row.executor} ({rep + 1}/{repeat})")
                # Garbage left by the previous run is collected now, not on
                # the next run's clock.
                gc.collect()
                with _executor(row.executor, workers, workload) as ex:
                    value, extra = workload.measure(ex, row.executor, sizes)
                row.samples.append(value)
                for key, number in extra.items():
                    row.extra[key] = row.extra.get(key, 0.0) + number / repeat
        plain = next((r for r in rows if r.executor == "batchpool-process" and r.samples), None)
        for row in rows:
            if plain is not None and row.executor in VARIANTS and row.samples:
                row.extra["share_of_plain"] = row.median / plain.median
        results.extend(rows)
    return results


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
