"""The engine of a map_pages run: the fetch thread, the page window, item submission, outcomes, the failure budget.

One responsibility: move pages from ``fetch_page`` into the pool and outcomes
back into the run's state. The fetch thread fetches (with ``fetch_retry``) while
fewer than ``prefetch`` pages are open, and submits each item through the
pool's public ``submit``; done-callbacks (on pool threads) record each outcome
and judge the failure budget. ``RunEngine`` is the whole run: it adds ``start``
to ``RunOutput`` (consumer and keeper) and ``RunState``. Imports errors, run_state,
run_output and run_store; never the executor.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import CancelledError, Future
from typing import Any

from .errors import QueueFullError, RunFailedError
from .run_output import RunOutput
from .run_state import _DROPPED, _END, _FAIL, _GONE, _OK, _RUN, _WAIT, _cancel, _Page
from .run_store import MISSING, Op, pickle_cursor

__all__ = ["SHARE_MIN_ITEMS", "RunEngine"]

logger = logging.getLogger("batchpool")

#: A failure share (float ``tolerated_failure``) is judged once this many items completed.
SHARE_MIN_ITEMS = 20


class _Stopped(Exception):
    """The run was stopped while the fetch thread waited."""


class RunEngine(RunOutput):
    """A whole run: its state, consumer and keeper, and the fetch thread and outcomes added here.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     with ex.map_pages(lambda cursor: ([1, 2], "b" if cursor is None else None), abs) as run:
        ...         items = sorted(run)
        >>> isinstance(run._core, RunEngine), items, run._core.pages_done
        (True, [1, 1, 2, 2], 2)
    """

    # -- starting (stopping is RunState's) ---------------------------------------------

    def start(self) -> None:
        fetcher = threading.Thread(target=self._fetch_loop, name=f"batchpool-run-{self.run_id}-fetch")
        self.threads.append(fetcher)
        if self.store is not None or self.stuck_after is not None:
            keeper = threading.Thread(target=self._keep_loop, name=f"batchpool-run-{self.run_id}-keep")
            self.threads.append(keeper)
            self.keeper_alive = True
        for thread in self.threads:
            thread.start()

    # -- the fetch thread ------------------------------------------------------------

    def _fetch_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self.stopping and len(self.pages) >= self.prefetch:
                        self._cv_fetch.wait()
                    if self.stopping:
                        return
                    if self.resume:
                        seq, cursor = self.resume.popleft()
                        again = True
                    elif self.frontier is _END:
                        return
                    else:
                        seq, cursor, again = self.next_seq, self.frontier, False
                items, next_cursor = self._fetch(cursor)
                self._add_page(seq, cursor, items, next_cursor, again)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - any failure here ends the run, with its exception
            with self._lock:
                self.pages_failed += 1
                futures = self._stop_locked(exc)
            _cancel(futures)
        finally:
            with self._lock:
                self.fetch_ended = True
                self._cv_out.notify_all()
                self._cv_keep.notify_all()

    def _fetch(self, cursor: Any) -> tuple[list[Any], Any]:
        attempt = 1
        while True:
            try:
                page = self.fetch_page(cursor)
                break
            except Exception as exc:
                policy = self.fetch_retry
                if policy is None or not policy.should_retry(exc, attempt=attempt):
                    _annotate(exc, cursor, attempt, self.run_id)
                    raise
                delay = policy.delay(attempt)
                logger.info(
                    "run %s: fetch_page(%r) failed (%r); attempt %d in %.3f s",
                    self.run_id,
                    cursor,
                    exc,
                    attempt + 1,
                    delay,
                )
                attempt += 1
                with self._lock:
                    if self._cv_fetch.wait_for(lambda: self.stopping, delay):
                        raise _Stopped from None
        if not isinstance(page, tuple) or len(page) != 2:
            raise TypeError(f"fetch_page must return a tuple (items, next_cursor), got {type(page).__name__}")
        items, next_cursor = page
        if not isinstance(items, Iterable):
            raise TypeError(
                f"fetch_page must return (items, next_cursor) with iterable items, got {type(items).__name__}"
            )
        return list(items), next_cursor

    def _add_page(self, seq: int, cursor: Any, items: list[Any], next_cursor: Any, again: bool) -> None:
        page = _Page(seq, cursor, items)
        op: Op | None = None
        recorded: list[tuple[int, bool, Any]] = []
        if self.store is not None:
            op = ("page", seq, pickle_cursor(cursor), pickle_cursor(next_cursor, "next_cursor"), len(items))
            if again:
                recorded = [r for r in self.store.results(self.run_id, seq) if r[1]]  # failed ones run again
                if recorded and recorded[-1][0] >= len(items):
                    logger.warning(
                        "run %s: page %r has fewer items than recorded; running all again", self.run_id, cursor
                    )
                    recorded = []
        with self._lock:
            if self.stopping:
                raise _Stopped
            self.pages[seq] = page
            self.running_pages += 1
            if op is not None:
                self.writes.append(op)
            if not again:
                self.frontier = _END if next_cursor is None else next_cursor
                self.next_seq = seq + 1
            for idx, _, value in recorded:
                self.items_done += 1
                page.settled += 1
                if value is MISSING:  # done before, result not kept: not in the output
                    page.state[idx] = _GONE
                    if not self.ordered:
                        page.unconsumed -= 1
                    continue
                page.state[idx] = _OK
                page.results[idx] = value
                if not self.ordered:
                    self.ready.append((page, idx))
            self._cv_out.notify_all()
        for idx, item in enumerate(items):
            with self._lock:
                if self.stopping:
                    raise _Stopped
                if page.state[idx] != _WAIT:
                    continue
                page.state[idx] = _RUN
                page.t_submit[idx] = self.clock()  # "running" counts from submit, queueing included
            future = self._submit(item)
            with self._lock:
                # A stop that came while submit() blocked (max_pending) did not
                # see this Future: it is cancelled here instead.
                stopped = self._stopping_now()  # (a call: mypy would keep the narrowing from above)
                if not stopped and page.state[idx] == _RUN:
                    page.futures[idx] = future
            future.add_done_callback(functools.partial(self._on_done, page, idx))
            if stopped:
                future.cancel()
                raise _Stopped
        with self._lock:
            page.submitted = True
            if page.settled == len(items):
                self._page_done_locked(page)
            if not self.ordered and page.unconsumed == 0:
                self._retire_locked(page)  # empty, or consumed while it was being submitted
            self._cv_out.notify_all()

    def _submit(self, item: Any) -> Future[Any]:
        while True:
            try:
                with self._lock:
                    self.in_submit = True
                future: Future[Any] = self.pool.submit(self.process_item, item)
                return future
            except QueueFullError:
                # on_full="raise" (or a block_timeout): wait for room, or for the stop.
                with self._lock:
                    if self._cv_fetch.wait_for(lambda: self.stopping, 0.05):
                        raise _Stopped from None
            finally:
                with self._lock:
                    self.in_submit = False

    # -- outcomes (pool threads) -----------------------------------------------------

    def _on_done(self, page: _Page, idx: int, future: Future[Any]) -> None:
        cancelled = future.cancelled()
        exc = None if cancelled else future.exception()
        value = None if cancelled or exc is not None else future.result()
        futures: list[Future[Any]] = []
        with self._lock:
            if page.state[idx] != _RUN:
                return
            page.futures[idx] = None
            page.settled += 1
            if cancelled and self.stopping:
                page.state[idx] = _DROPPED  # cancelled by this run's stop: no outcome
            elif cancelled or exc is not None:
                if exc is None:
                    exc = CancelledError(f"item {idx} of the page at cursor {page.cursor!r} was cancelled")
                futures = self._failed_locked(page, idx, exc)
            else:
                self.items_done += 1
                if self.store is not None:
                    self.writes.append(("item", page.seq, idx, 1, value if self.keep_results else MISSING))
                if self.stopping:
                    page.state[idx] = _GONE  # completed after the stop: recorded, not yielded
                else:
                    page.state[idx] = _OK
                    page.results[idx] = value
                    if not self.ordered:
                        self.ready.append((page, idx))
            if page.submitted and page.settled == len(page.items):
                self._page_done_locked(page)
            self._cv_out.notify_all()
        _cancel(futures)

    def _failed_locked(self, page: _Page, idx: int, exc: BaseException) -> list[Future[Any]]:
        page.state[idx] = _FAIL
        self.items_failed += 1
        page.failed += 1
        if page.failed == 1:
            self.pages_failed += 1
        item = page.items[idx]
        if self.store is not None:
            self.writes.append(("item", page.seq, idx, 0, (item, exc)))
        if self.budget is None:
            return self._stop_locked(exc)
        self.failures.append((item, exc))
        if not self.ordered:
            self._consumed_locked(page, 1)
        completed = self.items_done + self.items_failed
        if isinstance(self.budget, int):
            over = self.items_failed > self.budget
        else:
            over = completed >= SHARE_MIN_ITEMS and self.items_failed > self.budget * completed
        if not over:
            return []
        error = RunFailedError(self.run_id, self.items_failed, completed, list(self.failures[:3]))
        error.__cause__ = self.failures[0][1]
        return self._stop_locked(error)


def _annotate(exc: BaseException, cursor: Any, attempts: int, run_id: str) -> None:
    """Tell which page failed: a ``cursor`` attribute (unless it has one) and a note."""
    if not hasattr(exc, "cursor"):
        try:
            exc.cursor = cursor  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(f"batchpool run {run_id!r}: fetch_page({cursor!r}) failed after {attempts} attempt(s)")
