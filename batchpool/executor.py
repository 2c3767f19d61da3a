"""BatchPoolExecutor: a micro-batching drop-in for the standard pools.

Wires the parts together and owns the lifecycle; it holds no scheduling logic
of its own. Imports downward only: batching, backends, jobs, options, errors.

Lifetime rules (each one fixes a way the standard pools have hung or leaked):

* Nothing below the executor holds a reference to it. An executor that is
  garbage collected without ``shutdown()`` finishes its queued work and stops
  its workers (``weakref.finalize``), and ``map()``'s iterator keeps only a
  weak reference, so a pending iterator never keeps a pool alive.
* At interpreter exit (``threading._register_atexit``, which runs before
  threads are joined) every live pool refuses new work, finishes what it has,
  and stops: queued jobs still run, and nothing is left behind.
* ``shutdown(wait=True)`` from inside a job's done-callback (which runs on a
  pool thread) does not wait for that thread itself, so it cannot deadlock.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from .backends import load_backend
from .backends.base import Backend, cancel_jobs
from .batching import Batcher
from .jobs import CALLS, CHUNKS, ChunkResult, Job
from .options import DEFAULT_MAX_BATCH_SIZE, make_config

__all__ = ["BatchPoolExecutor"]

P = ParamSpec("P")
R = TypeVar("R")

_SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"
_EXIT_MESSAGE = "cannot schedule new futures after interpreter shutdown"

#: Chunks ``map`` cuts a long input into, per worker, when no chunksize is given.
_MAP_CHUNKS_PER_WORKER = 16
_MAP_MAX_CHUNK = 256

_live_backends: weakref.WeakSet[Backend] = weakref.WeakSet()
_interpreter_exiting = False


def _python_exit() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True
    backends = list(_live_backends)
    for backend in backends:
        backend.batcher.close(_EXIT_MESSAGE)
        backend.begin_shutdown()
    for backend in backends:
        backend.join()


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_python_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_python_exit)


def _shutdown_unreferenced(batcher: Batcher, backend: Backend) -> None:
    # May run on any thread, inside the garbage collector: never wait here.
    batcher.close(_SHUTDOWN_MESSAGE)
    backend.begin_shutdown()


class BatchPoolExecutor(Executor):
    """An Executor that carries calls to its workers in batches.

    A drop-in for ``ProcessPoolExecutor`` (the default, ``backend="process"``)
    and ``ThreadPoolExecutor`` (``backend="thread"``): the same arguments, and
    every ``submit`` returns its own ``concurrent.futures.Future``. Calls wait
    in the parent and leave in batches: as soon as a worker is free, or when a
    batch is full, or after ``max_delay`` seconds. Under load many calls share
    one round trip, which makes small jobs many times faster.

    Args:
        max_workers: number of workers; defaults as the standard pool of the
            chosen backend does.
        mp_context: multiprocessing context of the process backend (default:
            ``forkserver`` where available, ``spawn`` otherwise, and ``spawn``
            with ``max_tasks_per_child``, as in ProcessPoolExecutor).
        initializer: called with ``initargs`` in each worker before its first
            job. If it raises, the pool is broken (BrokenProcessPool /
            BrokenThreadPool), as with the standard pools.
        initargs: arguments of ``initializer``.
        max_tasks_per_child: a worker process is replaced after this many jobs.
        thread_name_prefix: name prefix of the thread backend's threads.
        backend: ``"process"`` or ``"thread"``.
        transport: how batches reach worker processes (``"pipe"``).
        max_batch_size: most calls in one batch.
        max_delay: seconds a partial batch may wait for more calls; 0 (the
            default) sends whatever is waiting as soon as a worker is free.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        ...     futures = [ex.submit(pow, 2, n) for n in range(4)]
        ...     [f.result() for f in futures]
        [1, 2, 4, 8]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        thread_name_prefix: str = "",
        backend: str = "process",
        transport: str = "pipe",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_delay: float = 0.0,
    ) -> None:
        config = make_config(
            max_workers=max_workers,
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            thread_name_prefix=thread_name_prefix,
            backend=backend,
            transport=transport,
            max_batch_size=max_batch_size,
            max_delay=max_delay,
        )
        self._config = config
        self._batcher = Batcher(
            max_batch_size=config.max_batch_size,
            max_delay=config.max_delay,
            target_batch_time=config.target_batch_time,
        )
        self._backend = load_backend(config.backend)(config, self._batcher)
        # Serialises shutdown() calls against each other (never held by submit).
        self._shutdown_lock = threading.Lock()
        _live_backends.add(self._backend)
        finalizer = weakref.finalize(self, _shutdown_unreferenced, self._batcher, self._backend)
        finalizer.atexit = False  # interpreter exit is _python_exit's job

    # -- submitting ---------------------------------------------------------------

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` and return its Future.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the pool is shut down.
            BrokenProcessPool, BrokenThreadPool: the pool cannot run work.

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.submit(divmod, 7, 2).result(timeout=10)
            (3, 1)
        """
        return self._submit(fn, args, kwargs, CALLS)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, kind: int) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
        broken = self._backend.broken
        if broken is not None:
            raise type(broken)(str(broken))
        if _interpreter_exiting:
            raise RuntimeError(_EXIT_MESSAGE)
        future: Future[Any] = Future()
        self._batcher.put(Job(fn, args, kwargs, future, kind))
        self._backend.notify()
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """Like ``map(fn, *iterables)``, run in the pool; results in order.

        Without ``buffersize`` every item is submitted before this returns, as
        with the standard pools. With it, at most ``buffersize`` submitted jobs
        (items, or chunks of ``chunksize`` items) wait to be consumed, so an
        endless iterable works in constant memory. When ``chunksize`` is left
        at 1 and the input is long, items travel in chunks anyway (results and
        exceptions are still per item): chunks are invisible but much cheaper.

        Raises:
            TimeoutError: from the iterator, when the results are not all in
                ``timeout`` seconds after the call.
            Exception: from the iterator, what ``fn`` raised for an item.
        """
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, got {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError(f"buffersize must be an int or None, got {type(buffersize).__name__}")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        zipped = zip(*iterables)  # noqa: B905 - map() stops at the shortest, as builtins.map
        if buffersize is None:
            items = list(zipped)
            size = chunksize if chunksize > 1 else self._auto_chunksize(len(items))
            groups: Iterator[Any] = _chunked(items, size) if size > 1 else iter(items)
            fs = deque(self._submit_group(fn, group, size > 1) for group in groups)
            return _map_results(fs, end_time, size > 1, None)
        groups = _chunked(zipped, chunksize) if chunksize > 1 else zipped
        first = itertools.islice(groups, buffersize)
        fs = deque(self._submit_group(fn, group, chunksize > 1) for group in first)
        refill = _Refill(weakref.ref(self), fn, groups, chunksize > 1)
        return _map_results(fs, end_time, chunksize > 1, refill)

    def _submit_group(self, fn: Callable[..., Any], group: Any, chunked: bool) -> Future[Any]:
        if chunked:
            return self._submit(fn, (group,), None, CHUNKS)
        return self._submit(fn, group, None, CALLS)

    def _auto_chunksize(self, n: int) -> int:
        per_chunk = n // (_MAP_CHUNKS_PER_WORKER * self._config.max_workers)
        return max(1, min(_MAP_MAX_CHUNK, per_chunk))

    # -- lifecycle ------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or cancel) what is queued; stop the workers.

        Queued batches flush at once (no ``max_delay`` linger). Safe to call
        more than once, and from a done-callback.

        Args:
            wait: block until every job has finished and every worker stopped.
            cancel_futures: cancel the jobs that were not dispatched yet.
        """
        with self._shutdown_lock:
            cancelled = self._batcher.close(_SHUTDOWN_MESSAGE, cancel=cancel_futures)
        cancel_jobs(cancelled)
        self._backend.begin_shutdown()
        if wait:
            self._backend.join()

    # -- compatibility views of the standard pools' private attributes ---------------

    @property
    def _max_workers(self) -> int:
        return self._config.max_workers

    @property
    def _mp_context(self) -> Any:
        return self._config.mp_context

    @property
    def _broken(self) -> str | bool:
        broken = self._backend.broken
        return str(broken) if broken is not None else False

    @property
    def _processes(self) -> dict[Any, Any]:
        return self._backend.compat_workers() if self._config.backend == "process" else {}

    @property
    def _executor_manager_thread(self) -> Any:
        return getattr(self._backend, "manager_thread", None)

    @property
    def _threads(self) -> set[Any]:
        return set(self._backend.compat_workers().values()) if self._config.backend == "thread" else set()


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _Refill:
    """Submits the next group of a buffered ``map`` (holds the pool weakly)."""

    def __init__(
        self,
        executor: weakref.ref[BatchPoolExecutor],
        fn: Callable[..., Any],
        groups: Iterator[Any],
        chunked: bool,
    ) -> None:
        self.executor = executor
        self.fn = fn
        self.groups = groups
        self.chunked = chunked

    def __call__(self, fs: deque[Future[Any]]) -> None:
        executor = self.executor()
        if executor is None:
            return
        group = next(self.groups, None)
        if group is not None:
            fs.append(executor._submit_group(self.fn, group, self.chunked))


def _result_or_cancel(future: Future[Any], timeout: float | None) -> Any:
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # no-op unless we gave up waiting for it


def _map_results(
    fs: deque[Future[Any]], end_time: float | None, chunked: bool, refill: _Refill | None
) -> Iterator[Any]:
    # Written so that no local variable holds a yielded result while the
    # generator is suspended: the caller must be able to free each result.
    try:
        while fs:
            if refill is not None:
                refill(fs)
            remaining = None if end_time is None else end_time - time.monotonic()
            if not chunked:
                yield _result_or_cancel(fs.popleft(), remaining)
                continue
            chunk: ChunkResult = _result_or_cancel(fs.popleft(), remaining)
            values, errors = chunk
            del chunk
            values.reverse()
            for i in range(len(values)):
                if i in errors:
                    raise errors[i]
                yield values.pop()
    finally:
        for future in fs:
            future.cancel()
