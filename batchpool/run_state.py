"""The state one map_pages run shares between its threads, and its records (pages, ``RunProgress``).

One responsibility: what a run knows, and the locked steps every one of its
threads takes on it. ``RunState`` holds the open pages (``_Page``: the items, and
the state, result and Future of each), the counters, the one lock and its three
conditions, stopping, closing and joining, and makes the ``RunProgress``
snapshot. The threads that act on it are added by subclasses: ``run_output``
(the consumer and the keeper thread), then ``run_engine`` (the fetch thread,
submission, outcomes); ``runs`` is the public face. Imports retry and
run_store (for types) and the standard library only.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .retry import RetryPolicy
from .run_store import Op, RunStore

__all__ = ["RunProgress", "RunState"]

# Item states within a page.
# _GONE: done, but not in the output (its result was not kept, or came after
# the stop); _DROPPED: cancelled by the run's stop before it ran.
_WAIT, _RUN, _OK, _FAIL, _GONE, _DROPPED = 0, 1, 2, 3, 4, 5
_END = object()  # the frontier after the last page

#: Seconds close() waits for a fetch thread caught inside submit() (``RunState.join``).
_SUBMIT_GRACE = 1.0


@dataclass(frozen=True)
class RunProgress:
    """A snapshot of a run (``Run.progress``).

    Example:
        >>> RunProgress("r", 1, 0, 0, 0, 20, 0, 0, True, None).items_done
        20
    """

    run_id: str
    """The run's id (given, or generated)."""
    pages_done: int
    """Pages whose every item has an outcome (recorded ones of a resumed run included)."""
    pages_running: int
    """Pages fetched whose items are not all done."""
    pages_stuck: int
    """Running pages with an item submitted more than ``stuck_after`` seconds ago and not done."""
    pages_failed: int
    """Pages with at least one failed item, or whose fetch failed for good."""
    items_done: int
    """Items that completed with a result."""
    items_failed: int
    """Items that failed (after the pool's retries)."""
    items_retrying: int
    """Always 0 for now: the pool does not yet tell a retried job from a running one."""
    finished: bool
    """Nothing more will run: the source is exhausted and every item is done, or the run stopped."""
    slowest: tuple[Any, float] | None
    """(cursor, seconds) of the running page whose oldest unfinished item was submitted longest ago."""


class _Page:
    """One fetched page: its items and the state, result and Future of each."""

    __slots__ = (
        "cursor",
        "failed",
        "futures",
        "items",
        "results",
        "seq",
        "settled",
        "state",
        "stuck",
        "submitted",
        "t_submit",
        "unconsumed",
    )

    def __init__(self, seq: int, cursor: Any, items: list[Any]) -> None:
        self.seq = seq
        self.cursor = cursor
        self.items = items
        n = len(items)
        self.state = bytearray(n)
        self.results: list[Any] = [None] * n
        self.futures: list[Future[Any] | None] = [None] * n
        self.t_submit = [0.0] * n
        self.settled = 0  # items with an outcome (or dropped)
        self.unconsumed = n  # items not yet yielded or skipped (completion order only)
        self.submitted = False  # every item went to the pool (or was restored)
        self.failed = 0
        self.stuck = False  # reported to the listeners already


