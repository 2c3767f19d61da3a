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
import logging
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, Literal, TypeVar

from typing_extensions import ParamSpec

from .backends import load_backend
from .backends.base import Backend, cancel_jobs, fail_jobs
from .batching import Batcher
from .errors import QueueFullError, ShutdownError
from .jobs import BATCHED, BATCHED_BISECT, CALLS, CHUNKS, CHUNKS1, ChunkResult, Job, is_batched
from .metrics import Listener, Metrics, Stats
from .options import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_TARGET_BATCH_TIME,
    JobOptions,
    Priority,
    check_int,
    check_seconds,
    check_timeout,
    make_config,
)
from .retry import CircuitBreaker, CircuitOpenError, RetryPolicy

__all__ = ["BatchPoolExecutor"]

P = ParamSpec("P")
R = TypeVar("R")

_SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"
_ON_FULL = ("block", "raise", "caller_runs")
logger = logging.getLogger("batchpool")
_EXIT_MESSAGE = "cannot schedule new futures after interpreter shutdown"

#: Chunks ``map`` cuts a long input into, per worker, when no chunksize is given.
_MAP_CHUNKS_PER_WORKER = 16
_MAP_MAX_CHUNK = 1024

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
        transport: how batches reach worker processes: ``"shm"`` (the
            default: messages through shared-memory rings, buffers of 64 KiB
            and more, such as numpy arrays, through reused shared-memory
            blocks the worker reads without a copy; Linux, pipes elsewhere)
            or ``"pipe"`` (everything through pipes).
        max_batch_size: most calls in one batch, or ``"auto"``: batches of up
            to 4096, sized so that one runs about ``target_batch_time``.
            (Plain jobs are always cut to that time once measured; "auto"
            extends it to ``@batched`` functions.)
        max_delay: seconds a partial batch may wait for more calls; 0 (the
            default) sends whatever is waiting as soon as a worker is free.
        target_batch_time: seconds of work one batch should hold (default 5 ms).
        max_pending: most jobs queued (not yet dispatched) at once; None: no limit.
        on_full: what ``submit`` does when ``max_pending`` jobs are queued:
            ``"block"`` (wait for room), ``"raise"`` (``QueueFullError``) or
            ``"caller_runs"`` (run the job in the calling thread).
        block_timeout: with ``on_full="block"``, seconds a submit may wait
            for room before it raises ``QueueFullError`` (None: no limit).
        timeout: default per-job time limit in seconds (see ``options``).
        retry: default ``RetryPolicy`` of every job (None: no retries).
        dashboard: show a live rich dashboard until shutdown (a one-line log
            a second when the output is not a terminal).

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
        transport: str = "shm",
        max_batch_size: int | str = DEFAULT_MAX_BATCH_SIZE,
        max_delay: float = 0.0,
        target_batch_time: float = DEFAULT_TARGET_BATCH_TIME,
        max_pending: int | None = None,
        on_full: str = "block",
        block_timeout: float | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        dashboard: bool = False,
    ) -> None:
        if max_pending is not None:
            check_int("max_pending", max_pending, 1)
        if on_full not in _ON_FULL:
            raise ValueError(f"on_full must be one of {_ON_FULL}, got {on_full!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a batchpool.RetryPolicy or None, got {type(retry).__name__}")
        self._default_opts = JobOptions(timeout=check_timeout("timeout", timeout), retry=retry)
        self._on_full = on_full
        self._max_pending = max_pending
        self._block_timeout = check_timeout("block_timeout", block_timeout)
        self._breakers: dict[Hashable, CircuitBreaker] = {}
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
            target_batch_time=target_batch_time,
        )
        self._config = config
        self._batcher = Batcher(
            max_batch_size=config.max_batch_size,
            max_delay=config.max_delay,
            target_batch_time=config.target_batch_time,
            max_pending=max_pending,
            auto=config.auto_batch_size,
        )
        self._metrics = Metrics()
        self._backend = load_backend(config.backend)(config, self._batcher, self._metrics)
        self._on_shutdown: list[Callable[[], None]] = []
        # Serialises shutdown() calls against each other (never held by submit).
        self._shutdown_lock = threading.Lock()
        _live_backends.add(self._backend)
        finalizer = weakref.finalize(self, _shutdown_unreferenced, self._batcher, self._backend)
        finalizer.atexit = False  # interpreter exit is _python_exit's job
        if dashboard:
            from .dashboard import Dashboard

            view = Dashboard(self)
            view.start()
            self._on_shutdown.append(view.stop)

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

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        kind: int,
        opts: JobOptions | None = None,
    ) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
        broken = self._backend.broken
        if broken is not None:
            raise type(broken)(str(broken))
        if _interpreter_exiting:
            raise RuntimeError(_EXIT_MESSAGE)
        if opts is None:
            opts = self._default_opts
        if kind == CALLS and is_batched(fn):
            if len(args) != 1 or kwargs:
                raise TypeError(
                    f"{getattr(fn, '__qualname__', fn)!r} is @batched: submit it with exactly one item, "
                    f"got {len(args)} positional and {len(kwargs or ())} keyword arguments"
                )
            kind = BATCHED_BISECT if opts.retry is not None else BATCHED
        future: Future[Any] = Future()
        job = Job(fn, args, kwargs, future, kind, opts)
        if self._breakers and not self._admit(job):
            return future
        if not self._batcher.put(job, block=self._on_full == "block", timeout=self._block_timeout):
            return self._on_queue_full(job)
        self._backend.notify()
        return future

    def _admit(self, job: Job) -> bool:
        """Apply the job's circuit breaker, if its key has one."""
        key = job.opts.key if job.opts.key is not None else job.fn
        try:
            breaker = self._breakers.get(key)
        except TypeError:
            return True
        if breaker is None:
            return True
        if not breaker.allow():
            job.future.set_exception(CircuitOpenError(key, breaker.retry_in()))
            return False
        job.future.add_done_callback(_BreakerFeed(breaker))
        return True

    def _on_queue_full(self, job: Job) -> Future[Any]:
        assert self._max_pending is not None
        if self._on_full == "caller_runs":
            if job.future.set_running_or_notify_cancel():
                _run_here(job)
            return job.future
        raise QueueFullError(self._max_pending)  # on_full="raise", or a block that timed out

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Like ``map(fn, *iterables)``, run in the pool; results in order.

        Without ``buffersize`` every item is submitted before this returns, as
        with the standard pools. With it, at most ``buffersize`` submitted jobs
        (items, or chunks of ``chunksize`` items) wait to be consumed, so an
        endless iterable works in constant memory. When ``chunksize`` is left
        at 1 and the input is long, items travel in chunks anyway (results and
        exceptions are still per item): chunks are invisible but much cheaper.
        With ``progress``, a rich progress bar advances as results are consumed
        (with a total when the input has a length).

        Raises:
            TimeoutError: from the iterator, when the results are not all in
                ``timeout`` seconds after the call.
            Exception: from the iterator, what ``fn`` raised for an item.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, progress, None)

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        progress: bool,
        opts: JobOptions | None,
    ) -> Iterator[Any]:
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
        if progress:
            from .dashboard import track

            lengths = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
            total = min(lengths) if len(lengths) == len(iterables) and lengths else None
            inner = self._map(fn, iterables, timeout, chunksize, buffersize, False, opts)
            return track(inner, total, getattr(fn, "__name__", "jobs"))
        end_time = None if timeout is None else timeout + time.monotonic()
        zipped = zip(*iterables)  # noqa: B905 - map() stops at the shortest, as builtins.map
        if buffersize is None and self._max_pending is not None:
            # A bounded pool reads its input only as fast as it can hold it.
            buffersize = max(1, self._max_pending // max(1, chunksize) // 2)
        if buffersize is None:
            # One iterable: chunks carry the bare items (no 1-tuple per item).
            single = len(iterables) == 1
            items = list(iterables[0]) if single else list(zipped)
            effective = self._default_opts if opts is None else opts
            # Timeouts and retries are per job: items that need them travel one per job.
            per_item = effective.timeout is not None or effective.retry is not None
            size = chunksize if chunksize > 1 or per_item else self._auto_chunksize(len(items))
            if size > 1:
                kind = CHUNKS1 if single else CHUNKS
                fs = deque(self._submit(fn, (group,), None, kind, opts) for group in _chunked(items, size))
                return _map_results(fs, end_time, True, None)
            calls = ((item,) for item in items) if single else iter(items)
            fs = deque(self._submit(fn, args, None, CALLS, opts) for args in calls)
            return _map_results(fs, end_time, False, None)
        groups = _chunked(zipped, chunksize) if chunksize > 1 else zipped
        first = itertools.islice(groups, buffersize)
        fs = deque(self._submit_group(fn, group, chunksize > 1, opts) for group in first)
        refill = _Refill(weakref.ref(self), fn, groups, chunksize > 1, opts)
        return _map_results(fs, end_time, chunksize > 1, refill)

    def _submit_group(
        self, fn: Callable[..., Any], group: Any, chunked: bool, opts: JobOptions | None = None
    ) -> Future[Any]:
        if chunked:
            return self._submit(fn, (group,), None, CHUNKS, opts)
        return self._submit(fn, group, None, CALLS, opts)

    def _auto_chunksize(self, n: int) -> int:
        per_chunk = n // (_MAP_CHUNKS_PER_WORKER * self._config.max_workers)
        return max(1, min(_MAP_MAX_CHUNK, per_chunk))

    # -- lifecycle ------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        """Stop accepting work; finish (or cancel) what is queued; stop the workers.

        Queued batches flush at once (no ``max_delay`` linger). Safe to call
        more than once, and from a done-callback.

        Args:
            wait: block until every job has finished and every worker stopped.
            cancel_futures: cancel the jobs that were not dispatched yet.
            timeout: with ``wait``, drain for at most this many seconds; then
                cancel what was not dispatched, stop the workers (terminate,
                then kill), and fail every unfinished job with ``ShutdownError``.

        Example:
            >>> ex = BatchPoolExecutor(backend="thread")
            >>> fut = ex.submit(abs, -3)
            >>> ex.shutdown(wait=True, timeout=30)
            >>> fut.result()
            3
        """
        deadline = check_timeout("timeout", timeout)
        with self._shutdown_lock:
            cancelled = self._batcher.close(_SHUTDOWN_MESSAGE, cancel=cancel_futures)
            hooks, self._on_shutdown = self._on_shutdown, []
        cancel_jobs(cancelled)
        self._metrics.jobs_cancelled(len(cancelled))
        for hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("batchpool: a shutdown hook failed")
        self._backend.begin_shutdown()
        if not wait:
            return
        if self._backend.join(deadline):
            return
        assert deadline is not None
        logger.warning("shutdown: %s s passed with work unfinished; stopping the workers", deadline)
        late = self._batcher.close(_SHUTDOWN_MESSAGE, cancel=True)
        cancel_jobs(late)
        self._metrics.jobs_cancelled(len(late))
        error = ShutdownError(deadline)
        fail_jobs(self._batcher.drain(), error, self._metrics)
        self._backend.abort(error)
        self._backend.join(10.0)

    def stats(self) -> Stats:
        """A frozen snapshot of this pool's counters, latencies and workers.

        Cheap (O(workers) plus one short lock) and safe from any thread.

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     _ = ex.submit(abs, -1).result(timeout=10)
            ...     s = ex.stats()
            >>> s.submitted, s.completed
            (1, 1)
        """
        return self._metrics.snapshot(
            submitted=self._batcher.submitted,
            in_flight=self._backend.in_flight(),
            queued=self._batcher.pending,
            lanes=self._batcher.depths(),
            workers=self._backend.worker_states(),
        )

    def add_listener(
        self,
        on_batch_done: Listener | None = None,
        on_job_failed: Listener | None = None,
        on_worker_died: Listener | None = None,
    ) -> None:
        """Call these on pool events (from a pool thread; keep them quick).

        ``on_batch_done(info)`` gets the batch's ``JobInfo``-like record (id,
        size, reason, run time); ``on_job_failed(job_id, exc)`` fires for each
        job that fails for good; ``on_worker_died(pid, exitcode)`` when a
        worker process dies. A listener that raises is logged and ignored.

        Example:
            >>> seen = []
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.add_listener(on_batch_done=lambda info: seen.append(info.size))
            ...     _ = ex.submit(abs, -1).result(timeout=10)
            >>> seen
            [1]
        """
        self._metrics.add_listener(on_batch_done, on_job_failed, on_worker_died)

    def _add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        with self._shutdown_lock:
            self._on_shutdown.append(hook)

    def install_signal_handlers(
        self,
        timeout: float | None = None,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        exit_code: int | None = 0,
    ) -> Callable[[], None]:
        """Turn SIGTERM/SIGINT into a graceful drain of this pool.

        On the signal, the main thread runs ``shutdown(wait=True,
        timeout=timeout)`` and then, unless ``exit_code`` is None, exits with
        that code (``SystemExit``, so ``finally`` blocks and atexit hooks run).
        Call from the main thread. Returns a function that restores the
        previous handlers.

        Example:
            >>> ex = BatchPoolExecutor(backend="thread")
            >>> restore = ex.install_signal_handlers(timeout=10)
            >>> restore(); ex.shutdown()
        """
        check_timeout("timeout", timeout)
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: object) -> None:
            logger.warning("signal %s: draining the pool (timeout %s s)", signal.Signals(signum).name, timeout)
            self.shutdown(wait=True, timeout=timeout)
            if exit_code is not None:
                raise SystemExit(exit_code)

        for signum in signals:
            previous[signum] = signal.signal(signum, handler)

        def restore() -> None:
            for signum, old in previous.items():
                signal.signal(signum, old)

        return restore

    def options(
        self,
        *,
        priority: Priority | int | None = None,
        key: Hashable | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | Literal[False] | None = None,
    ) -> ExecutorView:
        """A light view of this pool whose ``submit``/``map`` apply these options.

        It shares the pool (it is not a new one); options not given keep the
        pool's defaults.

        Args:
            priority: ``Priority.REALTIME`` jobs never linger and go before any
                queued NORMAL or BULK work; BULK goes last (but never starves).
            key: the lane the jobs share (default: their callable); a key can
                have its own batching policy (``set_policy``).
            timeout: seconds each job may run; past that its Future fails with
                ``TimeoutError`` and its worker process is replaced (the thread
                backend abandons the thread and starts another).
            retry: a ``RetryPolicy`` for these jobs, or False for none (None
                keeps the pool's default).

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     urgent = ex.options(priority=Priority.REALTIME, timeout=5)
            ...     urgent.submit(abs, -2).result(timeout=10)
            2
        """
        base = self._default_opts
        if priority is not None and not isinstance(priority, Priority):
            try:
                priority = Priority(priority)
            except ValueError:
                raise ValueError(f"priority must be a batchpool.Priority, got {priority!r}") from None
        if retry is not None and retry is not False and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a batchpool.RetryPolicy, False or None, got {type(retry).__name__}")
        if key is not None:
            try:
                hash(key)
            except TypeError:
                raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        opts = JobOptions(
            priority=base.priority if priority is None else Priority(priority),
            key=base.key if key is None else key,
            timeout=base.timeout if timeout is None else check_timeout("timeout", timeout),
            retry=base.retry if retry is None else (retry or None),
        )
        return ExecutorView(self, opts)

    def set_policy(
        self,
        key: Hashable,
        *,
        max_batch_size: int | None = None,
        max_delay: float | None = None,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> None:
        """Batching limits and an optional circuit breaker for one key.

        ``key`` is what ``options(key=...)`` names, or a callable (the default
        key of its jobs). Limits not given keep the pool's defaults.

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.set_policy("emails", max_batch_size=100, max_delay=0.05)
            ...     ex.options(key="emails").submit(len, "hi").result(timeout=10)
            2
        """
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        size = self._config.max_batch_size if max_batch_size is None else max_batch_size
        delay = self._config.max_delay if max_delay is None else max_delay
        check_int("max_batch_size", size, 1)
        self._batcher.set_policy(key, size, check_seconds("max_delay", delay))
        if circuit_breaker is not None:
            if not isinstance(circuit_breaker, CircuitBreaker):
                raise TypeError("circuit_breaker must be a batchpool.CircuitBreaker")
            self._breakers[key] = circuit_breaker

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

    def map_pages(
        self,
        fetch_page: Callable[[Any], Any],
        process_item: Callable[[Any], Any],
        first_cursor: Any = None,
        **options: Any,
    ) -> Any:  # a batchpool.runs.Run (typed so once executor.py imports Run under TYPE_CHECKING)
        """Pipelined pagination through this pool: see ``batchpool.runs.map_pages`` for ``options``.

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     sorted(ex.map_pages(lambda c: ([c, c + 1], c + 2 if c < 2 else None), abs, 0))
            [0, 1, 2, 3]
        """
        from .runs import map_pages

        return map_pages(self, fetch_page, process_item, first_cursor, **options)


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
        opts: JobOptions | None = None,
    ) -> None:
        self.executor = executor
        self.fn = fn
        self.groups = groups
        self.chunked = chunked
        self.opts = opts

    def __call__(self, fs: deque[Future[Any]]) -> None:
        executor = self.executor()
        if executor is None:
            return
        group = next(self.groups, None)
        if group is not None:
            fs.append(executor._submit_group(self.fn, group, self.chunked, self.opts))


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
            if not errors:  # the common case, without a lookup per item
                while values:
                    yield values.pop()
                continue
            for i in range(len(values)):
                if i in errors:
                    raise errors[i]
                yield values.pop()
    finally:
        for future in fs:
            future.cancel()


class ExecutorView:
    """A pool seen through fixed job options (made by ``BatchPoolExecutor.options``)."""

    def __init__(self, executor: BatchPoolExecutor, opts: JobOptions) -> None:
        self._executor = executor
        self.opts = opts

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """``BatchPoolExecutor.submit`` with this view's options."""
        return self._executor._submit(fn, args, kwargs, CALLS, self.opts)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """``BatchPoolExecutor.map`` with this view's options."""
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, progress, self.opts)

    def map_pages(
        self,
        fetch_page: Callable[[Any], Any],
        process_item: Callable[[Any], Any],
        first_cursor: Any = None,
        **options: Any,
    ) -> Any:  # a batchpool.runs.Run (typed so once executor.py imports Run under TYPE_CHECKING)
        """``BatchPoolExecutor.map_pages`` with this view's options on the items."""
        from .runs import map_pages

        return map_pages(self, fetch_page, process_item, first_cursor, **options)


class _BreakerFeed:
    """Done-callback feeding a job's outcome to its key's circuit breaker."""

    __slots__ = ("breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def __call__(self, future: Future[Any]) -> None:
        if not future.cancelled():
            self.breaker.record(future.exception() is None)


def _run_here(job: Job) -> None:
    """Run a job in the calling thread (``on_full="caller_runs"``)."""
    try:
        result = job.fn(*job.args, **job.kwargs) if job.kwargs else job.fn(*job.args)
    except BaseException as exc:  # noqa: BLE001 - the job's own outcome
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
