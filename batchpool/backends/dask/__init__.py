"""Dask backend: batches as tasks on a Dask cluster (``BatchPoolExecutor(backend="dask")``).

``backend`` holds the manager thread, ``outcomes`` what it does with tasks
that ended or ran over time (crashes, time limits), ``cluster`` the client,
the cluster a pool starts for itself and the scattered arguments, and
``remote`` what runs on a Dask worker. Importing this package imports ``distributed`` (an
ImportError naming ``pip install 'batchpool[dask]'`` when it is missing);
nothing else in batchpool does.
"""

from __future__ import annotations

from .backend import DaskBackend as DaskBackend

__all__ = ["DaskBackend"]
