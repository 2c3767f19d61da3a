"""Idle worker threads parked on queues of their own, and the direct hand-off of a job to one.

Imports only the standard library and ``batchpool.jobs`` (for typing); the
``Batcher`` (``batching.lanes``) owns one ``Parking`` and is its only user.

Why not a ``threading.Condition``: its ``wait`` and ``notify`` are Python code
on both sides of every wake-up (a waiter lock made per wait, the owner checks,
a deque of waiters), and a job submitted to an idle pool then still went
through its lane (lane lookup and creation on submit, a cut on take). For a
job whose caller waits for it at once, that was most of the round trip that
``ThreadPoolExecutor`` makes in C (``SimpleQueue``). Here each idle thread
blocks on a ``SimpleQueue`` of its own (its spot), which it registers in
``parked`` under the pool's lock; a waker pops a spot and puts ``None`` in it.
A submit to an idle pool puts its job there instead (``hand_off``, made
*without* the pool's lock), so the job reaches a thread with no lane in
between.

A pop and its put are one call into C (``next`` on a ``map`` over
``iter(parked.popleft, None)``): no Python code runs between them, so an
exception that a signal handler raises in the waker (a Ctrl-C in the main
thread, in a submit or a shutdown) comes before both or after both. Popping
in Python and putting next left a window where it came between, and that
thread slept for good, out of reach of every notify; ``shutdown`` then hung
joining it.

The rules that keep wake-ups from being lost:

* A thread registers while holding the pool's lock, after finding nothing to
  do under it; whoever changes what it would find does so under that lock and
  then wakes parked threads. The one change made without the lock, a job put
  in the inbox (``Batcher.put``), is followed by a look at ``parked``, and a
  thread looks at the inbox after registering: one of the two sees the other.
* What is put in a spot stays there until its thread takes it, so a wake-up
  that comes before the thread blocks is not lost.
* A thread whose timed wait ends removes itself under the pool's lock. If it
  is gone already, a waker popped it and the put is certain (made by the same
  call as the pop, with or without the pool's lock), so the thread can block
  for it while holding the lock. Either way a job handed over is taken.

A hand-off is only offered when it cannot change what runs first (the Batcher
checks: nothing queued, no per-key limits, no lingering lane, the pool
running), and a job handed off is always taken by the thread that got it.
"""

from __future__ import annotations

import threading
from collections import deque
from itertools import count, repeat
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..jobs import Job

__all__ = ["Parking"]

_put = SimpleQueue.put  # called from C by the map that pops the spot (module docstring)


class Parking:
    """Idle threads waiting for work, each on its own queue; a drop-in for the Batcher's old Condition.

    ``wait`` is called with ``lock`` held, as a Condition's is; ``notify`` and
    ``notify_all`` mostly are too, but need not be (a lock-free put notifies
    without it); ``hand_off`` never is.

    Args:
        lock: the pool's lock (``PoolState.lock``), released while parked.
        inbox: jobs put without the lock; a thread that finds one there once
            parked does not wait (module docstring).

    Example:
        >>> import threading
        >>> lock = threading.Lock()
        >>> parking = Parking(lock)
        >>> with lock:
        ...     parking.wait(0.01) is None  # nobody woke it: timed out, nothing handed
        True
        >>> parking.hand_off("job")  # nobody parked: the caller queues it instead
        False
    """

    def __init__(self, lock: Any, inbox: deque[Any] | None = None) -> None:
        self._lock = lock
        self._inbox: deque[Any] = deque() if inbox is None else inbox
        #: The parked threads' spots, in the order they parked (read
        #: without the lock for a count or a hand-off: deque ops are atomic).
        self.parked: deque[SimpleQueue[Job | None]] = deque()
        self._local = threading.local()
        # Next spot, longest parked first; raises IndexError when none is
        # parked (an iterator over a callable is not exhausted by that).
        self._pop = iter(self.parked.popleft, None)
        self._wake = map(_put, self._pop, repeat(None))  # next(): pop a spot and put None in it
        # Hand-offs, counted by the call that makes them; ``handed`` reads it
        # with a next() of its own, so it counts its reads too (``_reads``).
        self._count = count()
        self._reads = 0
        self._read_lock = threading.Lock()

    def wait(self, timeout: float | None) -> Job | None:
        """Park until woken or ``timeout`` seconds pass; return the job handed over, if any.

        Called with the lock held; it is released while parked and held again on return.
        """
        try:
            spot: SimpleQueue[Job | None] = self._local.spot
        except AttributeError:
            spot = self._local.spot = SimpleQueue()
        self.parked.append(spot)
        if self._inbox:
            # Put without the lock after this thread looked, and maybe before
            # it parked: that put saw no thread to wake (module docstring).
            try:
                self.parked.remove(spot)
            except ValueError:
                return spot.get()  # popped meanwhile: its put is certain
            return None
        self._lock.release()
        job = None
        woken = False
        try:
            job = spot.get(True, None if timeout is None else max(0.0, timeout))
            woken = True
        except Empty:
            pass
        finally:
            self._lock.acquire()
            if not woken:  # timed out, or interrupted
                try:
                    self.parked.remove(spot)
                except ValueError:
                    job = spot.get()  # popped meanwhile: its put is certain (module docstring)
        return job

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` parked threads, longest parked first; they look for work again."""
        wake = self._wake
        for _ in range(n):
            try:
                next(wake)
            except IndexError:  # none parked (a hand-off may have taken the last one)
                return

    def notify_all(self) -> None:
        """Wake every parked thread; ``PoolState`` calls this on every transition (lock held)."""
        wake = self._wake
        while True:
            try:
                next(wake)
            except IndexError:
                return

    def hand_off(self, job: Job) -> bool:
        """Give ``job`` to a parked thread, without the lock; False if none is parked.

        The thread that has waited longest gets it, as the next ``notify``
        would wake it (measured against the most recent one: steadier round
        trips, the threads' wake-ups spread over the CPUs). The pop, the put
        and the count are one call into C (module docstring).
        """
        try:
            next(zip(map(_put, self._pop, repeat(job)), self._count, strict=False))
        except IndexError:
            return False
        return True

    def leave(self) -> None:
        """The calling thread will not park again: its spot goes (hand-offs stay counted)."""
        self._local.__dict__.pop("spot", None)

    @property
    def handed(self) -> int:
        """Jobs ever handed off (counted by the hand-off itself, so a count read after ``hand_off`` includes it)."""
        with self._read_lock:
            try:
                seen = next(self._count) - self._reads
            finally:
                self._reads += 1  # whatever interrupts: that next() was a read
        return seen
