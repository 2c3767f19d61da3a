"""Batch functions, per-key policy, priorities, backpressure, adaptive sizes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from batchpool import (
    BatchPoolExecutor,
    BatchResultError,
    Priority,
    QueueFullError,
    RetryPolicy,
    batched,
    job_info,
)
from tests import helpers

TIMEOUT = 60


def test_batched_function_is_called_once_per_batch(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=16, max_delay=0.05)
    fs = [ex.submit(helpers.batch_sizes, i) for i in range(100)]
    sizes = [f.result(TIMEOUT) for f in fs]
    assert max(sizes) <= 16 and max(sizes) == 16
    for f, size in zip(fs, sizes, strict=True):
        info = job_info(f)
        assert info is not None and info.batch_size == size


def test_batched_per_item_exceptions_reach_only_their_future(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=50, max_delay=0.05)
    fs = [ex.submit(helpers.double_all, x) for x in [1, -2, 3, -4, 5]]
    assert fs[0].result(TIMEOUT) == 2 and fs[2].result(TIMEOUT) == 6 and fs[4].result(TIMEOUT) == 10
    for f in (fs[1], fs[3]):
        with pytest.raises(ValueError, match="negative"):
            f.result(TIMEOUT)


def test_batched_wrong_length_fails_every_item_clearly(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=10, max_delay=0.05)
    fs = [ex.submit(helpers.wrong_length, i) for i in range(3)]
    for f in fs:
        with pytest.raises(BatchResultError, match=r"wrong_length returned a list of \d+ for a batch of \d+"):
            f.result(TIMEOUT)


def test_batched_raise_fails_the_batch_or_bisects_with_retries(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=32, max_delay=0.1)
    fs = [ex.submit(helpers.raise_if_poison, i) for i in range(10, 20)]
    for f in fs:
        with pytest.raises(RuntimeError, match="poison"):
            f.result(TIMEOUT)
    careful = ex.options(retry=RetryPolicy(max_attempts=1))
    fs = [careful.submit(helpers.raise_if_poison, i) for i in range(10, 20)]
    for i, f in zip(range(10, 20), fs, strict=True):
        if i == 13:
            with pytest.raises(RuntimeError, match="poison"):
                f.result(TIMEOUT)
        else:
            assert f.result(TIMEOUT) == i * 10


def test_batched_submit_needs_exactly_one_item(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool()
    with pytest.raises(TypeError, match="exactly one item"):
        ex.submit(helpers.double_all, 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="@batched"):
        batched(len)


def test_micro_batcher_from_many_request_threads() -> None:
    """The classic use: request threads submit single rows, one bulk call per batch."""
    calls: list[int] = []

    @batched
    def bulk_insert(rows: list[int]) -> list[int]:
        calls.append(len(rows))
        time.sleep(0.01)  # one round trip to the database
        return list(rows)

    with BatchPoolExecutor(max_workers=1, backend="thread", max_batch_size=100, max_delay=0.02) as ex:
        results: list[int] = []
        lock = threading.Lock()

        def request(i: int) -> None:
            value = ex.submit(bulk_insert, i).result(TIMEOUT)
            with lock:
                results.append(value)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
    assert sorted(results) == list(range(200))
    assert sum(calls) == 200 and len(calls) < 40


def test_per_key_policies_differ_in_one_pool(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=100, max_delay=0.05)
    ex.set_policy("small", max_batch_size=3, max_delay=0.05)
    small = [ex.options(key="small").submit(helpers.batch_sizes, i) for i in range(30)]
    big = [ex.options(key="big").submit(helpers.batch_sizes, i) for i in range(30)]
    assert max(f.result(TIMEOUT) for f in small) == 3
    assert max(f.result(TIMEOUT) for f in big) == 30


def test_realtime_overtakes_a_bulk_backlog(backend: str, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with BatchPoolExecutor(max_workers=2, backend=backend) as ex:
        bulk_view = ex.options(priority=Priority.BULK)
        bulk_view.submit(helpers.add_one, 0).result(TIMEOUT)  # timed: known to be quick
        blockers = [ex.submit(helpers.wait_for_path, gate) for _ in range(2)]
        bulk = [bulk_view.submit(helpers.add_one, i) for i in range(100_000)]
        urgent = ex.options(priority=Priority.REALTIME).submit(helpers.add_one, -1)
        open(gate, "w").close()
        assert urgent.result(TIMEOUT) == 0
        done = sum(f.done() for f in bulk)
        assert done < 50_000, done
        assert all(f.result(TIMEOUT) for f in blockers)
        assert sum(f.result(TIMEOUT) for f in bulk) == sum(range(1, 100_001))
        assert sum(f.result(TIMEOUT) for f in bulk) == sum(range(1, 100_001))


def test_aged_bulk_work_completes_under_a_steady_realtime_stream() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        rt = ex.options(priority=Priority.REALTIME)
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                futures = [rt.submit(time.sleep, 0.001) for _ in range(5)]
                for f in futures:
                    f.result(TIMEOUT)

        feeder = threading.Thread(target=stream)
        feeder.start()
        try:
            bulk = [ex.options(priority=Priority.BULK).submit(helpers.add_one, i) for i in range(20)]
            assert [f.result(TIMEOUT) for f in bulk] == list(range(1, 21))
        finally:
            stop.set()
            feeder.join(TIMEOUT)


def test_max_pending_raise(pool: Callable[..., BatchPoolExecutor]) -> None:
    gate = threading.Event()
    ex = BatchPoolExecutor(max_workers=1, backend="thread", max_pending=5, on_full="raise")
    try:
        blocker = ex.submit(gate.wait, TIMEOUT)
        helpers.wait_until(blocker.running, what="the blocker to run")
        queued = [ex.submit(helpers.add_one, i) for i in range(5)]
        with pytest.raises(QueueFullError, match="max_pending=5"):
            ex.submit(helpers.add_one, 99)
        gate.set()
        assert [f.result(TIMEOUT) for f in queued] == [1, 2, 3, 4, 5]
    finally:
        gate.set()
        ex.shutdown()


def test_max_pending_caller_runs_in_the_calling_thread() -> None:
    gate = threading.Event()
    with BatchPoolExecutor(max_workers=1, backend="thread", max_pending=2, on_full="caller_runs") as ex:
        blocker = ex.submit(gate.wait, TIMEOUT)
        helpers.wait_until(blocker.running, what="the blocker to run")
        [ex.submit(helpers.add_one, i) for i in range(2)]
        here = ex.submit(threading.get_ident)
        assert here.done() and here.result() == threading.get_ident()
        gate.set()


@pytest.mark.parametrize("backend_name", ["thread", "process"])
def test_max_pending_block_keeps_parent_memory_flat(backend_name: str) -> None:
    jobs = 2_000_000 if backend_name == "thread" else 400_000
    proc = psutil.Process()
    with BatchPoolExecutor(max_workers=2, backend=backend_name, max_pending=10_000) as ex:
        total = 0
        rss_at_start = None
        for i, value in enumerate(ex.map(helpers.add_one, range(jobs), timeout=300)):
            total += value
            if i == 50_000:
                rss_at_start = proc.memory_info().rss
        rss_at_end = proc.memory_info().rss
    assert total == sum(range(1, jobs + 1))
    assert rss_at_start is not None
    assert rss_at_end - rss_at_start < 30 * 2**20, (rss_at_start, rss_at_end)


def test_map_over_an_endless_generator(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_pending=100)
    results = ex.map(helpers.add_one, itertools.count(), timeout=TIMEOUT)
    assert list(itertools.islice(results, 1000)) == list(range(1, 1001))
    results.close()  # type: ignore[attr-defined]


def test_auto_batch_size_grows_for_tiny_items_and_shrinks_for_slow_ones(backend: str) -> None:
    with BatchPoolExecutor(max_workers=1, backend=backend, max_batch_size="auto", target_batch_time=0.02) as ex:
        for _ in range(3):  # let the estimate settle
            tiny = [ex.submit(helpers.batch_sizes, i) for i in range(3000)]
            [f.result(TIMEOUT) for f in tiny]
        assert max(f.result() for f in tiny) >= 100
        for _ in range(2):
            slow = [ex.submit(helpers.slow_items, 0.005) for _ in range(40)]
            [f.result(TIMEOUT) for f in slow]
        assert max(f.result() for f in slow) <= 8
