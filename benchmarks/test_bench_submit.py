"""Regression benchmarks (``pytest benchmarks/ --benchmark-only``), not part of the test run.

Each round submits a burst of tiny jobs one by one and waits for all results,
so pytest-benchmark tracks the per-burst time of every pool side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from batchpool import BatchPoolExecutor
from tests.helpers import add_one

JOBS = 20_000

POOLS: dict[str, Callable[[], Executor]] = {
    "batchpool-process": lambda: BatchPoolExecutor(2),
    "batchpool-thread": lambda: BatchPoolExecutor(2, backend="thread"),
    "ThreadPoolExecutor": lambda: ThreadPoolExecutor(2),
    "ProcessPoolExecutor": lambda: ProcessPoolExecutor(2),
}


@pytest.fixture(params=sorted(POOLS))
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    with POOLS[request.param]() as ex:
        ex.submit(add_one, 0).result(timeout=60)
        yield ex


def _burst(ex: Executor) -> int:
    futures = [ex.submit(add_one, i) for i in range(JOBS)]
    return sum(f.result(timeout=120) for f in futures)


def test_submit_tiny_jobs(benchmark, executor: Executor) -> None:  # type: ignore[no-untyped-def]
    total = benchmark.pedantic(_burst, args=(executor,), rounds=3, iterations=1)
    assert total == sum(range(1, JOBS + 1))


def test_map_tiny_items(benchmark, executor: Executor) -> None:  # type: ignore[no-untyped-def]
    result = benchmark.pedantic(
        lambda: sum(
            executor.map(add_one, range(JOBS * 5), chunksize=1000 if isinstance(executor, ProcessPoolExecutor) else 1)
        ),
        rounds=3,
        iterations=1,
    )
    assert result == sum(range(1, JOBS * 5 + 1))
