"""Turning SIGTERM/SIGINT into a drain of one pool, without ever waiting in the handler.

Imports ``errors`` and ``state`` only; the executor hands in what to call.

A Python signal handler runs on the main thread between two bytecodes, maybe
while that very thread holds one of the pool's locks (inside ``submit``): a
handler that shut the pool down there would wait for itself forever (it did,
3 runs in 8). So the handler takes no lock and calls nothing that might:

1. it sets ``state.close_requested`` (``submit`` refuses from that instant) and
   writes one byte to a pipe (no Python lock involved);
2. a helper thread, started when the handlers were installed, reads the byte
   and starts the drain (``shutdown(wait=True, timeout=...)``) on a thread of
   its own; a second signal makes it abort instead (workers killed,
   unfinished jobs failed with ``ShutdownError``);
3. the main thread raises ``SystemExit(exit_code)`` at a safe point: at once
   if it is outside batchpool's code, else as it leaves the batchpool call it
   is in (``enter``/``leave`` keep count), never in the middle of one.

Interpreter exit waits for the drain (bounded by its timeout) through
``wait_drained``, so ``finally`` blocks and atexit hooks run, and the exit
status is ``exit_code``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import ShutdownError
from .options import check_timeout
from .state import PoolState

__all__ = ["SignalDrain"]

logger = logging.getLogger("batchpool")


class SignalDrain:
    """The signal handlers of one pool, and the threads that act on them.

    Args:
        state: the pool's state (``close_requested`` is set from the handler).
        drain: called on a helper thread after the first signal (a shutdown).
        abort: called on the helper thread after a second signal.
        signals: which signals to handle.
        exit_code: the main thread exits with it (None: it does not exit).
        timeout: the drain's own bound, for ``wait_drained``.
    """

    def __init__(
        self,
        state: PoolState,
        drain: Callable[[], None],
        abort: Callable[[], None],
        signals: Iterable[int],
        exit_code: int | None,
        timeout: float | None,
    ) -> None:
        self._state = state
        self._drain = drain
        self._abort = abort
        self._exit_code = exit_code
        self.timeout = timeout
        #: The main thread's ident; ``depth`` counts how deep it is inside
        #: batchpool calls (``submit`` bumps it inline: it is on every call's path).
        self.main = threading.main_thread().ident
        self.depth = 0
        #: A signal came while ``depth`` > 0: ``leave`` raises SystemExit.
        self.exit_pending = False
        self._count = 0
        self._r, self._w = os.pipe()
        self._drainer: threading.Thread | None = None
        self._helper = threading.Thread(target=self._serve, name="batchpool-signals", daemon=True)
        self._helper.start()
        self._previous: dict[int, Any] = {}
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    # -- in the handler: no locks, nothing that may wait ------------------------------

    def _handle(self, signum: int, frame: object) -> None:
        self._count += 1
        self._state.close_requested = True
        try:
            os.write(self._w, b"1" if self._count == 1 else b"2")
        except OSError:
            pass  # restored and closed meanwhile
        if self._exit_code is None:
            return
        if self.depth:
            self.exit_pending = True  # raised as the main thread leaves the batchpool call
        else:
            raise SystemExit(self._exit_code)

    # -- the main thread's batchpool calls ----------------------------------------------

    def enter(self) -> None:
        """The calling thread enters a batchpool call (counted on the main thread only)."""
        if threading.get_ident() == self.main:
            self.depth += 1

    def leave(self) -> None:
        """The calling thread leaves it; a deferred exit happens here."""
        if threading.get_ident() != self.main:
            return
        self.depth -= 1
        if self.depth == 0 and self.exit_pending:
            self.exit_deferred()

    def exit_deferred(self) -> None:
        """Raise the SystemExit a signal deferred: the main thread is out of batchpool's calls now."""
        self.exit_pending = False
        assert self._exit_code is not None
        raise SystemExit(self._exit_code)

    # -- the helper thread -------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                data = os.read(self._r, 64)
            except OSError:
                return
            if not data:
                return
            for byte in data:
                if byte == ord("1") and self._drainer is None:
                    logger.warning("signal: draining the pool (timeout %s s)", self.timeout)
                    self._drainer = threading.Thread(target=self._drain, name="batchpool-drain", daemon=True)
                    self._drainer.start()
                elif byte == ord("2"):
                    logger.warning("second signal: stopping the pool now")
                    self._abort()

    def wait_drained(self) -> None:
        """Wait for a drain in progress (interpreter exit), bounded by its timeout."""
        drainer = self._drainer
        if drainer is not None and drainer is not threading.current_thread():
            drainer.join(None if self.timeout is None else self.timeout + 15.0)

    def restore(self) -> None:
        """Put the previous handlers back and stop the helper thread."""
        for signum, old in self._previous.items():
            signal.signal(signum, old)
        self._previous.clear()
        if self._w >= 0:
            os.close(self._w)  # the helper reads EOF and ends
            self._w = -1
        self._helper.join(5.0)
        if self._r >= 0:
            os.close(self._r)
            self._r = -1


class SignalsMixin:
    """``install_signal_handlers`` of the executor (mixed into ``BatchPoolExecutor``)."""

    if TYPE_CHECKING:
        _state: PoolState
        _signals: SignalDrain | None

        def shutdown(
            self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
        ) -> None: ...

        def _abort(self, error: BaseException) -> None: ...

    def install_signal_handlers(
        self,
        timeout: float | None = None,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        exit_code: int | None = 0,
    ) -> Callable[[], None]:
        """Turn SIGTERM/SIGINT into a graceful drain of this pool.

        On the first signal the pool refuses new jobs at once (``submit``
        raises ``RuntimeError``), a helper thread drains it
        (``shutdown(wait=True, timeout=timeout)``), and, unless ``exit_code``
        is None, the main thread raises ``SystemExit(exit_code)``: at once if
        it is outside batchpool's code, else as it leaves the batchpool call it
        is in. Interpreter exit waits for the drain, so ``finally`` blocks and
        atexit hooks run. A second signal stops at once: workers are killed and
        unfinished jobs fail with ``ShutdownError``. The handler itself never
        waits on a lock. Call from the main thread. Returns a function that
        restores the previous handlers.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> ex = BatchPoolExecutor(backend="thread")
            >>> restore = ex.install_signal_handlers(timeout=10)
            >>> restore(); ex.shutdown()
        """
        check_timeout("timeout", timeout)
        if self._signals is not None:
            self._signals.restore()
        ref = weakref.ref(self)

        def drain() -> None:
            executor = ref()
            if executor is not None:
                executor.shutdown(wait=True, timeout=timeout)

        def abort() -> None:
            executor = ref()
            if executor is not None:
                executor._abort(ShutdownError(0.0))

        handlers = SignalDrain(self._state, drain, abort, signals, exit_code, timeout)
        self._signals = handlers
        from .lifecycle import register_signals  # lifecycle imports this module

        register_signals(handlers)

        def restore() -> None:
            if self._signals is handlers:
                self._signals = None
            handlers.restore()

        return restore
