"""How jobs are grouped into batches, observed through job_info()."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batchpool import BatchPoolExecutor, job_info
from tests import helpers

TIMEOUT = 30


def _infos(futures: list) -> list:  # type: ignore[type-arg]
    infos = [job_info(f) for f in futures]
    assert all(info is not None for info in infos)
    return infos


def test_a_batch_never_exceeds_max_batch_size(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=8, max_delay=0.05)
    fs = [ex.submit(helpers.add_one, i) for i in range(200)]
    assert [f.result(TIMEOUT) for f in fs] == list(range(1, 201))
    sizes = {info.batch_id: info.batch_size for info in _infos(fs)}
    assert max(sizes.values()) <= 8
    assert max(sizes.values()) == 8, "jobs submitted together should fill batches"
    assert sum(sizes.values()) == 200  # every job in exactly one batch


def test_max_delay_holds_a_partial_batch_then_flushes_it(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=100, max_delay=0.3)
    fs = [ex.submit(helpers.add_one, i) for i in range(5)]
    assert [f.result(TIMEOUT) for f in fs] == [1, 2, 3, 4, 5]
    infos = _infos(fs)
    assert len({i.batch_id for i in infos}) == 1, "the five jobs should travel together"
    assert {i.flush_reason for i in infos} == {"delay"}
    # The batch may not leave before its oldest job has waited max_delay.
    assert infos[0].queue_wait >= 0.3 - 0.01


def test_a_full_lane_leaves_without_waiting_for_the_delay(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=10, max_delay=3600)
    fs = [ex.submit(helpers.add_one, i) for i in range(10)]
    assert [f.result(TIMEOUT) for f in fs] == list(range(1, 11))
    assert {i.flush_reason for i in _infos(fs)} == {"size"}


def test_shutdown_flushes_every_lane_at_once(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_batch_size=10, max_delay=3600)
    fs = [ex.submit(helpers.add_one, i) for i in range(25)]  # 2.5 batches
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result(0) for f in fs] == list(range(1, 26))
    reasons = {i.flush_reason for i in _infos(fs)}
    assert "shutdown" in reasons


def test_jobs_collect_while_workers_are_busy(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = str(tmp_path / "gate")
    with BatchPoolExecutor(max_workers=1, backend=backend) as ex:
        # Time the callable first, so the pool knows its jobs are quick.
        for f in [ex.submit(helpers.add_one, i) for i in range(50)]:
            f.result(TIMEOUT)
        blocker = ex.submit(helpers.wait_for_path, gate)
        helpers.wait_until(blocker.running, what="the blocker to start")
        fs = [ex.submit(helpers.add_one, i) for i in range(300)]
        open(gate, "w").close()  # the worker frees up only now: the jobs have collected
        assert [f.result(TIMEOUT) for f in fs] == list(range(1, 301))
        assert blocker.result(TIMEOUT) is True
    sizes = {i.batch_id: i.batch_size for i in _infos(fs)}
    assert max(sizes.values()) > 50, f"batch sizes {sorted(sizes.values())}"


def test_slow_jobs_spread_over_every_worker(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_workers=2)
    ex.submit(helpers.sleep_and_return, 0.05, None).result(TIMEOUT)  # timed: slow
    fs = [ex.submit(helpers.sleep_and_return, 0.05, i) for i in range(8)]
    assert [f.result(TIMEOUT) for f in fs] == list(range(8))
    assert max(i.batch_size for i in _infos(fs)) == 1


def test_a_batch_carries_its_callable_once() -> None:
    fn = helpers.CountingCallable()
    helpers.PICKLE_COUNT["n"] = 0
    with BatchPoolExecutor(max_workers=1, max_batch_size=50, max_delay=3600) as ex:
        fs = [ex.submit(fn, i) for i in range(100)]
        assert [f.result(TIMEOUT) for f in fs] == [2 * i for i in range(100)]
    batches = {i.batch_id for i in _infos(fs)}
    assert len(batches) == 2
    assert helpers.PICKLE_COUNT["n"] == len(batches)


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_over_a_long_input_in_chunks(pool: Callable[..., BatchPoolExecutor], chunksize: int) -> None:
    ex = pool()
    out = list(ex.map(helpers.mul, range(20_000), range(20_000), chunksize=chunksize, timeout=TIMEOUT))
    assert out == [i * i for i in range(20_000)]


def test_map_with_buffersize_reads_its_input_lazily(pool: Callable[..., BatchPoolExecutor]) -> None:
    import itertools

    ex = pool()
    consumed = 0

    def numbers():  # type: ignore[no-untyped-def]
        nonlocal consumed
        for i in itertools.count():
            consumed += 1
            yield i

    results = ex.map(helpers.add_one, numbers(), buffersize=10, timeout=TIMEOUT)
    first = [next(results) for _ in range(100)]
    assert first == list(range(1, 101))
    assert consumed <= 100 + 10 + 1
    results.close()


def test_map_chunk_reports_the_failing_item_after_the_good_ones(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool()
    it = ex.map(divmod, [1] * 10, [1, 1, 1, 0, 1, 1, 1, 1, 1, 1], chunksize=5, timeout=TIMEOUT)
    assert [next(it) for _ in range(3)] == [(1, 0)] * 3
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_chunks_run_each_item_exactly_once(pool: Callable[..., BatchPoolExecutor], tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "runs"
    ex = pool()
    items = list(range(2000))
    it = ex.map(helpers.count_run, [str(log)] * len(items), items, timeout=TIMEOUT)
    assert list(it) == items
    single = list(ex.map(helpers.add_one, items, timeout=TIMEOUT))  # one iterable: bare items
    assert single == [i + 1 for i in items]
    assert sorted(int(x) for x in log.read_text().split()) == items
