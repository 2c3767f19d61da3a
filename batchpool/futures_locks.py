"""LightFuture's fields and locks: striped update locks, a Condition made on first use, the wait on it.

One responsibility: the base class ``LightFutureBase`` of ``futures.LightFuture``
(its slots, the private attributes the stdlib reads, made on first use, and how
they are locked) and the module-level stripes. Imports only the standard
library (never another batchpool module), as ``futures.py`` does, so both can be
loaded under any interpreter (the CPython conformance test loads them by path).

Fields (all ``__slots__``; ``__dict__`` is still there, inherited, for
attributes users and batchpool set on a Future)::

    _state, _result, _exception   plain slots, as in the stdlib (tests set them directly)
    _cond                         None until a thread must wait, or until
                                  ``_condition`` / ``_waiters`` is first read
    _waiter_list                  created with ``_cond`` (before it), never without it
    _callbacks                    None until the first pending add_done_callback
    _sleepers                     None, or the locks of threads sleeping in
                                  ``result``/``exception`` while there is no Condition

The private attributes the stdlib reads on any Future are emulated:
``_condition`` (a real ``threading.Condition``, used as a context manager and
through ``acquire``/``release``/``notify_all``), ``_waiters`` (the list of
``_Waiter`` objects ``wait``/``as_completed`` append and remove under
``_condition``), ``_done_callbacks``, and the ``_state``/``_result``/
``_exception`` slots. ``_condition`` and ``_waiters`` are properties that create
both on first read; once made they never change, so a non-None read is final.

Locking. A Future's *update lock* is its Condition when it has one, otherwise
one of ``_STRIPE_COUNT`` module-level RLocks chosen by the Future's address.
Every write of ``_state`` (all transitions) and every callback registration
holds the update lock; creating the Condition holds the stripe. So creation
and transitions are totally ordered: a transition either ran under the stripe
before the Condition existed (then the thread that made it sees the finished
state when it checks under the new Condition, and never sleeps), or it runs
under the Condition (and notifies it, and feeds the waiters). That is why no
wake-up can be lost and why a Future resolved while nobody waits creates and
notifies nothing. Readers that only look at one field (``done``, ``running``,
``cancelled``, and ``result``/``exception`` of a Future already finished with no
Condition) take no lock at all.

Why transitions take a stripe, not only Condition creation: without some lock
``cancel()`` and ``set_running_or_notify_cancel()`` racing on a pending Future
could both succeed (the job runs and is reported cancelled), and two
``set_result`` calls could both succeed; the stdlib guarantees exactly one
winner. A per-Future lock would cost an object per Future, and one
process-wide lock would serialise every worker thread; 64 stripes cost one
uncontended RLock round trip per transition (about 0.1 us) and keep unrelated
Futures apart. Nothing that can call back into user code (callbacks, ``repr``
of a result, logging) runs while a stripe is held, and a thread holding a
stripe never waits for another lock (``_acquire`` lets the stripe go before it
takes a Condition), so stripes cannot close a deadlock cycle; they are
reentrant so that a finalizer or signal handler that resolves another Future
of the same stripe, on the thread that holds it, does not deadlock either.

Memory ordering, without relying on the GIL. A transition writes ``_result`` or
``_exception`` first and ``_state`` last, under the update lock, and a finished
Future's result is never written again. On the GIL build each bytecode runs
alone and a GIL hand-off is a full barrier, so a thread that reads ``FINISHED``
then reads the stored result. On the free-threaded build (3.13t) there is no
such barrier, and the design holds for these reasons:

(a) Every write of a field happens inside a lock (stripe or Condition), and
    every reader that waits, or that finds a Condition, reads under that
    Condition; a release/acquire pair of one lock orders all writes before the
    release for the next acquirer.
(b) The stripe/Condition hand-over cannot lose a wake-up: creation of the
    Condition and every transition made without one take the same stripe, so
    the creator's check of ``_state`` under its new Condition either sees the
    earlier transition or the later transition sees ``_cond`` and notifies.
(c) The lock-free readers (``done``, ``running``, ``cancelled``, ``repr`` and
    the fast path of ``result``/``exception``) load one slot and then, only if
    it says ``FINISHED``, the result slot. On 3.13t a slot is read and written
    through its member descriptor: the store is a release store made inside
    the object's critical section and the load is an atomic load
    (``PyMember_SetOne``/``PyMember_GetOne`` in ``Python/structmember.c``), so a
    load of ``_state`` that returns ``FINISHED`` makes the ``_result`` stored
    before it visible. This leans on CPython keeping slot access atomic with
    release/acquire order in later free-threaded releases (specialised slot
    opcodes included); if it ever did not, the fix is to take the update lock
    in those readers, at about 0.1 us each.
(d) The Condition and its waiter list are fully built before ``_cond`` is
    stored, and the list is stored before ``_cond``, so a thread that reads a
    non-None ``_cond`` sees a working Condition and the list.
(e) The state values are interned module constants (never freed or rebuilt).

(f) A thread that sleeps on its own lock in ``_wait`` (no Condition) is
    woken by the transition's release of that lock, made after the fields
    were written: the release/acquire pair orders them for the sleeper.

No free-threaded build exists on the machine this was written on: this is the
argument, not a test result. Code that writes the private fields directly must
keep the same order (result before state), as the stdlib's own methods do.

Waiting without a Condition. ``result()``/``exception()`` on a pending Future
that has no Condition do not build one (an RLock, a deque and bound methods,
and a Python-level ``wait``/``notify_all`` on both sides): the waiting thread
registers a lock of its own, held, in ``_sleepers`` under the update lock and
blocks on it; the transition releases every registered lock, under the
update lock, before any callback runs (the stdlib wakes its waiters before
the callbacks too). Registration and transitions take the same update lock,
and a Condition made meanwhile takes the stripe first, so a sleeper
registered under the stripe is seen by every later transition, whichever
lock it takes. A waiter that finds a Condition already made waits on it, as
in the stdlib (so a stray ``notify_all`` on it still ends a timed wait).

Fork. A child forked while another thread held a stripe would inherit it
locked forever; ``os.register_at_fork`` gives the child fresh stripes. (A
Future whose own Condition was held at fork time is as stuck as a stdlib one.)
"""

