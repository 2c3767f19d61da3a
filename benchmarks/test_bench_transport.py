"""Regression benchmarks of the transports (``pytest benchmarks/ --benchmark-only``).

Each round sends 16 arrays of 8 MB (distinct objects, so pickle's memo cannot
fold them) and waits for their sums: shared memory against pipes against
ProcessPoolExecutor, on warm pools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor

import pytest

from batchpool import BatchPoolExecutor
from batchpool.bench.workloads import array_sum

np = pytest.importorskip("numpy")

POOLS: dict[str, Callable[[], Executor]] = {
    "batchpool-shm": lambda: BatchPoolExecutor(2),
    "batchpool-pipe": lambda: BatchPoolExecutor(2, transport="pipe"),
    "ProcessPoolExecutor": lambda: ProcessPoolExecutor(2),
}


@pytest.fixture(params=sorted(POOLS))
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with POOLS[request.param]() as ex:
        ex.submit(array_sum, np.ones(10)).result(timeout=60)  # workers up, numpy imported
        yield ex


def test_numpy_payloads(benchmark, executor: Executor) -> None:  # type: ignore[no-untyped-def]
    distinct = [np.full(1_000_000, float(i)) for i in range(4)]
    arrays = [distinct[i % 4][:] for i in range(16)]
    sums = benchmark.pedantic(
        lambda: [f.result(timeout=120) for f in [executor.submit(array_sum, a) for a in arrays]],
        rounds=3,
        iterations=1,
    )
    assert sums == [float(a.sum()) for a in arrays]
