"""The pools ``batchpool bench`` compares, behind the calls its workloads make.

Every entry makes a pool with ``submit`` (a Future-like with ``result``),
``map`` and ``shutdown``: batchpool's variants (transport, dashboard, timeout
and retry, journal), the standard pools, and the peers (loky, joblib, mpire)
when installed. Imports the executor and ``bench.workloads``; no printing.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..executor import BatchPoolExecutor
from ..retry import RetryPolicy

__all__ = ["EXECUTORS", "PEERS", "Pool", "unavailable"]


@dataclass(frozen=True)
class Pool:
    """How to make one compared pool, and what it needs."""

    make: Callable[[int, dict[str, Any]], Any]
    """(workers, batchpool keyword arguments of the workload) -> a pool."""
    module: str | None = None
    """A module that must be importable (a peer), or None."""
    probe: Callable[[], str] | None = None
    """Says why the pool is not available in this build ('' when it is)."""
    stays_up: bool = False
    """Reusable by design (loky): not shut down after a run."""


class _AsyncResult:
    """An ApplyResult seen as a Future (``result`` only); no reference cycle."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def result(self, timeout: float | None = None) -> Any:
        return self._inner.get(timeout)


class _PoolAdapter:
    """multiprocessing.Pool behind the calls the workloads make."""

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context().Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _AsyncResult(self.pool.apply_async(fn, args))

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        return self.pool.map(fn, items, chunksize=max(chunksize, 1000))

    def shutdown(self) -> None:
        self.pool.terminate()
        self.pool.join()


class _Joblib:
    """joblib: ``Parallel`` maps; it has no submit, so only map workloads use it."""

    def __init__(self, workers: int) -> None:
        from joblib import Parallel  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._parallel = Parallel(n_jobs=workers, batch_size="auto")

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        from joblib import delayed

        return list(self._parallel(delayed(fn)(x) for x in items))

    def shutdown(self) -> None:
        pass


class _Mpire:
    """mpire's WorkerPool: ``apply_async`` is its submit, ``map`` its map."""

    def __init__(self, workers: int) -> None:
        from mpire import WorkerPool  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._pool = WorkerPool(n_jobs=workers, keep_alive=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _AsyncResult(self._pool.apply_async(fn, args))

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        return self._pool.map(fn, list(items))

    def shutdown(self) -> None:
        self._pool.terminate()


def _loky(workers: int, _: dict[str, Any]) -> Any:
    from loky import get_reusable_executor  # type: ignore[import-not-found,import-untyped,unused-ignore]

    return get_reusable_executor(max_workers=workers)


def _with_dashboard(workers: int, kwargs: dict[str, Any]) -> Any:
    """A process pool with the live dashboard on, rendering into a terminal sink."""
    import io

    from rich.console import Console

    from ..dashboard import Dashboard

    ex = BatchPoolExecutor(workers, **kwargs)
    view = Dashboard(ex, console=Console(file=io.StringIO(), force_terminal=True, width=120, height=40))
    view.start()
    ex._add_shutdown_hook(view.stop)
    return ex


class _Journaled:
    """A journaled pool writing to a temporary directory, removed at shutdown."""

    def __init__(self, workers: int, sync: str, kwargs: dict[str, Any]) -> None:
        self._dir = tempfile.mkdtemp(prefix="batchpool-bench-")
        try:
            self._ex: Any = BatchPoolExecutor(workers, journal=f"{self._dir}/jobs.db", journal_sync=sync, **kwargs)  # type: ignore[call-arg,unused-ignore]
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._ex.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Any, chunksize: int = 1) -> Any:
        return self._ex.map(fn, items, chunksize=chunksize)

    def shutdown(self) -> None:
        try:
            self._ex.shutdown(wait=True)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def journal_missing() -> str:
    """'' when ``BatchPoolExecutor(journal=..., journal_sync=...)`` works in this build, else why not."""
    with tempfile.TemporaryDirectory(prefix="batchpool-bench-") as tmp:
        try:
            ex: Any = BatchPoolExecutor(1, backend="thread", journal=f"{tmp}/probe.db", journal_sync="normal")  # type: ignore[call-arg,unused-ignore]
        except TypeError:
            return "no journal in this build"
        ex.shutdown(wait=True)
    return ""


EXECUTORS: dict[str, Pool] = {
    "batchpool-process": Pool(lambda n, kw: BatchPoolExecutor(n, **kw)),
    # The process pool, given arrays made with ex.empty() where a workload makes arrays.
    "batchpool+empty": Pool(lambda n, kw: BatchPoolExecutor(n, **kw)),
    "batchpool-pipe": Pool(lambda n, kw: BatchPoolExecutor(n, transport="pipe", **kw)),
    "batchpool-thread": Pool(lambda n, kw: BatchPoolExecutor(n, backend="thread", **kw)),
    # Starts (and at shutdown closes) a LocalCluster of n worker processes.
    "batchpool-dask": Pool(lambda n, kw: BatchPoolExecutor(n, backend="dask", **kw), module="distributed"),
    "batchpool+dashboard": Pool(_with_dashboard),
    "batchpool+retry": Pool(lambda n, kw: BatchPoolExecutor(n, timeout=30, retry=RetryPolicy(max_attempts=3), **kw)),
    "batchpool+journal": Pool(lambda n, kw: _Journaled(n, "normal", kw), probe=journal_missing),
    "batchpool+journal-full": Pool(lambda n, kw: _Journaled(n, "full", kw), probe=journal_missing),
    "ThreadPoolExecutor": Pool(lambda n, _: ThreadPoolExecutor(n)),
    "ProcessPoolExecutor": Pool(lambda n, _: ProcessPoolExecutor(n)),
    "multiprocessing.Pool": Pool(lambda n, _: _PoolAdapter(n)),
    "loky": Pool(_loky, module="loky", stays_up=True),
    "joblib": Pool(lambda n, _: _Joblib(n), module="joblib"),
    "mpire": Pool(lambda n, _: _Mpire(n), module="mpire"),
}
#: Pools from other projects (``pip install batchpool[peers]``).
PEERS = ("loky", "joblib", "mpire")


def unavailable(name: str, probed: dict[str, str]) -> str:
    """Why pool ``name`` cannot run here ('' when it can); probes are run once, into ``probed``."""
    pool = EXECUTORS[name]
    if pool.module is not None and importlib.util.find_spec(pool.module) is None:
        return "not installed"
    if pool.probe is not None:
        key = getattr(pool.probe, "__name__", name)
        if key not in probed:
            probed[key] = pool.probe()
        return probed[key]
    return ""
