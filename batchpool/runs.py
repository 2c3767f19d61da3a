"""map_pages: pipelined pagination over a pool, with progress and resumable runs.

One responsibility: drive a paginated source through a pool. It sits ABOVE the
executor and uses only its public ``submit`` (so a view's options apply); it
imports errors, retry, serialization, run_store (the SQLite records) and the
run modules below, never the executor. This module is the public face:
``map_pages`` (arguments, store, resume or replay), the ``Run`` iterator and its
controls, and the live runs of each pool. The run itself is split by layer::

    run_state.py   RunState: what the run's threads share, one lock; RunProgress
    run_output.py  RunOutput(RunState): the consumer's next(), the keeper thread
    run_engine.py  RunEngine(RunOutput): the fetch thread, submission, outcomes,
                   the failure budget, start()

Data flow of one run::

    fetch thread (one per run, in the parent)          pool (any backend)
      fetch_page(cursor) ─> page ─> submit(process_item, item) for each item ─┐
        next fetch starts at once, while fewer than                           │
        ``prefetch`` pages are open (fetched, not all consumed)               │
                                                                              v
    consumer ── Run.__next__ <── ready results <── done-callback (pool thread) ┘
                                                     │ outcome, failure budget
    keeper thread (only with a store or stuck_after) <┘ group commit to the
      RunStore; stuck pages -> on_page_stuck listeners

Lifetime: the threads and the Futures' callbacks hold the internal ``RunEngine``,
never the public ``Run``; so a ``Run`` dropped by its consumer is collected,
its finalizer closes the core, and the threads end by themselves.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .errors import RunFinishedError
from .retry import RetryPolicy
from .run_engine import SHARE_MIN_ITEMS as SHARE_MIN_ITEMS
from .run_engine import RunEngine
from .run_output import COMMIT_INTERVAL as COMMIT_INTERVAL
from .run_state import _END
from .run_state import RunProgress as RunProgress
from .run_store import RunStore, pickle_cursor
from .serialization import loads

__all__ = ["Run", "RunProgress", "live_runs", "map_pages"]

_DEFAULT_FETCH_RETRY = RetryPolicy(max_attempts=3)


class Run:
    """A ``map_pages`` run: an iterator over its items' results, and its controls.

    Results come in completion order, or page-then-item order with
    ``ordered=True``. Closing it (``close()``, the end of a ``with`` block, or
    dropping it) stops fetching, cancels its queued items and ends its threads.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> def fetch(cursor):
        ...     return [cursor * 10, cursor * 10 + 1], (cursor + 1 if cursor < 2 else None)
        >>> with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        ...     with ex.map_pages(fetch, abs, 0, ordered=True) as run:
        ...         results = list(run)
        ...     progress = run.progress
        >>> results, progress.pages_done, progress.finished
        ([0, 1, 10, 11, 20, 21], 3, True)
    """

    def __init__(self, core: RunEngine) -> None:
        self._core = core
        # The finalizer holds the core, never the Run: dropping the Run closes it.
        self._finalizer = weakref.finalize(self, core.close, False)

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Any:
        return self._core.next()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self.progress
        state = "finished" if p.finished else "running"
        return f"<Run {p.run_id!r} {state}: {p.pages_done} pages, {p.items_done} items done, {p.items_failed} failed>"

    @property
    def run_id(self) -> str:
        """The run's id (the ``run_id`` given, or a generated one)."""
        return self._core.run_id

    @property
    def progress(self) -> RunProgress:
        """A frozen snapshot of the run's pages and items (cheap; any thread)."""
        return self._core.progress()

    @property
    def failures(self) -> list[tuple[Any, BaseException]]:
        """The tolerated failures so far, as (item, exception) pairs."""
        with self._core._lock:
            return list(self._core.failures)

    def add_listener(self, on_page_stuck: Callable[[Any, float], None] | None = None) -> None:
        """Call ``on_page_stuck(cursor, age_seconds)`` once for each page that gets stuck.

        Called from a run thread for pages that get stuck after this call; one
        that raises is logged and ignored. Needs ``stuck_after``.

        Raises:
            ValueError: the run was started without ``stuck_after``.
            TypeError: ``on_page_stuck`` is not callable.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     with ex.map_pages(lambda c: ([1], None), abs, stuck_after=60) as run:
            ...         run.add_listener(on_page_stuck=lambda cursor, age: print(cursor, age))
            ...         list(run)
            [1]
        """
        if on_page_stuck is None:
            return
        if not callable(on_page_stuck):
            raise TypeError(f"on_page_stuck must be callable, got {type(on_page_stuck).__name__}")
        if self._core.stuck_after is None:
            raise ValueError("on_page_stuck needs a run started with stuck_after=seconds")
        with self._core._lock:
            self._core.listeners.append(on_page_stuck)

    def close(self) -> None:
        """Stop fetching, cancel queued items and wait for the run's threads.

        Waits for a ``fetch_page`` call in progress to return. Idempotent.
        """
        self._core.close(wait=True)


