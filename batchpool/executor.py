"""BatchPoolExecutor: a micro-batching drop-in for the standard pools.

The facade: it validates arguments, makes a Job and its Future per call, and
wires the parts together (PoolState, Batcher, Ledger, a Backend); it holds no
scheduling or settling logic of its own. Imports downward only.

Lifetime rules (each one fixes a way the standard pools have hung or leaked):

* Nothing below the executor holds a reference to it. An executor that is
  garbage collected without ``shutdown()`` finishes its queued work and stops
  its workers (``weakref.finalize``), and ``map()``'s iterator, the dashboard
  and the signal helper keep only weak references, so none keeps a pool alive.
* At interpreter exit (``threading._register_atexit``, which runs before
  threads are joined) every live pool refuses new work, finishes what it has,
  and stops: queued jobs still run, and nothing is left behind.
* ``shutdown(wait=True)`` from inside a job's done-callback (which runs on a
  pool thread) does not wait for that thread itself, so it cannot deadlock.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import weakref
from _thread import get_ident
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, TypeVar

from typing_extensions import ParamSpec

from .arrays import SharedArraysMixin
from .backends import load_backend
from .batching import Batcher
from .compat import StdlibCompat
from .control import PoolControl
from .durable import Durable, DurableMixin
from .errors import QueueFullError, ShutdownError
from .jobs import BATCHED, BATCHED_BISECT, CALLS, Batch, Job
from .ledger import Ledger
from .lifecycle import WeakStats, register_backend, shutdown_unreferenced
from .mapping import MapMixin
from .metrics import Listener, Metrics, Stats
from .options import (
    DEFAULT_MAX_BATCH_SIZE,
    JobOptions,
    check_int,
    check_timeout,
    make_config,
)
from .retry import CircuitBreaker, RetryPolicy
from .runner import identity, run_batch
from .signals import SignalDrain, SignalsMixin
from .state import Phase, PoolState
from .views import ExecutorView, OptionsMixin

if TYPE_CHECKING:
    pass

__all__ = ["BatchPoolExecutor", "ExecutorView"]

P = ParamSpec("P")
R = TypeVar("R")

_ON_FULL = ("block", "raise", "caller_runs")
_PAUSED = Phase.PAUSED  # a module constant: submit compares with it on every call
logger = logging.getLogger("batchpool")


class BatchPoolExecutor(
    PoolControl, OptionsMixin, MapMixin, DurableMixin, SharedArraysMixin, SignalsMixin, StdlibCompat, Executor
):
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
        backend: ``"process"``, ``"thread"`` or ``"dask"`` (each batch one
            task on a Dask cluster: ``client``, ``address``, or a
            ``LocalCluster`` of ``max_workers`` processes started for the
            pool; ``pip install 'batchpool[dask]'``).
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
        target_batch_time: seconds of work one batch should hold (default
            5 ms; 100 ms with the Dask backend, whose tasks cost ~1 ms each).
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
        client: with ``backend="dask"``, the ``distributed.Client`` to use
            (batchpool does not close it).
        address: with ``backend="dask"``, the scheduler to connect to, such
            as ``"tcp://scheduler:8786"``.
        journal: a SQLite file recording every job and its fate, so that
            ``recover()`` runs again what a crashed pool left unfinished (see
            ``batchpool.durable``). Every call is pickled at submit.
        journal_sync: ``"normal"`` (the default: a process crash loses
            nothing committed) or ``"full"`` (fsync at each commit: a power
            loss neither).
        journal_results: keep results and exceptions in the journal (default
            True); a job id already done is then answered from it.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
        JournalError: the journal cannot be opened (``JournalLockedError``:
            another live pool owns it).

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
        transport: str | None = None,
        max_batch_size: int | str = DEFAULT_MAX_BATCH_SIZE,
        max_delay: float = 0.0,
        target_batch_time: float | None = None,
        max_pending: int | None = None,
        on_full: str = "block",
        block_timeout: float | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        dashboard: bool = False,
        client: Any = None,
        address: str | None = None,
        journal: str | os.PathLike[str] | None = None,
        journal_sync: str | None = None,
        journal_results: bool | None = None,
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
            client=client,
            address=address,
        )
        self._config = config
        self._durable = Durable.open(journal, journal_sync, journal_results)  # before any worker starts
        self._state = PoolState(config.max_workers)
        self._batcher = Batcher(
            max_batch_size=config.max_batch_size,
            max_delay=config.max_delay,
            target_batch_time=config.target_batch_time,
            max_pending=max_pending,
            auto=config.auto_batch_size,
            state=self._state,
        )
        self._metrics = Metrics()
        self._ledger = Ledger(self._batcher, self._metrics)
        self._backend = load_backend(config.backend)(config, self._batcher, self._metrics, self._ledger)
        self._on_shutdown: list[Callable[[], None]] = []
        self._signals: SignalDrain | None = None
        # Serialises shutdown() calls against each other (never held by submit).
        self._shutdown_lock = threading.Lock()
        self._durable.attach(self._ledger, self._backend)
        register_backend(self._backend)
        # Hooks that must also run if the pool is collected unreferenced (the dashboard's stop).
        self._finalizer_hooks: list[Callable[[], None]] = []
        finalizer = weakref.finalize(self, shutdown_unreferenced, self._state, self._backend, self._finalizer_hooks)
        finalizer.atexit = False  # interpreter exit is _python_exit's job
        self._finalizer_hooks.append(self._durable.close_later)
        if dashboard:
            from .dashboard import Dashboard

            view = Dashboard(WeakStats(self))  # type: ignore[arg-type]
            view.start()
            self._on_shutdown.append(view.stop)
            self._finalizer_hooks.append(view.stop)

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
        if self._signals is None:  # no signal handlers installed (the usual case): one call less
            return self._enqueue(fn, args, kwargs, CALLS, None)
        return self._submit(fn, args, kwargs, CALLS)

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        kind: int,
        opts: JobOptions | None = None,
        job_id: str | None = None,
    ) -> Future[Any]:
        signals = self._signals
        if signals is None or get_ident() != signals.main:
            return self._enqueue(fn, args, kwargs, kind, opts, job_id)
        # SignalDrain.enter/leave, inline: every submit passes here.
        signals.depth += 1
        try:
            return self._enqueue(fn, args, kwargs, kind, opts, job_id)
        finally:
            signals.depth -= 1
            if signals.exit_pending and not signals.depth:
                signals.exit_deferred()  # a signal that came meanwhile exits here, not in the middle

    def _enqueue(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        kind: int,
        opts: JobOptions | None,
        job_id: str | None = None,
    ) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
        state = self._state
        if state.phase > _PAUSED or state.close_requested:
            refusal = state.refusal()
            assert refusal is not None
            raise refusal
        if opts is None:
            opts = self._default_opts
        # is_batched(fn), inline: every submit asks.
        if kind == CALLS and getattr(fn, "__batchpool_batched__", False) is True:
            if len(args) != 1 or kwargs:
                raise TypeError(
                    f"{getattr(fn, '__qualname__', fn)!r} is @batched: submit it with exactly one item, "
                    f"got {len(args)} positional and {len(kwargs or ())} keyword arguments"
                )
            kind = BATCHED_BISECT if opts.retry is not None else BATCHED
        job = Job(fn, args, kwargs, kind, opts)  # the job is the Future the caller gets (jobs.py)
        if self._breakers and not self._admit(job):
            return job
        if job_id is not None or self._durable.writer is not None:
            known = self._durable.admit(job, job_id)  # journaled now, or the id's own Future
            if known is not None:
                return known
        if not self._batcher.put(job, block=self._on_full == "block", timeout=self._block_timeout):
            return self._on_queue_full(job)
        self._backend.notify()
        return job

    def _admit(self, job: Job) -> bool:
        """Apply the job's circuit breaker, if its key has one."""
        from .retry import CircuitOpenError

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
        job.breaker = breaker  # the ledger tells it the outcome (or that it never ran)
        return True

    def _on_queue_full(self, job: Job) -> Future[Any]:
        assert self._max_pending is not None
        if self._on_full == "caller_runs":
            if self._must_queue(job):
                self._put_paused(job)  # paused, or a limited key: not even here; wait for room
                return job.future
            self._run_here(job)
            return job.future
        self._durable.refused(job)
        raise QueueFullError(self._max_pending)  # on_full="raise", or a block that timed out

    def _run_here(self, job: Job) -> None:
        """Run a job in the calling thread (``on_full="caller_runs"``), as its kind.

        A ``@batched`` item runs as a one-item list, a ``map`` chunk item by
        item; a failure goes through the ledger, so the job's retry policy
        holds (a retry waits in the lanes, and no thread sleeps). A time limit
        cannot stop the caller's own thread: the job runs to its end.
        """
        batch = Batch([job], "caller runs", None)
        if not self._ledger.claim(batch):
            return
        attempt = job.attempt
        ((ok, value),) = run_batch(job.fn, job.kind, [(job.args, job.kwargs)], identity)
        if ok:
            self._ledger.succeed(job, value, attempt)
        else:
            self._ledger.fail(job, value, attempt=attempt)
        self._ledger.forget(batch)
        if job.attempt != attempt:
            self._backend.notify()  # a retry is queued: make sure a worker looks

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
        signals = self._signals
        if signals is not None:
            signals.enter()
        try:
            self._shutdown(wait, cancel_futures, deadline)
        finally:
            if signals is not None:
                signals.leave()

    def _shutdown(self, wait: bool, cancel_futures: bool, deadline: float | None) -> None:
        with self._shutdown_lock:
            if cancel_futures:
                # First: a closing pool flushes its lanes at once, so a worker
                # could take queued jobs between the close and the cancel (all
                # of a paused pool's). Then again for submits that came meanwhile.
                self._ledger.cancel(self._batcher.cancel_queued())
            self._state.close()
            if cancel_futures:
                self._ledger.cancel(self._batcher.cancel_queued())
            hooks, self._on_shutdown = self._on_shutdown, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                logger.exception("batchpool: a shutdown hook failed")
        self._backend.begin_shutdown()
        if not wait:
            self._durable.close_later()
            return
        if self._backend.join(deadline):
            self._stop_signal_helper()
            self._durable.close()  # the pool drained: every record is in; commit and release
            return
        assert deadline is not None
        logger.warning("shutdown: %s s passed with work unfinished; stopping the workers", deadline)
        self._abort(ShutdownError(deadline))
        self._durable.close()

    def _abort(self, error: BaseException) -> None:
        """Stop now: what is queued is cancelled, what is running fails with ``error``."""
        self._state.close()
        self._ledger.cancel(self._batcher.cancel_queued())
        self._backend.abort(error)
        self._backend.join(10.0)

    def _stop_signal_helper(self) -> None:
        signals = self._signals
        if signals is not None and threading.current_thread() is threading.main_thread():
            self._signals = None
            signals.restore()

    def stats(self) -> Stats:
        """A frozen snapshot of this pool's counters, latencies and workers.

        Cheap (O(workers) plus one short lock) and safe from any thread.
        A batch's figures (its count, size, wait and run time, the results
        it completed) are recorded by its worker just after its last Future
        is settled, so a snapshot taken the instant ``result()`` returns may
        not count that batch yet; the thread backend counts a batch as sent
        once it has run.

        Example:
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     _ = ex.submit(abs, -1).result(timeout=10)
            ...     s = ex.stats()
            >>> s.submitted, s.completed
            (1, 1)
        """
        stats = self._control_stats(
            self._metrics.snapshot(
                submitted=self._batcher.submitted,
                in_flight=self._backend.in_flight(),
                queued=self._batcher.pending,
                lanes=self._batcher.depths(),
                workers=self._backend.worker_states(),
            )
        )
        runs = sys.modules.get("batchpool.runs")  # never imported just to say there are none
        if runs is not None:
            live = {run.run_id or f"run-{id(run):x}": run.progress for run in runs.live_runs(self)}
            if live:
                stats = dataclasses.replace(stats, runs=live)
        return self._durable.annotate(stats)  # journal lag and commit rate, with a journal

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
