"""What leaves a map_pages run: results to its consumer, records to its store, stuck pages to its listeners.

One responsibility: the two readers of a run's state. ``RunOutput.next`` is the
consumer's side of the ``Run`` iterator (completion or page-then-item order, and
the finished pages of a store replayed); the keeper thread (only with a store or
``stuck_after``) group-commits the outcomes to the ``RunStore`` and reports
stuck pages to the ``on_page_stuck`` listeners. Imports run_state and run_store.
"""

from __future__ import annotations

import logging
from typing import Any

from .run_state import _END, _OK, _RUN, _WAIT, RunState, _cancel
from .run_store import MISSING, encode_items

__all__ = ["COMMIT_INTERVAL", "RunOutput"]

logger = logging.getLogger("batchpool")

#: Seconds between group commits while no page finishes (a finished page commits at once).
COMMIT_INTERVAL = 0.2


class RunOutput(RunState):
    """A run's consumer side and its keeper thread (the state is ``RunState``'s).

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     with ex.map_pages(lambda cursor: ([7], None), abs) as run:
        ...         isinstance(run._core, RunOutput), run._core.next()
        (True, 7)
    """

    # -- the consumer ----------------------------------------------------------------

    def next(self) -> Any:
        error: BaseException | None
        with self._lock:
            while True:
                if self.restored_values:
                    return self.restored_values.popleft()
                if self.closed or self.raised:
                    raise StopIteration
                got = self._next_ordered_locked() if self.ordered else self._next_any_locked()
                if got is not _END:
                    return got
                if self.error is not None and (self.ordered or not self.ready):
                    self.raised = True
                    error = self.error
                    break
                if self.fetch_ended and not self.pages and not self.restored:
                    self.raised = True
                    error = None
                    break
                self._cv_out.wait()
        self.join()
        self.release_store()
        if error is None:
            raise StopIteration
        raise error

    def _next_any_locked(self) -> Any:
        if self.restored:
            self._load_restored_locked(self.restored.popleft())
            return _END if not self.restored_values else self.restored_values.popleft()
        if not self.ready:
            return _END
        page, idx = self.ready.popleft()
        value, page.results[idx] = page.results[idx], None  # hold no result once yielded
        self._consumed_locked(page, 1)
        return value

    def _next_ordered_locked(self) -> Any:
        while True:
            if self.restored and self.restored[0] == self.out_seq:
                self._load_restored_locked(self.restored.popleft())
                self.out_seq += 1
                if self.restored_values:
                    return self.restored_values.popleft()
                continue
            page = self.pages.get(self.out_seq)
            if page is None:
                return _END
            if self.out_idx >= len(page.items):
                if not page.submitted:
                    return _END
                self._retire_locked(page)
                self.out_seq += 1
                self.out_idx = 0
                continue
            idx = self.out_idx
            state = page.state[idx]
            if state == _OK:  # completed before any stop
                self.out_idx += 1
                value, page.results[idx] = page.results[idx], None
                return value
            if state in (_WAIT, _RUN) or self.error is not None:
                return _END  # as map does: an error is raised at the first place not done
            self.out_idx += 1  # a tolerated failure, or a result not kept: not in the output

    def _load_restored_locked(self, seq: int) -> None:
        assert self.store is not None
        for _, ok, value in self.store.results(self.run_id, seq):
            if value is MISSING:
                continue
            if ok:
                self.restored_values.append(value)
            elif isinstance(value, tuple) and len(value) == 2:
                self.failures.append(value)

    # -- the keeper thread -----------------------------------------------------------

    def _keep_loop(self) -> None:
        poll = COMMIT_INTERVAL if self.stuck_after is None else max(0.01, min(COMMIT_INTERVAL, self.stuck_after / 4))
        ended = False
        state = "closed"
        while not ended:
            with self._lock:
                self._cv_keep.wait_for(lambda: self.page_finished or self.ended_locked(), poll)
                writes, self.writes, self.page_finished = self.writes, [], False
                ended = self.ended_locked()
                # The end state is read with the last writes: a close after that is not a failure.
                state = "failed" if self.error is not None else "closed" if self.stopping else "finished"
                stuck = [] if self.stopping else self._newly_stuck_locked()
                listeners = list(self.listeners)
            if writes and self.store is not None:
                try:
                    self.store.write(self.run_id, encode_items(writes))
                except Exception as exc:
                    logger.exception("run %s: writing to the store %s failed", self.run_id, self.store.path)
                    with self._lock:
                        futures = self._stop_locked(exc)
                    _cancel(futures)
            for cursor, age in stuck:
                for listener in listeners:
                    try:
                        listener(cursor, age)
                    except Exception:
                        logger.exception("run %s: an on_page_stuck listener failed", self.run_id)
        if self.store is not None:
            try:
                self.store.finish(self.run_id, state)
            except Exception:
                logger.exception("run %s: recording its end failed", self.run_id)
        with self._lock:
            self.keeper_alive = False
        self.release_store()

    def _newly_stuck_locked(self) -> list[tuple[Any, float]]:
        if self.stuck_after is None:
            return []
        out = []
        for page, age in self._ages_locked(self.clock()):
            if age > self.stuck_after and not page.stuck:
                page.stuck = True
                out.append((page.cursor, age))
        return out