from __future__ import annotations

import os
import threading
from _thread import allocate_lock
from collections.abc import Callable
from concurrent.futures import Future, _base
from typing import Protocol, TypeVar

__all__ = ["LightFutureBase"]

_T = TypeVar("_T")

# The state names, bound once: they are compared on every call (futures.py uses them too).
_PENDING = _base.PENDING
_RUNNING = _base.RUNNING
_CANCELLED = _base.CANCELLED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_FINISHED = _base.FINISHED
_DONE_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))
_CANCELLED_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED))

# Striped update locks for Futures without a Condition. 64 is plenty for the
# handful of threads that resolve Futures at once; the index uses the address
# above the 16-byte allocation alignment so neighbouring Futures differ.
_STRIPE_COUNT = 64
_STRIPE_MASK = _STRIPE_COUNT - 1
# RLock, not Lock: a finalizer or signal handler run by the thread that holds a
# stripe may resolve another Future of the same stripe (see module docstring).
_STRIPES: list[threading.RLock] = [threading.RLock() for _ in range(_STRIPE_COUNT)]


def _renew_stripes_after_fork() -> None:
    # In the child only the forking thread survives; a stripe another thread
    # held at fork time would stay locked forever. Replaced in place because
    # the functions below index the list on every call.
    _STRIPES[:] = [threading.RLock() for _ in range(_STRIPE_COUNT)]


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_renew_stripes_after_fork)


class _Releasable(Protocol):
    def release(self) -> None: ...


