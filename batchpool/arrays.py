"""``ex.empty()`` and ``ex.zeros()``: the executor's face of shared arrays (``batchpool.shared``).

Imports nothing at module level beyond typing: ``batchpool.shared`` needs
numpy, an optional extra, so it loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["SharedArraysMixin"]


class SharedArraysMixin:
    """``empty`` and ``zeros`` of the executor (mixed into ``BatchPoolExecutor``)."""

    if TYPE_CHECKING:
        _backend: Backend

    def empty(self, shape: Any, dtype: Any = float, order: str = "C") -> Any:
        """A numpy array in the pool's shared memory (uninitialised), for jobs to read and write without a copy.

        Passing it, or a view or slice of it, to a job sends a handle, not the
        data, also to workers started later; what a worker writes, the parent
        sees (the explicit way to share writes). Results of computations on it
        are ordinary arrays. It stays valid after ``shutdown()`` (from then on
        it travels by value). With the thread backend, a plain array. Details:
        ``batchpool.shared``.

        Raises:
            ImportError: numpy is not installed (``pip install batchpool[numpy]``).
            TypeError, ValueError: a bad ``shape``, ``dtype`` or ``order``.
            RuntimeError: the pool is shut down.

        Example:
            >>> import numpy as np
            >>> from batchpool import BatchPoolExecutor
            >>> from concurrent.futures import wait
            >>> with BatchPoolExecutor(max_workers=2) as ex:
            ...     out = ex.empty(4)
            ...     _ = wait([ex.submit(np.copyto, out[i:i + 1], i) for i in range(4)], timeout=30)
            >>> out  # filled by the workers
            SharedArray([0., 1., 2., 3.])
        """
        from .shared import empty  # numpy is an extra: imported on use

        return empty(self._backend, shape, dtype, order)

    def zeros(self, shape: Any, dtype: Any = float, order: str = "C") -> Any:
        """Like ``empty``, filled with zeros.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.zeros((2, 2), dtype="int32").tolist()
            [[0, 0], [0, 0]]
        """
        from .shared import zeros

        return zeros(self._backend, shape, dtype, order)
