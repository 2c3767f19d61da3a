"""Job functions of the benchmark workloads.

Module level, so every pool (and every start method) can import them by name.
Imports nothing from batchpool but ``jobs.batched``.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from ..jobs import batched


def tiny(x: int) -> int:
    """The smallest useful job."""
    return x + 1


def cpu(n: int) -> int:
    """About n loop iterations of pure-Python arithmetic (holds the GIL)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def array_sum(arr: Any) -> float:
    """Sum of a numpy array (the payload workload's job)."""
    return float(arr.sum())


@batched
def bulk_square(items: list[int]) -> list[int]:
    """A batch function with a fixed cost per call, like one bulk database round trip."""
    time.sleep(0.0002)
    return [x * x for x in items]


def square_with_overhead(x: int) -> int:
    """The same work one item at a time: the fixed cost is paid per item."""
    time.sleep(0.0002)
    return x * x


def warm_up(seconds: float, modules: tuple[str, ...] = ()) -> None:
    """Import ``modules`` and hold the worker ``seconds`` (so that every worker gets one)."""
    for name in modules:
        importlib.import_module(name)
    bulk_work(seconds)


def bulk_work(seconds: float) -> None:
    """A BULK job of the latency workload."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def probe(sent: float) -> float:
    """A REALTIME probe of the latency workload: returns when it ran."""
    return time.perf_counter() - sent


def nap(seconds: float) -> None:
    """A job that waits ``seconds`` without using the CPU (the Dask backend's sleep target)."""
    time.sleep(seconds)
