"""Pool lifetimes beyond ``shutdown()``: interpreter exit, garbage collection, fork.

Imports ``backends.base``, ``signals``, ``state`` and ``metrics``; the executor
registers each pool here. Nothing here holds a pool strongly.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from .backends.base import Backend, drain_at_exit
from .metrics import Stats
from .signals import SignalDrain
from .state import PoolState

if TYPE_CHECKING:
    from .executor import BatchPoolExecutor

__all__ = ["WeakStats", "register_backend", "register_signals", "shutdown_unreferenced"]

logger = logging.getLogger("batchpool")

_live_backends: weakref.WeakSet[Backend] = weakref.WeakSet()
_live_signals: weakref.WeakSet[SignalDrain] = weakref.WeakSet()


def _python_exit() -> None:
    for drain in list(_live_signals):
        drain.wait_drained()  # a signal's drain finishes (bounded) before the rest stops
    drain_at_exit(list(_live_backends))


def _forget_pools_in_child() -> None:
    # A forked child (a fork-started worker) inherits the registries, and
    # maybe a lock held mid-start by the thread that forked: its exit must not
    # try to shut down pools that belong to its parent.
    _live_backends.clear()
    _live_signals.clear()


os.register_at_fork(after_in_child=_forget_pools_in_child)

_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_python_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_python_exit)


def shutdown_unreferenced(state: PoolState, backend: Backend, hooks: list[Callable[[], None]]) -> None:
    # May run on any thread, inside the garbage collector: never wait here.
    state.close()
    backend.begin_shutdown()
    for hook in hooks:
        try:
            hook()
        except Exception:
            logger.exception("batchpool: a shutdown hook failed")


class WeakStats:
    """``stats()`` of a pool held weakly (for the dashboard, which must not keep it alive)."""

    def __init__(self, executor: BatchPoolExecutor) -> None:
        self._ref = weakref.ref(executor)

    def stats(self) -> Stats:
        executor = self._ref()
        if executor is None:
            raise ReferenceError("the pool was garbage collected")
        return executor.stats()




def register_backend(backend: Backend) -> None:
    """Stop this backend's work at interpreter exit (weakly held)."""
    _live_backends.add(backend)


def register_signals(handlers: SignalDrain) -> None:
    """Let interpreter exit wait for this signal drain (weakly held)."""
    _live_signals.add(handlers)
