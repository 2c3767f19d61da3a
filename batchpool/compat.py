"""What code written for the standard pools reaches for beyond their public API.

Imports ``state`` and ``options``. The private attributes below are read by
real programs and by CPython's own ``test_concurrent_futures`` (``_max_workers``,
``_processes``, ``_threads``, ``_broken``...): views of batchpool's state with
the stdlib's shapes, never a second source of truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .state import Phase, PoolState

if TYPE_CHECKING:
    from .backends.base import Backend
    from .options import PoolConfig

__all__ = ["StdlibCompat"]


class StdlibCompat:
    """Read-only views of the standard pools' private attributes (mixed into the executor)."""

    _config: PoolConfig
    _state: PoolState
    _backend: Backend

    @property
    def _max_workers(self) -> int:
        return self._state.target_workers

    @property
    def _mp_context(self) -> Any:
        return self._config.mp_context

    @property
    def _broken(self) -> str | bool:
        error = self._state.error if self._state.phase == Phase.BROKEN else None
        return str(error) if error is not None else False

    @property
    def _processes(self) -> dict[Any, Any]:
        return self._backend.compat_workers() if self._config.backend == "process" else {}

    @property
    def _executor_manager_thread(self) -> Any:
        return getattr(self._backend, "manager_thread", None)

    @property
    def _threads(self) -> set[Any]:
        return set(self._backend.compat_workers().values()) if self._config.backend == "thread" else set()