class _Sleeper(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class LightFutureBase(Future[_T]):
    """The fields of a ``LightFuture``, its update lock, and its Condition made on first use.

    Not used on its own: ``batchpool.futures.LightFuture`` sets the fields in
    its ``__init__`` and implements the Future's methods on top of these.

    Example:
        >>> from batchpool.futures import LightFuture
        >>> f = LightFuture()
        >>> isinstance(f, LightFutureBase), f._cond is None
        (True, True)
    """

    __slots__ = ("_callbacks", "_cond", "_exception", "_result", "_sleepers", "_state", "_waiter_list")

    _state: str
    _result: _T | None
    _exception: BaseException | None
    _cond: threading.Condition | None
    _waiter_list: list[_base._Waiter] | None
    _callbacks: list[Callable[[Future[_T]], object]] | None
    _sleepers: list[_Sleeper] | None

    # -- the lazily made private attributes the stdlib touches -------------------

    def _make_condition(self) -> threading.Condition:
        # Built outside the stripe: allocating may run the cyclic GC and with it
        # arbitrary finalizers, which must not run while a stripe is held. The
        # loser of a creation race drops its pair; everyone returns the one
        # stored first, so racing threads share ONE Condition.
        new_cond = threading.Condition()
        new_waiters: list[_base._Waiter] = []
        with _STRIPES[id(self) >> 4 & _STRIPE_MASK]:
            cond = self._cond
            if cond is None:
                # The list first: a reader that sees _cond sees the list.
                self._waiter_list = new_waiters
                self._cond = cond = new_cond
        return cond

    @property
    def _condition(self) -> threading.Condition:
        """The Condition ``wait``/``as_completed`` lock, made on first read (private, as in the stdlib).

        Example:
            >>> from batchpool.futures import LightFuture
            >>> f = LightFuture()
            >>> f._condition is f._condition
            True
        """
        cond = self._cond
        if cond is None:
            cond = self._make_condition()
        return cond

    @_condition.setter
    def _condition(self, cond: threading.Condition) -> None:
        # Nothing in the stdlib assigns it; allowed for code that does. Under the
        # update lock so no transition is half-way through on the old lock.
        new_waiters: list[_base._Waiter] = []  # allocated before the lock (see _make_condition)
        lock, _ = self._acquire()
        try:
            if self._waiter_list is None:
                self._waiter_list = new_waiters
            self._cond = cond
        finally:
            lock.release()

    @property
    def _waiters(self) -> list[_base._Waiter]:
        """The ``_Waiter`` list ``wait``/``as_completed`` append to (private, as in the stdlib).

        Made together with the Condition: a waiter is only fed by a transition
        that holds the Condition, so a list without one could miss a wake-up.

        Example:
            >>> from batchpool.futures import LightFuture
            >>> LightFuture()._waiters
            []
        """
        waiters = self._waiter_list
        if waiters is None:
            self._make_condition()
            waiters = self._waiter_list
            assert waiters is not None  # stored before _cond, under the stripe
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[_base._Waiter]) -> None:
        self._make_condition()
        lock, _ = self._acquire()
        try:
            self._waiter_list = waiters
        finally:
            lock.release()

    @property
    def _done_callbacks(self) -> list[Callable[[Future[_T]], object]]:
        """The pending callbacks (private, as in the stdlib), made on first read.

        Example:
            >>> from batchpool.futures import LightFuture
            >>> LightFuture()._done_callbacks
            []
        """
        callbacks = self._callbacks
        if callbacks is None:
            new_callbacks: list[Callable[[Future[_T]], object]] = []  # allocated before the lock
            lock, _ = self._acquire()
            try:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = callbacks = new_callbacks
            finally:
                lock.release()
        return callbacks

    def _update_lock(self) -> threading.Condition | threading.RLock:
        # The update lock as it looks now, for a ``with`` block that checks
        # ``_holds_update_lock`` first. Methods the main thread calls
        # (``cancel``, ``add_done_callback``, waiting) use this instead of
        # ``_acquire``: a Ctrl-C is checked for when a call returns, so one
        # landing just after ``_acquire``'s acquire would leave the lock held
        # for good, while ``with`` gives it no such gap.
        cond = self._cond
        return cond if cond is not None else _STRIPES[id(self) >> 4 & _STRIPE_MASK]

    def _holds_update_lock(self, lock: object) -> bool:
        # Taken the stripe while a Condition was being made: that is the update lock now.
        cond = self._cond
        return cond is None or lock is cond

    def _acquire(self) -> tuple[_Releasable, threading.Condition | None]:
        # Takes and returns the update lock, and the Condition if that is it.
        # A non-None _cond is final, so it is taken directly; a None one is only
        # trusted once re-read under the stripe, because creation holds it.
        cond = self._cond
        if cond is None:
            stripe = _STRIPES[id(self) >> 4 & _STRIPE_MASK]
            stripe.acquire()
            cond = self._cond
            if cond is None:
                return stripe, None
            stripe.release()
        cond.acquire()
        return cond, cond

    def _wait(self, timeout: float | None) -> None:
        # Returns once FINISHED, or raises CancelledError / TimeoutError. The
        # checks before and after the single wait are the stdlib's: a notify
        # that does not finish the Future (third-party code) ends in
        # TimeoutError there too.
        state = self._state
        cond = self._cond
        if cond is None:
            if state == _FINISHED:
                return
            if state in _CANCELLED_STATES:
                raise _base.CancelledError()
            if timeout is not None and timeout <= 0:
                # Not done and told not to wait: nothing needs to be made.
                raise _base.TimeoutError()
            if self._sleep(timeout):
                return
            cond = self._make_condition()
        with cond:
            # Checked under the Condition: a transition either finished before
            # it existed (seen here) or will notify it after this thread sleeps.
            state = self._state
            if state in _CANCELLED_STATES:
                raise _base.CancelledError()
            if state == _FINISHED:
                return
            cond.wait(timeout)
            state = self._state
            if state in _CANCELLED_STATES:
                raise _base.CancelledError()
            if state == _FINISHED:
                return
            raise _base.TimeoutError()

    def _sleep(self, timeout: float | None) -> bool:
        # Sleeps on a lock of this thread's own until a transition releases
        # it (module docstring, "Waiting without a Condition"). Returns True
        # once FINISHED, raises CancelledError / TimeoutError, and returns
        # False if a Condition appeared before this thread could register (the
        # caller then waits on it). The locks are taken with ``with``, not
        # through ``_acquire``: this is where a Ctrl-C lands, and an interrupt
        # between an acquire and its ``try`` would leave a stripe held for good.
        sleeper = allocate_lock()
        sleeper.acquire()
        alone: list[_Sleeper] = [sleeper]  # allocated before the stripe is taken (see _make_condition)
        with _STRIPES[id(self) >> 4 & _STRIPE_MASK]:
            if self._cond is not None:
                return False  # made meanwhile: transitions take it now, not the stripe
            state = self._state
            registered = state not in _DONE_STATES
            if registered:
                sleepers = self._sleepers
                if sleepers is None:
                    self._sleepers = alone
                else:
                    sleepers.append(sleeper)
        if registered:
            woken = False
            try:
                woken = sleeper.acquire(True, -1 if timeout is None else timeout)
            finally:
                if not woken:
                    # Timed out or interrupted: leave the list (a transition
                    # may have taken this sleeper out meanwhile).
                    self._unregister(sleeper)
            state = self._state
        if state in _CANCELLED_STATES:
            raise _base.CancelledError()
        if state == _FINISHED:
            return True
        raise _base.TimeoutError()

    def _unregister(self, sleeper: _Sleeper) -> None:
        # Under the update lock of now: a Condition may have been made since
        # this sleeper registered under the stripe.
        while True:
            lock = self._update_lock()
            with lock:
                if not self._holds_update_lock(lock):
                    continue
                sleepers = self._sleepers
                if sleepers is not None and sleeper in sleepers:
                    sleepers.remove(sleeper)
                return

    def _wake_sleepers(self) -> None:
        # Under the update lock, by a transition that left the Future done.
        sleepers = self._sleepers
        self._sleepers = None
        for sleeper in sleepers:  # type: ignore[union-attr]  # called only when there are some
            sleeper.release()
