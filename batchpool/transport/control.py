"""Who owns a batch: the claim counter and the yield bell of one worker.

Two ``eventfd`` counters per worker process, next to its channel (Linux):

* **claims** (semaphore mode): the parent adds one token for every batch it
  sends; the worker takes one as it *starts* a batch. Tokens left over tell
  the parent, exactly, how many of the batches it sent were never started:
  after a crash those go out again untouched (no attempt is charged: the
  worker never ran them). The parent may also take a token back itself, to
  reclaim the newest unstarted batch of a busy worker for an idle one. The
  kernel makes each take atomic, so exactly one side gets a given token:
  either the worker starts the batch, or the parent has it back, never both.
  When the worker finds no token for a batch it skips it and says so, and
  the parent sends that worker nothing new until it has (tokens are
  fungible: a new batch's token must not be taken for the skipped one).
* **yield**: the parent rings it when an idle worker could take the unstarted
  rest of this worker's running batch; the worker looks between jobs (only
  in batches that have run a while, so tiny jobs pay nothing) and, when rung,
  stops and sends back what it finished, flagged ``YIELDED``.

Where ``eventfd`` does not exist, ``available()`` is False and the pool runs
without (every batch sent counts as started, and nothing is taken back).
"""

from __future__ import annotations

import os
from multiprocessing import reduction
from typing import Any

__all__ = ["Control", "available"]


def available() -> bool:
    """True where eventfd exists (Linux)."""
    return hasattr(os, "eventfd") and hasattr(os, "EFD_SEMAPHORE")


class Control:
    """The claim counter and yield bell of one worker (both ends use the same object).

    Example:
        >>> c = Control()
        >>> c.sent(); c.sent()          # two batches sent
        >>> c.claim()                   # the worker starts the first
        True
        >>> c.reclaim()                 # the parent takes the second back
        True
        >>> c.claim(), c.unstarted()    # nothing left to start
        (False, 0)
        >>> c.close()
    """

    def __init__(self, _fds: tuple[int, int] | None = None) -> None:
        if _fds is None:
            flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
            self._claims = os.eventfd(0, flags | os.EFD_SEMAPHORE)
            self._yield = os.eventfd(0, flags)
        else:
            self._claims, self._yield = _fds

    # -- parent side ------------------------------------------------------------------

    def sent(self) -> None:
        """A batch went out: one more token to start it with."""
        os.eventfd_write(self._claims, 1)

    def reclaim(self) -> bool:
        """Take back the newest batch, if the worker has not started it."""
        return self._take(self._claims)

    def unstarted(self) -> int:
        """How many sent batches were never started (only meaningful once the worker is dead)."""
        count = 0
        while self._take(self._claims):
            count += 1
        return count

    def ask_yield(self) -> None:
        """Ask the worker to stop its running batch after the current job."""
        os.eventfd_write(self._yield, 1)

    # -- worker side --------------------------------------------------------------------

    def claim(self) -> bool:
        """Start the next batch: False when the parent took it back."""
        return self._take(self._claims)

    def yield_requested(self) -> bool:
        """Has the parent asked for the rest of the running batch? (Resets the bell.)"""
        return self._take(self._yield)

    @staticmethod
    def _take(fd: int) -> bool:
        try:
            return os.eventfd_read(fd) > 0
        except BlockingIOError:
            return False

    def close(self) -> None:
        """Close this process's descriptors (idempotent)."""
        for attr in ("_claims", "_yield"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def __reduce__(self) -> tuple[Any, ...]:
        # Only while starting a worker (spawn/forkserver): handed over as a Pipe's descriptors are.
        return _rebuild, (reduction.DupFd(self._claims), reduction.DupFd(self._yield))


def _rebuild(claims: Any, bell: Any) -> Control:
    return Control((claims.detach(), bell.detach()))