# Live runs per pool, held weakly (a dropped Run disappears); the lock makes
# "is this run_id live? then register mine" one step.
_registry_lock = threading.Lock()
_registry: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Run]] = weakref.WeakKeyDictionary()
_run_ids = itertools.count(1)


def live_runs(executor: Any) -> list[Run]:
    """The runs of this pool (or view's pool) that have not ended.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     live_runs(ex)
        []
    """
    pool = getattr(executor, "_executor", executor)
    with _registry_lock:
        runs = list(_registry.get(pool, ()))
    return [run for run in runs if not run.progress.finished]


def _close_all_at_exit() -> None:
    # Runs before the interpreter joins non-daemon threads (as the executor's
    # hook): a live run's fetch thread would otherwise hold the exit forever.
    with _registry_lock:
        runs = [run for group in _registry.values() for run in group]
    for run in runs:
        run._core.close(wait=False)


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all_at_exit)


def _check_budget(tolerated_failure: Any) -> int | float | None:
    if isinstance(tolerated_failure, bool) or not isinstance(tolerated_failure, (int, float)):
        raise TypeError(
            f"tolerated_failure must be a float in [0, 1) or an int >= 0, got {type(tolerated_failure).__name__}"
        )
    if isinstance(tolerated_failure, int):
        if tolerated_failure < 0:
            raise ValueError(f"tolerated_failure must be an int >= 0 (a count), got {tolerated_failure}")
        return tolerated_failure or None
    if not 0.0 <= tolerated_failure < 1.0:
        raise ValueError(
            f"tolerated_failure must be a float in [0, 1) (a share) or an int count, got {tolerated_failure!r}"
        )
    return tolerated_failure or None


def _open_store(pool: Any, store: Any) -> tuple[RunStore | None, bool]:
    if isinstance(store, RunStore):
        return store, False
    if isinstance(store, (str, os.PathLike)):
        return RunStore(store), True
    if store is not None:
        raise TypeError(f"store must be a path, a batchpool.RunStore or None, got {type(store).__name__}")
    journal = getattr(getattr(pool, "_executor", pool), "_journal", None)
    if journal is not None:
        return RunStore(journal.path), True
    return None, False


