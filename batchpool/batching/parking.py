"""Idle worker threads parked on locks of their own, and the direct hand-off of a job to one.

Imports only the standard library and ``batchpool.jobs`` (for typing); the
``Batcher`` (``batching.lanes``) owns one ``Parking`` and is its only user.

Why not a ``threading.Condition``: its ``wait`` and ``notify`` are Python code
on both sides of every wake-up (a waiter lock made per wait, the owner checks,
a deque of waiters), and a job submitted to an idle pool then still went
through its lane (lane lookup and creation on submit, a cut on take). For a
job whose caller waits for it at once, that was most of the round trip that
``ThreadPoolExecutor`` makes in C (``SimpleQueue``). Here each idle thread
blocks on a lock of its own, held, which it registers in ``parked`` under the
pool's lock; a waker pops a thread and releases its lock. A submit to an idle
pool may leave its job in the popped thread's ``job`` before the release
(``hand_off``, made *without* the pool's lock), so the job reaches a thread
with no lane in between.

The rules that keep wake-ups from being lost:

* A thread registers while holding the pool's lock, after finding nothing to
  do under it; whoever changes what it would find (a put, a state change, a
  limit raised) does so under that lock and then wakes parked threads.
* Its own lock is held before it is registered, so a release that comes
  before the thread blocks is not lost: the acquire returns at once.
* A thread whose timed wait ends removes itself under the pool's lock. If it
  is gone already, a waker popped it and its release is certain: a waker
  under the pool's lock made it before the thread got that lock back, and a
  hand-off makes it without that lock, so the thread can block for it while
  holding the lock. Either way the job left in ``job``, if any, is taken.

A hand-off is only offered when it cannot change what runs first (the Batcher
checks: nothing queued, no per-key limits, no lingering lane, the pool
running), and a job handed off is always taken by the thread that got it.
"""

from __future__ import annotations

import threading
from _thread import allocate_lock
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..jobs import Job

__all__ = ["Parking"]


class _Spot:
    """One thread's place in the parking: its lock (held while parked), a job handed to it, and how many were."""

    __slots__ = ("handed", "job", "lock")

    def __init__(self) -> None:
        self.lock = allocate_lock()
        self.lock.acquire()
        self.job: Job | None = None
        # Written only by the hand-off that popped this spot (the one thread
        # that owns it until the release), so it needs no lock of its own.
        self.handed = 0


class Parking:
    """Idle threads waiting for work, each on its own lock; a drop-in for the Batcher's old Condition.

    ``wait``, ``notify`` and ``notify_all`` are called with ``lock`` held, as a
    Condition's are; ``hand_off`` without it.

    Args:
        lock: the pool's lock (``PoolState.lock``), released while parked.

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

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        #: The parked threads' spots, in the order they parked (read
        #: without the lock for a count or a hand-off: deque ops are atomic).
        self.parked: deque[_Spot] = deque()
        self._local = threading.local()
        self._spots: list[_Spot] = []  # the spots of threads that may park again, for ``handed``
        self._handed_before = 0  # handed to threads that have left (``leave``)

    def wait(self, timeout: float | None) -> Job | None:
        """Park until woken or ``timeout`` seconds pass; return the job handed over, if any.

        Called with the lock held; it is released while parked and held again on return.
        """
        try:
            spot: _Spot = self._local.spot
        except AttributeError:
            spot = self._local.spot = _Spot()
            self._spots.append(spot)
        self.parked.append(spot)
        self._lock.release()
        woken = False
        try:
            woken = spot.lock.acquire(True, -1 if timeout is None else max(0.0, timeout))
        finally:
            self._lock.acquire()
            if not woken:  # timed out, or interrupted
                try:
                    self.parked.remove(spot)
                except ValueError:
                    spot.lock.acquire()  # popped meanwhile: its release is certain (module docstring)
        job = spot.job
        if job is not None:
            spot.job = None
        return job

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` parked threads, longest parked first (lock held); they look for work again."""
        parked = self.parked
        for _ in range(n):
            try:
                spot = parked.popleft()
            except IndexError:  # a hand-off took the last one meanwhile
                return
            spot.lock.release()

    def notify_all(self) -> None:
        """Wake every parked thread (lock held); ``PoolState`` calls this on every transition."""
        parked = self.parked
        while True:
            try:
                spot = parked.popleft()
            except IndexError:
                return
            spot.lock.release()

    def hand_off(self, job: Job) -> bool:
        """Give ``job`` to a parked thread, without the lock; False if none is parked.

        The thread that has waited longest gets it, as the next ``notify``
        would wake it (measured against the most recent one: steadier round
        trips, the threads' wake-ups spread over the CPUs).
        """
        try:
            spot = self.parked.popleft()
        except IndexError:
            return False
        # Released whatever happens (a KeyboardInterrupt in the submitting
        # thread): a popped spot that is never released would leave its
        # thread asleep for good, out of reach of every notify.
        try:
            spot.job = job
            spot.handed += 1
        finally:
            spot.lock.release()
        return True

    def leave(self) -> None:
        """The calling thread will not park again (lock held): keep its count, drop its spot."""
        spot: _Spot | None = getattr(self._local, "spot", None)
        if spot is not None and spot in self._spots:
            self._spots.remove(spot)
            self._handed_before += spot.handed
            del self._local.spot

    @property
    def handed(self) -> int:
        """Jobs ever handed off (counted by the hand-off itself, so a count read after ``hand_off`` includes it)."""
        return self._handed_before + sum(spot.handed for spot in list(self._spots))
