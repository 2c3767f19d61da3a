"""The light Future: a ``concurrent.futures.Future`` that makes its Condition only when a thread must wait.

Imports only the standard library (never another batchpool module), so that it
can be loaded by file path under any interpreter, as the CPython conformance
test does.

Why: every stdlib ``Future`` builds a ``threading.Condition`` in ``__init__``:
an RLock, a deque and a handful of bound methods, about eleven GC-tracked
objects (1.6 KB) per Future. Most of batchpool's Futures are resolved by a
worker and read after they are done, so nobody ever waits on that Condition;
building it and letting the cyclic GC walk it was half the cost of a
submit-and-read cycle. ``LightFuture`` keeps the same public behaviour and the
same private attributes that ``concurrent.futures.wait`` / ``as_completed``
touch, but builds them on first use.

Fields (all ``__slots__``; ``__dict__`` is still there, inherited, for
attributes users and batchpool set on a Future)::

    _state, _result, _exception   plain slots, as in the stdlib (tests set them directly)
    _cond                         None until a thread must wait, or until
                                  ``_condition`` / ``_waiters`` is first read
    _waiter_list                  created with ``_cond`` (before it), never without it
    _callbacks                    None until the first pending add_done_callback

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

No free-threaded build exists on the machine this was written on: this is the
argument, not a test result. Code that writes the private fields directly must
keep the same order (result before state), as the stdlib's own methods do.

Fork. A child forked while another thread held a stripe would inherit it
locked forever; ``os.register_at_fork`` gives the child fresh stripes. (A
Future whose own Condition was held at fork time is as stuck as a stdlib one.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, _base
from typing import Any, Protocol, TypeVar

__all__ = ["LightFuture"]

_T = TypeVar("_T")

# The state names, bound once: they are compared on every call.
_PENDING = _base.PENDING
_RUNNING = _base.RUNNING
_CANCELLED = _base.CANCELLED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_FINISHED = _base.FINISHED
_DONE_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED))
_CANCELLED_STATES = frozenset((_CANCELLED, _CANCELLED_AND_NOTIFIED))
_DESCRIPTION = _base._STATE_TO_DESCRIPTION_MAP
_LOGGER = _base.LOGGER  # "concurrent.futures": callback errors are logged where the stdlib logs them

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


class LightFuture(Future[_T]):
    """A ``concurrent.futures.Future`` that builds its Condition only when a thread must wait.

    Behaves exactly like the standard Future (states, ``InvalidStateError``,
    callbacks run at once when already done, callback errors logged to the
    ``concurrent.futures`` logger, ``repr``) and works with
    ``concurrent.futures.wait``, ``as_completed`` and ``asyncio.wrap_future``.

    Example:
        >>> import concurrent.futures
        >>> f = LightFuture()
        >>> isinstance(f, concurrent.futures.Future)
        True
        >>> f.set_running_or_notify_cancel()
        True
        >>> f.set_result(42)
        >>> f.result(timeout=1), f.done()
        (42, True)
        >>> f._cond is None  # nobody waited: no Condition was built
        True
        >>> f
        <LightFuture at 0x... state=finished returned int>
    """

    __slots__ = ("_callbacks", "_cond", "_exception", "_result", "_state", "_waiter_list")

    _state: str
    _result: _T | None
    _exception: BaseException | None
    _cond: threading.Condition | None
    _waiter_list: list[_base._Waiter] | None
    _callbacks: list[Callable[[Future[_T]], object]] | None

    def __init__(self) -> None:
        """Make a pending Future. Like the stdlib's, called by executors, not clients.

        The stdlib ``__init__`` is deliberately not called: it builds the
        Condition this class exists to avoid.

        Example:
            >>> LightFuture().running()
            False
        """
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._cond = None
        self._waiter_list = None
        self._callbacks = None

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

    def _invoke_callbacks(self) -> None:
        # Called after a transition, with no lock held (callbacks may do
        # anything). No callback can be added any more: add_done_callback saw
        # or will see a done state under the update lock.
        callbacks = self._callbacks
        if callbacks:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    _LOGGER.exception("exception calling callback for %r", self)

    # -- reading -----------------------------------------------------------------

    def __repr__(self) -> str:
        # No lock: the result is stored before the state and never after it,
        # so a FINISHED state read first always comes with its result.
        state = self._state
        name = self.__class__.__name__
        if state == _FINISHED:
            if self._exception:
                return f"<{name} at {id(self):#x} state=finished raised {self._exception.__class__.__name__}>"
            return f"<{name} at {id(self):#x} state=finished returned {self._result.__class__.__name__}>"
        return f"<{name} at {id(self):#x} state={_DESCRIPTION[state]}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Refuse to pickle, as the stdlib Future does (its lock cannot be pickled).

        A Future never crosses to a worker; a copy there would never be resolved.

        Example:
            >>> import pickle
            >>> pickle.dumps(LightFuture())
            Traceback (most recent call last):
            ...
            TypeError: cannot pickle 'LightFuture' object
        """
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")

    def cancelled(self) -> bool:
        """Return True if the Future was cancelled.

        Example:
            >>> f = LightFuture()
            >>> f.cancel(), f.cancelled()
            (True, True)
        """
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        """Return True if the Future is running.

        Example:
            >>> f = LightFuture()
            >>> f.set_running_or_notify_cancel(), f.running()
            (True, True)
        """
        return self._state == _RUNNING

    def done(self) -> bool:
        """Return True if the Future was cancelled or finished.

        Example:
            >>> f = LightFuture()
            >>> f.done()
            False
            >>> f.set_exception(ValueError("no"))
            >>> f.done()
            True
        """
        return self._state in _DONE_STATES

    def result(self, timeout: float | None = None) -> _T:
        """Return the result, waiting up to ``timeout`` seconds (None: no limit).

        Raises:
            CancelledError: the Future was cancelled.
            TimeoutError: not done within ``timeout`` (``concurrent.futures.TimeoutError``).
            Exception: the exception the Future was resolved with.

        Example:
            >>> f = LightFuture()
            >>> f.set_exception(KeyError("k"))
            >>> f.result(timeout=1)
            Traceback (most recent call last):
            ...
            KeyError: 'k'
        """
        try:
            # Fast path, no lock: finished and nobody ever needed a Condition.
            if self._cond is None and self._state == _FINISHED:
                if self._exception:
                    raise self._exception
                return self._result  # type: ignore[return-value]
            return self._wait_for_result(timeout)
        finally:
            # As in the stdlib: the raised exception's traceback holds this
            # frame; dropping self breaks the Future -> exception -> frame cycle.
            self = None  # type: ignore[assignment]

    def _wait_for_result(self, timeout: float | None) -> _T:
        try:
            self._wait(timeout)
            if self._exception:
                raise self._exception
            return self._result  # type: ignore[return-value]
        finally:
            self = None  # type: ignore[assignment]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the exception the Future was resolved with (None on success).

        Waits up to ``timeout`` seconds (None: no limit).

        Raises:
            CancelledError: the Future was cancelled.
            TimeoutError: not done within ``timeout``.

        Example:
            >>> f = LightFuture()
            >>> f.set_result(1)
            >>> f.exception(timeout=0) is None
            True
        """
        if self._cond is None and self._state == _FINISHED:
            return self._exception
        self._wait(timeout)
        return self._exception

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
                # Not done and told not to wait: no Condition is needed.
                raise _base.TimeoutError()
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

    def add_done_callback(self, fn: Callable[[Future[_T]], object]) -> None:
        """Call ``fn(future)`` when the Future finishes or is cancelled; at once if it already has.

        Callbacks run in the order added, in the thread that resolves the
        Future; an exception from one is logged and the next still runs.

        Example:
            >>> f = LightFuture()
            >>> f.add_done_callback(lambda fut: print("done:", fut.result()))
            >>> f.set_result("ok")
            done: ok
            >>> f.add_done_callback(lambda fut: print("late:", fut.result()))
            late: ok
        """
        # The first list is allocated before taking the lock: an allocation can
        # run the cyclic GC, and with it finalizers, which must not run while a
        # stripe is held. (Appending to an existing list may grow it, as the
        # stdlib's append under its Condition may.)
        first = [fn] if self._callbacks is None else None
        lock, _ = self._acquire()
        try:
            if self._state not in _DONE_STATES:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = first if first is not None else [fn]
                else:
                    callbacks.append(fn)
                return
        finally:
            lock.release()
        try:
            fn(self)
        except Exception:
            _LOGGER.exception("exception calling callback for %r", self)

    # -- transitions (executors and tests) ------------------------------------

    def cancel(self) -> bool:
        """Cancel the Future unless it is running or done; return whether it is cancelled.

        Example:
            >>> f = LightFuture()
            >>> f.cancel()
            True
            >>> g = LightFuture()
            >>> g.set_running_or_notify_cancel(), g.cancel()
            (True, False)
        """
        lock, cond = self._acquire()
        try:
            state = self._state
            if state == _RUNNING or state == _FINISHED:
                return False
            if state in _CANCELLED_STATES:
                return True
            self._state = _CANCELLED
            if cond is not None:
                cond.notify_all()
        finally:
            lock.release()
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the Future running, or, if it was cancelled, tell the waiters and return False.

        Raises:
            RuntimeError: called twice, or after a result was set.

        Example:
            >>> f = LightFuture()
            >>> f.cancel()
            True
            >>> f.set_running_or_notify_cancel()  # the executor must not run it
            False
        """
        lock, _ = self._acquire()
        try:
            state = self._state
            if state == _PENDING:
                self._state = _RUNNING
                return True
            if state == _CANCELLED:
                self._state = _CANCELLED_AND_NOTIFIED
                # Waiters exist only with a Condition, i.e. when it is the lock.
                # No notify_all: cancel() already notified, as in the stdlib.
                waiters = self._waiter_list
                if waiters:
                    for waiter in waiters:
                        waiter.add_cancelled(self)
                return False
        finally:
            lock.release()
        _LOGGER.critical("Future %s in unexpected state: %s", id(self), state)
        raise RuntimeError("Future in unexpected state")

    def set_result(self, result: _T) -> None:
        """Resolve the Future with ``result``; wake its waiters and run its callbacks.

        Raises:
            InvalidStateError: the Future is already finished or cancelled.

        Example:
            >>> f = LightFuture()
            >>> f.set_result(1)
            >>> f.set_result(2)
            Traceback (most recent call last):
            ...
            concurrent.futures._base.InvalidStateError: FINISHED: <LightFuture at 0x... state=finished returned int>
        """
        lock, cond = self._acquire()
        try:
            state = self._state
            if state not in _DONE_STATES:
                self._result = result  # before the state: see the module docstring
                self._state = _FINISHED
                if cond is not None:
                    waiters = self._waiter_list
                    if waiters:
                        for waiter in waiters:
                            waiter.add_result(self)
                    cond.notify_all()
        finally:
            lock.release()
        if state in _DONE_STATES:
            # Built outside the lock: repr reads the result's class.
            raise InvalidStateError(f"{state}: {self!r}")
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        """Resolve the Future with ``exception``; wake its waiters and run its callbacks.

        Raises:
            InvalidStateError: the Future is already finished or cancelled.

        Example:
            >>> f = LightFuture()
            >>> f.set_exception(OSError("disk"))
            >>> f.exception(timeout=0)
            OSError('disk')
        """
        lock, cond = self._acquire()
        try:
            state = self._state
            if state not in _DONE_STATES:
                self._exception = exception  # before the state: see the module docstring
                self._state = _FINISHED
                if cond is not None:
                    waiters = self._waiter_list
                    if waiters:
                        for waiter in waiters:
                            waiter.add_exception(self)
                    cond.notify_all()
        finally:
            lock.release()
        if state in _DONE_STATES:
            raise InvalidStateError(f"{state}: {self!r}")
        self._invoke_callbacks()
