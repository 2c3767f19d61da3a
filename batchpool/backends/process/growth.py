"""Starting worker processes on demand, as ``submit()`` needs them (the process backend).

Imports this package's ``balance`` (the layer below) and ``workers``, and the
Batcher and PoolState for their types; ``manager`` builds on it: ``notify``
(the submitting thread) asks, the manager thread's passes answer.

As in ``ProcessPoolExecutor``, whose ``submit()`` starts a process when no
idle one is left: while the pool has fewer workers than its target, a submit
that finds fewer idle workers (done with what they were sent; a fresh one may
still be starting) than queued jobs asks for a worker and waits until the
manager has run a pass that began after its job was queued. The pass starts
a worker per ask (less those it started itself for queued jobs meanwhile, so
the two never double up), then dispatches. So ``_processes`` counts the new
worker when ``submit()`` returns, and a burst of slow jobs starts every
worker at once.

Never a deadlock: the manager thread itself never waits (a done-callback that
submits), and a waiting submit returns as soon as the manager begins settling
outcomes, since settling runs done-callbacks that might wait for a lock the
submitter holds; its worker then starts in the next pass. The wait is bounded
by ``GROW_WAIT`` all the same.
"""

from __future__ import annotations

import threading
from collections import deque

from ...batching import Batcher
from ...state import PoolState
from .balance import Balancing
from .workers import Worker

__all__ = ["GROW_WAIT", "OnDemand"]

#: Longest a submit waits for a worker to be started for it (a safety bound: a
#: start takes milliseconds, and a failed one breaks the pool, ending the wait).
GROW_WAIT = 2.0


class OnDemand(Balancing):
    """The asks of submitting threads for workers, and the manager passes that answer them."""

    batcher: Batcher
    state: PoolState
    _workers: dict[int, Worker]
    _manager: threading.Thread | None

    def _spawn(self) -> bool:
        raise NotImplementedError  # the manager's

    def _init_growth(self) -> None:
        self._growing = True  # fewer workers than the target (read without a lock: a hint)
        self._grow_asks: deque[None] = deque()  # one per submit that found no idle worker
        self._started_for_jobs = 0  # workers the last pass started for queued jobs, no idle one
        self._pass_started = 0  # passes are numbered as they begin
        self._pass_ended = 0
        self._pass_waiters = 0
        self._settling = False  # between a pass and the next: outcomes being settled
        self._pass_done = threading.Condition(threading.Lock())

    # -- the submitting thread -----------------------------------------------------------

    def _ask_for_worker(self) -> int | None:
        """Ask for a worker if this submit's job needs one; the pass number to wait past, or None."""
        if not self._growing or threading.current_thread() is self._manager:
            return None
        began = self._pass_started  # read first: the pass that answers begins after it
        idle = sum(1 for w in list(self._workers.values()) if w.idle and w.done and not w.retiring)
        if idle >= self.batcher.pending:
            return None
        self._grow_asks.append(None)
        return began

    def _wait_for_pass(self, began: int) -> None:
        """Wait for the end of a pass that began after ``began`` (or for settling to begin)."""
        with self._pass_done:
            self._pass_waiters += 1
            try:
                self._pass_done.wait_for(
                    lambda: self._pass_ended > began or not self._growing or self._settling, GROW_WAIT
                )
            finally:
                self._pass_waiters -= 1

    # -- the manager thread --------------------------------------------------------------

    def _begin_pass(self) -> None:
        """Before a dispatch: start the workers asked for."""
        self._pass_started += 1
        self._settling = False
        started, self._started_for_jobs = self._started_for_jobs, 0
        if not self._grow_asks:
            return
        asks = 0
        while self._grow_asks:
            try:
                self._grow_asks.popleft()
            except IndexError:
                break
            asks += 1
        for _ in range(min(asks - started, self.state.target_workers - self._live())):
            if self.state.closing or not self._spawn():
                return

    def _end_pass(self) -> None:
        """After a dispatch: the submits waiting for this pass may return."""
        self._growing = self._live() < self.state.target_workers and not self.state.closing
        self._pass_ended = self._pass_started
        self._release_waiters()

    def _settling_begins(self) -> None:
        """Outcomes are about to be settled on this thread (callbacks run): waiting submits return now."""
        if not self._settling:
            self._settling = True
            self._release_waiters()

    def _stop_growing(self) -> None:
        """The manager is leaving: nobody waits for it any more."""
        self._growing = False
        with self._pass_done:
            self._pass_done.notify_all()

    def _release_waiters(self) -> None:
        if self._pass_waiters:
            with self._pass_done:
                self._pass_done.notify_all()
