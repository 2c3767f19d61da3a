"""The light Future: a ``concurrent.futures.Future`` that makes its Condition only when a thread must wait.

One responsibility: ``LightFuture``'s states, reads and transitions. Its fields,
their lazily made private attributes, its update locks (and their fork safety)
and the memory-ordering argument are in ``futures_locks.py`` (its base class).
Imports only the standard library and ``futures_locks`` (which imports only the
standard library), so that it loads under any interpreter. The CPython
conformance test loads this file by path, as a top-level module: then the
relative import fails and the same names come from ``batchpool.futures_locks``
on ``sys.path``.

Why: every stdlib ``Future`` builds a ``threading.Condition`` in ``__init__``:
an RLock, a deque and a handful of bound methods, about eleven GC-tracked
objects (1.6 KB) per Future. Most of batchpool's Futures are resolved by a
worker and read after they are done, so nobody ever waits on that Condition;
building it and letting the cyclic GC walk it was half the cost of a
submit-and-read cycle. ``LightFuture`` keeps the same public behaviour and the
same private attributes that ``concurrent.futures.wait`` / ``as_completed``
touch, but builds them on first use.

"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, _base
from typing import Any, TypeVar

try:
    from .futures_locks import (
        _CANCELLED,
        _CANCELLED_AND_NOTIFIED,
        _CANCELLED_STATES,
        _DONE_STATES,
        _FINISHED,
        _PENDING,
        _RUNNING,
        LightFutureBase,
    )

    # Re-exported: the fork tests reach the stripes through this module.
    from .futures_locks import _STRIPE_MASK as _STRIPE_MASK
    from .futures_locks import _STRIPES as _STRIPES
    from .futures_locks import _renew_stripes_after_fork as _renew_stripes_after_fork
except ImportError:  # loaded by file path as a top-level module: the same names, from the package
    from batchpool.futures_locks import (
        _CANCELLED,
        _CANCELLED_AND_NOTIFIED,
        _CANCELLED_STATES,
        _DONE_STATES,
        _FINISHED,
        _PENDING,
        _RUNNING,
        LightFutureBase,
    )
    from batchpool.futures_locks import _STRIPE_MASK as _STRIPE_MASK
    from batchpool.futures_locks import _STRIPES as _STRIPES
    from batchpool.futures_locks import _renew_stripes_after_fork as _renew_stripes_after_fork

__all__ = ["LightFuture"]

_T = TypeVar("_T")

_DESCRIPTION = _base._STATE_TO_DESCRIPTION_MAP
_LOGGER = _base.LOGGER  # "concurrent.futures": callback errors are logged where the stdlib logs them


class LightFuture(LightFutureBase[_T]):
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

    __slots__ = ()  # the fields are slots of LightFutureBase

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
        self._sleepers = None

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
            self._wait(timeout)
            if self._exception:
                raise self._exception
            return self._result  # type: ignore[return-value]
        finally:
            # As in the stdlib: the raised exception's traceback holds this
            # frame; dropping self breaks the Future -> exception -> frame cycle.
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
        while True:  # taken with ``with``: called on the main thread, where Ctrl-C lands (_update_lock)
            lock = self._update_lock()
            with lock:
                if not self._holds_update_lock(lock):
                    continue
                if self._state not in _DONE_STATES:
                    callbacks = self._callbacks
                    if callbacks is None:
                        self._callbacks = first if first is not None else [fn]
                    else:
                        callbacks.append(fn)
                    return
            break
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
        while True:  # taken with ``with``: called on the main thread, where Ctrl-C lands (_update_lock)
            lock = self._update_lock()
            with lock:
                if not self._holds_update_lock(lock):
                    continue
                state = self._state
                if state == _RUNNING or state == _FINISHED:
                    return False
                if state in _CANCELLED_STATES:
                    return True
                self._state = _CANCELLED
                if self._sleepers:
                    self._wake_sleepers()
                cond = self._cond
                if cond is not None:
                    cond.notify_all()
            break
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
                self._result = result  # before the state: see futures_locks' docstring
                self._state = _FINISHED
                if self._sleepers:
                    self._wake_sleepers()
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
        if self._callbacks:
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
                self._exception = exception  # before the state: see futures_locks' docstring
                self._state = _FINISHED
                if self._sleepers:
                    self._wake_sleepers()
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
        if self._callbacks:
            self._invoke_callbacks()
