"""PoolState: where a pool is in its life, and how many workers it should have.

Imports ``batchpool.errors`` only. The one place that ``submit``, the backends,
shutdown, signal handling, resize/pause and the dashboard consult::

    RUNNING <──> PAUSED            (pause / resume)
       │           │
       └─────┬─────┘
             v
          CLOSING                  shutdown, interpreter exit, a signal: no new
             │                     jobs; queued work drains (a paused pool resumes)
             v
    BROKEN ──> ABORTED             BROKEN: workers cannot run at all (a failing
                                   initializer); ABORTED: stopped now (a shutdown
                                   deadline, a second signal): unfinished jobs fail

Any state may go to BROKEN or ABORTED (but not back). The lock is shared with
the batcher's lanes, so "closed" and "what is queued" are read together; every
transition notifies the conditions made on it (idle worker threads, blocked
submitters) and calls the watchers (the process manager's wake-up), so no one
sleeps through a change.

``phase`` is a plain attribute written only under the lock and read without
it on hot paths (``submit``): a reader may see a transition one instant late,
which is harmless because every decision that matters (queueing a job, taking
a batch) re-checks it under the lock.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import Protocol

from .errors import ShutdownError

__all__ = ["Phase", "PoolState", "SHUTDOWN_MESSAGE", "EXIT_MESSAGE"]

#: The standard pools' wording, which callers match on.
SHUTDOWN_MESSAGE = "cannot schedule new futures after shutdown"
EXIT_MESSAGE = "cannot schedule new futures after interpreter shutdown"


class Phase(enum.IntEnum):
    """The life of a pool, in order (a pool only moves forward, but for pause/resume).

    Example:
        >>> Phase.RUNNING < Phase.CLOSING < Phase.ABORTED
        True
    """

    RUNNING = 0
    PAUSED = 1
    CLOSING = 2
    BROKEN = 3
    ABORTED = 4


# Module constants: an enum member looked up on its class costs a dict walk
# per access before Python 3.12, and ``submit`` compares on every call.
_PAUSED = Phase.PAUSED


class _Notifiable(Protocol):
    def notify_all(self) -> None: ...


_LEGAL: dict[Phase, frozenset[Phase]] = {
    Phase.RUNNING: frozenset({Phase.PAUSED, Phase.CLOSING, Phase.BROKEN, Phase.ABORTED}),
    Phase.PAUSED: frozenset({Phase.RUNNING, Phase.CLOSING, Phase.BROKEN, Phase.ABORTED}),
    Phase.CLOSING: frozenset({Phase.BROKEN, Phase.ABORTED}),
    Phase.BROKEN: frozenset({Phase.ABORTED}),
    Phase.ABORTED: frozenset(),
}


class PoolState:
    """Lifecycle and target size of one pool, with the lock its lanes share.

    Args:
        max_workers: the target number of workers.

    Example:
        >>> state = PoolState(max_workers=2)
        >>> state.pause(), state.phase.name
        (True, 'PAUSED')
        >>> state.close(), state.phase.name          # closing a paused pool resumes it
        (True, 'CLOSING')
        >>> state.refusal()
        RuntimeError('cannot schedule new futures after shutdown')
    """

    def __init__(self, max_workers: int) -> None:
        # Shared with the Batcher: lanes and lifecycle change under one lock.
        self.lock = threading.Lock()
        self.phase = Phase.RUNNING
        self.target_workers = max_workers
        #: Why the pool is BROKEN or ABORTED (what unfinished jobs fail with).
        self.error: BaseException | None = None
        self._refusal: BaseException = RuntimeError(SHUTDOWN_MESSAGE)
        #: Set without the lock by a signal handler (which must never wait on
        #: a lock its own thread may hold): new jobs are refused from that
        #: instant; the real transition to CLOSING follows on another thread.
        self.close_requested = False
        self._conditions: list[_Notifiable] = []
        self._watchers: list[Callable[[], None]] = []

    def condition(self) -> threading.Condition:
        """A new condition on the shared lock, notified on every transition."""
        cond = threading.Condition(self.lock)
        self._conditions.append(cond)
        return cond

    def notify_on_transition(self, waitable: _Notifiable) -> None:
        """Call ``waitable.notify_all()``, under the lock, on every transition (as a ``condition()`` is)."""
        self._conditions.append(waitable)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (outside the lock; it must not block) after every transition."""
        self._watchers.append(callback)

    # -- reading ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """New jobs are accepted (RUNNING or PAUSED, and no signal asked to close)."""
        return self.phase <= _PAUSED and not self.close_requested

    @property
    def closing(self) -> bool:
        """No new jobs; lanes flush at once."""
        return self.phase >= Phase.CLOSING

    @property
    def paused(self) -> bool:
        """Batches are not handed out."""
        return self.phase == Phase.PAUSED

    @property
    def stopped(self) -> bool:
        """BROKEN or ABORTED: nothing runs any more."""
        return self.phase >= Phase.BROKEN

    def refusal(self) -> BaseException | None:
        """The error ``submit`` raises now, or None while jobs are accepted."""
        if self.phase <= _PAUSED:
            return RuntimeError(SHUTDOWN_MESSAGE) if self.close_requested else None
        error = self._refusal
        return type(error)(*error.args)

    # -- transitions -----------------------------------------------------------------------

    def pause(self) -> bool:
        """RUNNING -> PAUSED; False if not running."""
        return self._move(Phase.PAUSED, only_from=Phase.RUNNING)

    def resume(self) -> bool:
        """PAUSED -> RUNNING; False if not paused."""
        return self._move(Phase.RUNNING, only_from=Phase.PAUSED)

    def close(self, message: str = SHUTDOWN_MESSAGE) -> bool:
        """Refuse new jobs (``RuntimeError(message)``) and drain; False if already closing."""
        return self._move(Phase.CLOSING, refusal=RuntimeError(message))

    def break_(self, error: BaseException) -> bool:
        """The pool cannot run work: new submits raise ``error``'s type; False if stopped already."""
        return self._move(Phase.BROKEN, refusal=error, error=error)

    def abort(self, error: BaseException | None = None) -> bool:
        """Stop now; unfinished jobs fail with ``error`` (a ``ShutdownError`` by default)."""
        error = error if error is not None else ShutdownError(0.0)
        refusal = self._refusal if self.phase >= Phase.CLOSING else RuntimeError(SHUTDOWN_MESSAGE)
        return self._move(Phase.ABORTED, refusal=refusal, error=error)

    def set_target(self, workers: int) -> None:
        """Change the target number of workers (watchers are told)."""
        with self.lock:
            self.target_workers = workers
            self._notify_locked()
        self._tell_watchers()

    def _move(
        self,
        to: Phase,
        *,
        only_from: Phase | None = None,
        refusal: BaseException | None = None,
        error: BaseException | None = None,
    ) -> bool:
        with self.lock:
            now = self.phase
            if to not in _LEGAL[now] or (only_from is not None and now != only_from):
                return False
            self.phase = to
            if refusal is not None:
                self._refusal = refusal
            if error is not None:
                self.error = error
            self._notify_locked()
        self._tell_watchers()
        return True

    def _notify_locked(self) -> None:
        for cond in self._conditions:
            cond.notify_all()

    def _tell_watchers(self) -> None:
        for callback in list(self._watchers):
            callback()
