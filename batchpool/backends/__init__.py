"""Backends run batches: ``thread`` (in this process), ``process`` (worker processes), ``dask`` (a cluster).

Loaded lazily by name, so a pool of threads never imports the process machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["load_backend"]

_BACKENDS = {
    "thread": ("batchpool.backends.thread", "ThreadBackend"),
    "process": ("batchpool.backends.process", "ProcessBackend"),
    "dask": ("batchpool.backends.dask", "DaskBackend"),
}


def load_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    module, cls = _BACKENDS[name]
    backend: type[Backend] = getattr(importlib.import_module(module), cls)
    return backend
