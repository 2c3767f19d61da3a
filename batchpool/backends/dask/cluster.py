"""The Dask side of a pool: which client it uses, what it owns, and what it scattered.

Imports ``distributed`` (the only batchpool module besides the backend that
does, and only when ``backend="dask"`` is chosen), ``serialization`` and
``remote``. Three ways to get a client, in order: the user's ``client``
(batchpool never closes it); a ``Client`` connected to ``address`` (closed at
shutdown); or a ``LocalCluster`` of ``max_workers`` worker processes with one
thread each, bound to 127.0.0.1, no dashboard, and ``allowed-failures`` 0
(a task whose worker dies fails at once, so batchpool can split its batch
and find the job that kills workers), closed at shutdown.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from ... import serialization
from ...jobs import Job
from ...options import PoolConfig
from .remote import Scattered

__all__ = ["SCATTER_THRESHOLD", "Connection", "Initializer", "Scatter"]

logger = logging.getLogger("batchpool")

#: Top-level arguments at least this large (numpy arrays, bytes: anything with
#: the buffer protocol) are scattered to the cluster once per object and sent
#: as a reference, instead of being pickled into every batch that uses them.
SCATTER_THRESHOLD = 2**20

_PLAIN = frozenset({int, float, str, bool, type(None), complex, tuple, list, dict})


try:
    import distributed as distributed  # re-exported: the backend takes it from here
    from distributed.client import done_callback as done_callback  # waits on a future on Dask's event loop
except ImportError as exc:  # the optional extra
    raise ImportError("backend='dask' needs the distributed package: pip install 'batchpool[dask]'") from exc


def _initialize(fn_blob: bytes, args_blob: bytes) -> None:
    fn = serialization.loads(fn_blob)
    fn(*serialization.loads(args_blob))


class Connection:
    """The client of one pool, and the cluster it started (if any)."""

    def __init__(self, config: PoolConfig) -> None:
        self.cluster: Any = None
        self.owned = config.client is None
        if config.client is not None:
            if not isinstance(config.client, distributed.Client):
                raise TypeError(f"client must be a distributed.Client, got {type(config.client).__name__}")
            self.client: Any = config.client
        elif config.address is not None:
            self.client = distributed.Client(config.address, set_as_default=False)  # type: ignore[no-untyped-call]
        else:
            import dask

            # Read when the scheduler is made: a crash fails its task at once.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self.cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=config.max_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # Without a dashboard the scheduler still serves /metrics,
                    # on port 8787 unless told: a free port, never a warning
                    # about another cluster's port.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            try:
                self.client = distributed.Client(self.cluster, set_as_default=False)  # type: ignore[no-untyped-call]
            except BaseException:
                self.cluster.close()
                raise
        self.prefix = f"batchpool-{uuid.uuid4().hex[:12]}"
        self.plugin: str | None = None
        #: What the initializer raised on a worker: the pool is then broken,
        #: as a standard pool is by a failing initializer.
        self.init_error: BaseException | None = None
        if config.initializer is not None:
            try:
                self._register_initializer(config)
            except Exception as exc:  # noqa: BLE001 - reported through the pool's state
                self.init_error = exc

    def _register_initializer(self, config: PoolConfig) -> None:
        plugin = Initializer(serialization.dumps_callable(config.initializer), serialization.dumps(config.initargs))  # type: ignore[arg-type]
        name = f"{self.prefix}-initializer"
        # Runs on every worker there is and every worker that joins later.
        self.plugin = name  # unregistered at close even if a worker's setup fails now
        register = getattr(self.client, "register_plugin", None) or self.client.register_worker_plugin
        register(plugin, name=name)

    def close(self) -> None:
        """Let go of the cluster: unregister the initializer; close what this pool started."""
        client = self.client if hasattr(self, "client") else None
        if client is not None and self.plugin is not None and self.cluster is None:
            # Not our own cluster: later workers must not run our initializer.
            try:
                client.unregister_worker_plugin(self.plugin)
            except Exception:  # a cluster that went away has no plugin to remove
                logger.debug("batchpool: could not unregister %s", self.plugin, exc_info=True)
        self.plugin = None
        if self.owned:
            if client is not None:
                client.close()
            if self.cluster is not None:
                self.cluster.close()

    def threads(self) -> int:
        """Worker threads in the cluster now (at least 1, so work waits there rather than here)."""
        try:
            threads: dict[str, int] = self.client.nthreads()
        except Exception:  # a scheduler that is away now: keep going with one
            logger.debug("batchpool: nthreads() failed", exc_info=True)
            return 1
        return max(1, sum(threads.values()))


class Initializer(distributed.WorkerPlugin):
    """Runs the pool's ``initializer(*initargs)`` once on each Dask worker (in its event loop).

    Both are pickled by batchpool (an initializer of ``__main__`` by value).
    """

    def __init__(self, fn_blob: bytes, args_blob: bytes) -> None:
        self.fn_blob = fn_blob
        self.args_blob = args_blob

    def setup(self, worker: Any) -> None:
        _initialize(self.fn_blob, self.args_blob)


def _nbytes(value: object) -> int:
    if type(value) in _PLAIN:
        return 0
    try:
        with memoryview(value) as view:  # type: ignore[arg-type]
            return view.nbytes
    except TypeError:
        return 0


class Scatter:
    """Large arguments scattered to the cluster once per object, released when their jobs settle.

    Only the manager thread uses it. An entry holds the object itself (so its
    ``id`` stays its own while the entry lives), the Dask future of its copy on
    the cluster, and the ids of the unsettled jobs that use it.
    """

    def __init__(self, client: Any, threshold: int = SCATTER_THRESHOLD) -> None:
        self._client = client
        self._threshold = threshold
        self._entries: dict[int, tuple[object, Any, set[int]]] = {}
        self._by_job: dict[int, list[int]] = {}
        self._names = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def prepare(self, jobs: Sequence[Job]) -> tuple[list[tuple[tuple[Any, ...], Any]], list[Any]]:
        """The calls of ``jobs`` with large arguments replaced by ``Scattered`` markers, and their futures."""
        calls: list[tuple[tuple[Any, ...], Any]] = []
        data: list[Any] = []
        index: dict[int, int] = {}
        threshold = self._threshold
        for job in jobs:
            args, kwargs = job.args, job.kwargs
            big = [a for a in args if _nbytes(a) >= threshold]
            if kwargs:
                big.extend(v for v in kwargs.values() if _nbytes(v) >= threshold)
            if not big:
                calls.append((args, kwargs))
                continue
            for obj in big:
                if id(obj) not in index:
                    index[id(obj)] = len(data)
                    data.append(self._future(obj, job.id))
                else:
                    self._use(obj, job.id)

            def marker(value: Any) -> Any:
                at = index.get(id(value))
                return value if at is None else Scattered(at)

            new_kwargs = {k: marker(v) for k, v in kwargs.items()} if kwargs else kwargs
            calls.append((tuple(marker(a) for a in args), new_kwargs))
        return calls, data

    def _future(self, obj: object, job_id: int) -> Any:
        entry = self._entries.get(id(obj))
        if entry is None:
            future = self._client.scatter(obj, hash=False)
            entry = self._entries[id(obj)] = (obj, future, set())
        self._use(obj, job_id)
        return entry[1]

    def _use(self, obj: object, job_id: int) -> None:
        entry = self._entries[id(obj)]
        if job_id not in entry[2]:
            entry[2].add(job_id)
            self._by_job.setdefault(job_id, []).append(id(obj))

    def settled(self, jobs: Sequence[Job]) -> None:
        """Jobs whose Futures are settled stop holding their scattered arguments."""
        if not self._by_job:
            return
        for job in jobs:
            if job.future.done():
                for key in self._by_job.pop(job.id, ()):
                    entry = self._entries.get(key)
                    if entry is not None:
                        entry[2].discard(job.id)
                        if not entry[2]:
                            del self._entries[key]  # the Dask future goes: the cluster drops its copy

    def clear(self) -> None:
        """Release everything (shutdown)."""
        self._entries.clear()
        self._by_job.clear()