def map_pages(
    pool: Any,
    fetch_page: Callable[[Any], tuple[Iterable[Any], Any]],
    process_item: Callable[[Any], Any],
    first_cursor: Any = None,
    *,
    prefetch: int = 2,
    run_id: str | None = None,
    stuck_after: float | None = None,
    tolerated_failure: int | float = 0.0,
    ordered: bool = False,
    fetch_retry: RetryPolicy | None = _DEFAULT_FETCH_RETRY,
    store: str | os.PathLike[str] | RunStore | None = None,
    keep_results: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Run:
    """Run ``process_item`` on every item of a paginated source, fetching ahead.

    ``fetch_page(cursor)`` returns ``(items, next_cursor)``; ``next_cursor``
    None ends the source. Fetches run one at a time on one thread of this
    process (so they may use its connections), and the next fetch starts as
    soon as a page arrives, while fewer than ``prefetch`` pages are open
    (fetched, results not all consumed). Items go to the pool as ordinary jobs
    through ``pool.submit`` (an ``ExecutorView`` applies its options).

    Args:
        pool: a ``BatchPoolExecutor`` or an ``ExecutorView``.
        fetch_page: ``cursor -> (items, next_cursor)``.
        process_item: the job run for each item.
        first_cursor: the cursor of the first page.
        prefetch: most pages open at once (>= 1).
        run_id: names the run; with a store it makes the run resumable.
        stuck_after: seconds after which a page with an unfinished item
            (counted from its submit) is reported stuck.
        tolerated_failure: 0 (the default): the first failed item is raised
            from the iterator. A float in (0, 1): the share of completed items
            that may fail (judged from 20 completed items on); an int >= 1: a
            count. Failed items are then left out and listed in ``failures``;
            past the budget ``RunFailedError`` is raised.
        ordered: yield in page-then-item order instead of completion order.
        fetch_retry: how a failing ``fetch_page`` is retried (None: never).
        store: where a ``run_id`` records its pages and outcomes (a path or a
            ``RunStore``); default: the pool's journal file, if it has one.
        keep_results: record results too, so a finished run can be replayed.
        clock: monotonic seconds, for ``stuck_after`` and ages.

    Returns:
        The ``Run``. A finished run of the store with this ``run_id`` is
        replayed from its records, running nothing.

    Raises:
        TypeError, ValueError: an argument is invalid (named in the message),
            or ``run_id`` names a live run of this pool.
        RunFinishedError: the run finished before and its results were not kept.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> pages = {None: ([1, 2], "b"), "b": ([3], None)}
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     sorted(map_pages(ex, pages.__getitem__, lambda x: x * 10))
        [10, 20, 30]
    """
    if not callable(getattr(pool, "submit", None)):
        raise TypeError(f"pool must be a BatchPoolExecutor or ExecutorView, got {type(pool).__name__}")
    if not callable(fetch_page):
        raise TypeError(f"fetch_page must be callable, got {type(fetch_page).__name__}")
    if not callable(process_item):
        raise TypeError(f"process_item must be callable, got {type(process_item).__name__}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int):
        raise TypeError(f"prefetch must be an int, got {type(prefetch).__name__}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    if run_id is not None and not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}")
    if run_id == "":
        raise ValueError("run_id must not be empty")
    if stuck_after is not None:
        if isinstance(stuck_after, bool) or not isinstance(stuck_after, (int, float)):
            raise TypeError(f"stuck_after must be a number of seconds or None, got {type(stuck_after).__name__}")
        if not math.isfinite(stuck_after) or stuck_after <= 0:
            raise ValueError(f"stuck_after must be a finite number of seconds > 0, got {stuck_after!r}")
    budget = _check_budget(tolerated_failure)
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be a bool, got {type(ordered).__name__}")
    if fetch_retry is not None and not isinstance(fetch_retry, RetryPolicy):
        raise TypeError(f"fetch_retry must be a batchpool.RetryPolicy or None, got {type(fetch_retry).__name__}")
    if not isinstance(keep_results, bool):
        raise TypeError(f"keep_results must be a bool, got {type(keep_results).__name__}")
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {type(clock).__name__}")
    owner = getattr(pool, "_executor", pool)
    with _registry_lock:
        group = _registry.setdefault(owner, weakref.WeakSet())
        if run_id is not None and any(r.run_id == run_id and not r.progress.finished for r in group):
            raise ValueError(f"run_id {run_id!r} names a run of this pool that is still live")
        run_store, owns = _open_store(pool, store) if run_id is not None else (None, False)
        try:
            core = RunEngine(
                pool,
                fetch_page,
                process_item,
                run_id=run_id or f"run-{next(_run_ids)}",
                prefetch=prefetch,
                ordered=ordered,
                stuck_after=stuck_after,
                budget=budget,
                fetch_retry=fetch_retry,
                store=run_store,
                owns_store=owns,
                keep_results=keep_results,
                clock=clock,
            )
            replay = _prepare(core, first_cursor)
        except BaseException:
            if owns and run_store is not None:
                run_store.close()
            raise
        run = Run(core)
        group.add(run)
    if not replay:
        core.start()
    return run


def _prepare(core: RunEngine, first_cursor: Any) -> bool:
    """Set where the run starts (fresh, resumed or replayed); True for a replay."""
    store = core.store
    if store is None:
        core.frontier = first_cursor
        return False
    record = store.load(core.run_id)
    if record is None or not record.pages:
        pickle_cursor(first_cursor, "first_cursor")  # fail now, not in the fetch thread
        core.frontier = first_cursor
        store.start(core.run_id, keep_results=core.keep_results)
        return False
    if record.state == "finished":
        if not record.keep_results:
            raise RunFinishedError(core.run_id)
        core.restored.extend(p.seq for p in record.pages)
        core.pages_done = len(record.pages)
        core.items_done, core.items_failed = store.counts(core.run_id)
        core.fetch_ended = True  # nothing to fetch: the consumer reads the store
        return True
    store.start(core.run_id, keep_results=core.keep_results)
    for page in record.pages:
        if page.done:
            core.restored.append(page.seq)
            core.pages_done += 1
        else:
            core.resume.append((page.seq, loads(page.cursor)))
    core.items_done, core.items_failed = store.counts(core.run_id)
    last = loads(record.pages[-1].next_cursor)
    core.frontier = _END if last is None else last
    core.next_seq = record.pages[-1].seq + 1
    return False