class RunState:
    """Everything a run shares between its threads; guarded by ``_lock``.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     with ex.map_pages(lambda cursor: ([1, 2], None), abs) as run:
        ...         items = sorted(run)
        >>> isinstance(run._core, RunState), run._core.progress().items_done, run._core.ended_locked()
        (True, 2, True)
    """

    def __init__(
        self,
        pool: Any,
        fetch_page: Callable[[Any], Any],
        process_item: Callable[[Any], Any],
        *,
        run_id: str,
        prefetch: int,
        ordered: bool,
        stuck_after: float | None,
        budget: int | float | None,
        fetch_retry: RetryPolicy | None,
        store: RunStore | None,
        owns_store: bool,
        keep_results: bool,
        clock: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.fetch_page = fetch_page
        self.process_item = process_item
        self.run_id = run_id
        self.prefetch = prefetch
        self.ordered = ordered
        self.stuck_after = stuck_after
        self.budget = budget
        self.fetch_retry = fetch_retry
        self.store = store
        self.owns_store = owns_store
        self.keep_results = keep_results
        self.clock = clock
        # One lock for the run's state; three conditions on it, so that a
        # done-callback wakes the consumer without waking the fetch thread.
        self._lock = threading.Lock()
        self._cv_out = threading.Condition(self._lock)
        self._cv_fetch = threading.Condition(self._lock)
        self._cv_keep = threading.Condition(self._lock)
        self.pages: dict[int, _Page] = {}  # open: fetched and not all consumed
        self.ready: deque[tuple[_Page, int]] = deque()  # completion order
        self.restored: deque[int] = deque()  # finished pages of the store, yielded from it
        self.restored_values: deque[Any] = deque()
        self.resume: deque[tuple[int, Any]] = deque()  # unfinished pages to fetch again
        self.frontier: Any = _END
        self.next_seq = 0
        self.out_seq = 0  # ordered: the page and item yielded next
        self.out_idx = 0
        self.running_pages = 0
        self.pages_done = self.pages_failed = self.items_done = self.items_failed = 0
        self.failures: list[tuple[Any, BaseException]] = []
        self.error: BaseException | None = None
        self.raised = False
        self.stopping = False
        self.closed = False
        self.fetch_ended = False
        self.writes: list[Op] = []
        self.page_finished = False
        self.listeners: list[Callable[[Any, float], None]] = []
        self.threads: list[threading.Thread] = []
        self.keeper_alive = False
        self.store_released = False
        self.in_submit = False  # the fetch thread is inside pool.submit (which may block)

    # -- stopping, closing and joining (starting is RunEngine.start) --------------------

    def close(self, wait: bool = True) -> None:
        """Stop fetching, cancel queued items; with ``wait``, join the run's threads."""
        with self._lock:
            self.closed = True
            futures = self._stop_locked(None)
        _cancel(futures)
        if wait:
            self.join()
        self.release_store()

    def release_store(self) -> None:
        """Close a store this run opened, once both its keeper and its consumer are done
        (the consumer reads finished pages from it; the keeper writes)."""
        with self._lock:
            if not self.owns_store or self.store_released or self.keeper_alive:
                return
            if not (self.closed or self.raised):
                return
            self.store_released = True
        assert self.store is not None
        self.store.close()

    def join(self) -> None:
        current = threading.current_thread()
        for thread in self.threads:
            # A listener (on the keeper) may close its own run: never join oneself.
            if thread is current or thread.ident is None:
                continue
            with self._lock:
                in_submit = thread is self.threads[0] and self.in_submit
            if not in_submit:
                thread.join()
                continue
            # A fetch thread blocked in submit() by a full pool (max_pending) is
            # not waited for past a moment: cancelled jobs keep their place in
            # the pool's queue until dispatched, so that wait could last as long
            # as the running jobs. It cancels the job it submits and ends as
            # soon as submit() returns; a submit that was not blocked (caught
            # mid-call) returns at once, and then the thread is joined.
            thread.join(_SUBMIT_GRACE)

    def _stop_locked(self, error: BaseException | None) -> list[Future[Any]]:
        """Enter the stopping state; returns the Futures to cancel (outside the lock:
        cancelling runs their done-callbacks, which take the lock)."""
        if error is not None and self.error is None and not self.closed:
            self.error = error
        if self.stopping:
            return []
        self.stopping = True
        self._cv_out.notify_all()
        self._cv_fetch.notify_all()
        self._cv_keep.notify_all()
        return [f for page in self.pages.values() for f in page.futures if f is not None]

    def _stopping_now(self) -> bool:
        return self.stopping

    def ended_locked(self) -> bool:
        """Nothing more will run: stopped, or source exhausted and every page done."""
        return self.stopping or (self.fetch_ended and self.running_pages == 0)

    # -- page transitions (any thread, under the lock) --------------------------------

    def _page_done_locked(self, page: _Page) -> None:
        self.running_pages -= 1
        if _DROPPED in page.state:
            # Items the stop cancelled never ran: the page is not done, and a
            # resumed run runs them (those that finished are recorded each).
            self._cv_keep.notify_all()
            return
        self.pages_done += 1
        if self.store is not None:
            self.writes.append(("done", page.seq))
            self.page_finished = True
        self._cv_keep.notify_all()

    def _consumed_locked(self, page: _Page, n: int) -> None:
        page.unconsumed -= n
        if page.unconsumed == 0 and page.submitted:
            self._retire_locked(page)

    def _retire_locked(self, page: _Page) -> None:
        if self.pages.pop(page.seq, None) is not None:
            self._cv_fetch.notify_all()  # a place in the prefetch window

    # -- reading ----------------------------------------------------------------------

    def _ages_locked(self, now: float) -> list[tuple[_Page, float]]:
        ages = []
        for page in self.pages.values():
            oldest = min((page.t_submit[i] for i, s in enumerate(page.state) if s == _RUN), default=None)
            if oldest is not None:
                ages.append((page, now - oldest))
        return ages

    def progress(self) -> RunProgress:
        with self._lock:
            ages = self._ages_locked(self.clock())
            limit = math.inf if self.stuck_after is None else self.stuck_after
            slowest = max(ages, key=lambda pa: pa[1], default=None)
            return RunProgress(
                run_id=self.run_id,
                pages_done=self.pages_done,
                pages_running=self.running_pages,
                pages_stuck=sum(1 for _, age in ages if age > limit),
                pages_failed=self.pages_failed,
                items_done=self.items_done,
                items_failed=self.items_failed,
                items_retrying=0,
                finished=self.ended_locked(),
                slowest=None if slowest is None else (slowest[0].cursor, slowest[1]),
            )


def _cancel(futures: list[Future[Any]]) -> None:
    for future in futures:
        future.cancel()  # a no-op once running: only queued items are cancelled
