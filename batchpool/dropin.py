"""``ThreadPoolExecutor`` and ``ProcessPoolExecutor``: batchpool under the standard names.

Imports ``executor`` (and the standard pools' modules, for their types). Each
class takes its standard counterpart's positional signature, plus
batchpool's keyword options, and refuses (TypeError, naming it) an option that
does not apply to it. Each is a BatchPoolExecutor *and* an instance of its
standard counterpart, so ``asyncio``'s ``loop.set_default_executor`` and any
library that checks the type accept it.

Why the standard class is a base and yet does nothing: BatchPoolExecutor
comes first in the MRO, so its ``__init__``, ``submit``, ``map`` and
``shutdown`` win; the standard ``__init__`` never runs, so no work queue,
weakref callback or thread of the standard pool exists. The standard methods
batchpool does not define (``_adjust_thread_count``, ``_spawn_process``...)
are shadowed below by ones that raise, so nothing can reach the standard
machinery by accident. (This module is not ``compat``: ``executor`` imports
``compat`` for its StdlibCompat mixin, and these classes need ``executor``.)
"""

from __future__ import annotations

import concurrent.futures.process as _std_process
import concurrent.futures.thread as _std_thread
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from .executor import BatchPoolExecutor
from .state import Phase

if TYPE_CHECKING:
    from .backends.base import Backend
    from .state import PoolState

__all__ = ["ProcessPoolExecutor", "ThreadPoolExecutor"]

#: Options of BatchPoolExecutor that choose what the class name already chose.
_THREAD_ONLY = ("thread_name_prefix",)
_PROCESS_ONLY = ("mp_context", "transport", "max_tasks_per_child")


def _refuse(cls: str, options: dict[str, Any], names: Iterable[str]) -> None:
    for name in ("backend", *names):
        if name in options:
            why = "the class chooses the backend" if name == "backend" else "it does not apply to this pool"
            raise TypeError(f"{cls}() got an unexpected keyword argument {name!r} ({why})")


def _private(name: str) -> Callable[..., NoReturn]:
    def unreachable(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__}.{name} is the standard pool's machinery, which batchpool replaces")

    unreachable.__name__ = name
    return unreachable


class _CallQueue:
    """What code written for ProcessPoolExecutor does with its private ``_call_queue``.

    ``join_thread()`` after shutdown waits until the pool has stopped (here:
    its manager thread, which stops the workers), as the standard one waits
    for its queue's feeder thread. It holds the pool's state and backend,
    never the executor, so it does not keep an unreferenced pool alive.
    """

    def __init__(self, state: PoolState, backend: Backend) -> None:
        self._state = state
        self._backend = backend

    def join_thread(self) -> None:
        # Same rule as multiprocessing.Queue.join_thread: only once closed.
        assert self._state.phase >= Phase.CLOSING, "join_thread() before the pool was shut down"
        self._backend.join(None)

    def close(self) -> None:
        """Nothing to close: the pool's channels close when it stops."""

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: ``shutdown(wait=False)`` never blocks here."""


class ThreadPoolExecutor(BatchPoolExecutor, _std_thread.ThreadPoolExecutor):  # type: ignore[misc, override]
    """batchpool's thread pool under the standard name: swap the import, keep the code.

    ``ThreadPoolExecutor(max_workers=None, thread_name_prefix='',
    initializer=None, initargs=(), **options)``: the standard signature, and
    every keyword option of BatchPoolExecutor but ``backend``, ``mp_context``,
    ``transport`` and ``max_tasks_per_child`` (TypeError naming it).

    Example:
        >>> import concurrent.futures
        >>> from batchpool import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(2, max_batch_size=8) as ex:
        ...     isinstance(ex, concurrent.futures.ThreadPoolExecutor), ex.submit(len, "abc").result()
        (True, 3)
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **options: Any,
    ) -> None:
        _refuse("ThreadPoolExecutor", options, _PROCESS_ONLY)
        if thread_name_prefix == "":
            # The standard default name, which logs and tests match on.
            thread_name_prefix = f"ThreadPoolExecutor-{_std_thread.ThreadPoolExecutor._counter()}"  # type: ignore[attr-defined]
        super().__init__(
            max_workers,
            None,
            initializer,
            initargs,
            thread_name_prefix=thread_name_prefix,
            backend="thread",
            **options,
        )

    _adjust_thread_count = _private("_adjust_thread_count")
    _initializer_failed = _private("_initializer_failed")


class ProcessPoolExecutor(BatchPoolExecutor, _std_process.ProcessPoolExecutor):  # type: ignore[misc, override]
    """batchpool's process pool under the standard name: swap the import, keep the code.

    ``ProcessPoolExecutor(max_workers=None, mp_context=None,
    initializer=None, initargs=(), *, max_tasks_per_child=None, **options)``:
    the standard signature, and every keyword option of BatchPoolExecutor but
    ``backend`` and ``thread_name_prefix`` (TypeError naming it). The default
    start method is ``forkserver`` (``spawn`` where there is none).

    Example:
        >>> import concurrent.futures
        >>> from batchpool import ProcessPoolExecutor
        >>> ex = ProcessPoolExecutor(2, max_delay=0.001)
        >>> isinstance(ex, concurrent.futures.ProcessPoolExecutor)
        True
        >>> ex.shutdown()
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        **options: Any,
    ) -> None:
        _refuse("ProcessPoolExecutor", options, _THREAD_ONLY)
        if isinstance(mp_context, str):  # the stdlib would fail later, on an attribute
            raise TypeError(f"mp_context must be a multiprocessing context, got the string {mp_context!r}")
        super().__init__(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child=max_tasks_per_child,
            backend="process",
            **options,
        )

    @property
    def _call_queue(self) -> _CallQueue:
        return _CallQueue(self._state, self._backend)

    _start_executor_manager_thread = _private("_start_executor_manager_thread")
    _adjust_process_count = _private("_adjust_process_count")
    _launch_processes = _private("_launch_processes")
    _spawn_process = _private("_spawn_process")
