"""The concurrent.futures contract, run against every executor in conftest."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import BrokenExecutor, Executor
from typing import Any

import pytest

from tests import helpers

TIMEOUT = 30


def test_submit_returns_a_real_future(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    fut = ex.submit(pow, 2, 8)
    assert isinstance(fut, futures.Future)
    assert fut.result(TIMEOUT) == 256


def test_submit_keyword_arguments_named_like_parameters(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    assert ex.submit(helpers.mul, 2, y=8).result(TIMEOUT) == 16
    assert ex.submit(helpers.capture, 1, self=2, fn=3).result(TIMEOUT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=helpers.capture, arg=1)  # type: ignore[call-arg]


def test_map_is_ordered_and_takes_several_iterables(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    assert list(ex.map(pow, range(10), range(10), timeout=TIMEOUT)) == list(map(pow, range(10), range(10)))
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (1, 3, 6, 40, 50):
        got = list(ex.map(pow, range(40), range(40), chunksize=chunksize, timeout=TIMEOUT))
        assert got == expected, chunksize
    long = list(ex.map(helpers.add_one, range(5000), timeout=TIMEOUT))
    assert long == list(range(1, 5001))


def test_map_rejects_a_bad_chunksize(make: Callable[..., Executor], kind: str) -> None:
    if kind == "stdlib-thread":
        pytest.skip("ThreadPoolExecutor ignores chunksize")
    ex = make(max_workers=1)
    with pytest.raises(ValueError):
        list(ex.map(pow, range(4), range(4), chunksize=0))


def test_map_raises_at_the_failing_item(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], timeout=TIMEOUT)
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_times_out(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    results = []
    with pytest.raises(futures.TimeoutError):
        for value in ex.map(helpers.sleep_and_return, [0, 0, 5], [1, 2, 3], timeout=1.5):
            results.append(value)
    assert results == [1, 2]


def test_map_iterator_keeps_no_reference_to_results(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    for obj in ex.map(helpers.make_payload, range(10), timeout=TIMEOUT):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_wait_and_as_completed(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    fs = [ex.submit(helpers.add_one, i) for i in range(50)]
    done, not_done = futures.wait(fs, timeout=TIMEOUT)
    assert not not_done and len(done) == 50
    assert sorted(f.result() for f in futures.as_completed(fs, timeout=TIMEOUT)) == list(range(1, 51))
    slow = ex.submit(helpers.sleep_and_return, 0.2, "slow")
    first = futures.wait([slow, ex.submit(pow, 1, 1)], timeout=TIMEOUT, return_when=futures.FIRST_COMPLETED)
    assert first.done


def test_done_callback_runs_once_with_the_future(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    seen: list[futures.Future[Any]] = []
    called = threading.Event()
    fut = ex.submit(helpers.add_one, 1)

    def callback(f: futures.Future[Any]) -> None:
        seen.append(f)
        called.set()

    fut.add_done_callback(callback)
    assert called.wait(TIMEOUT)
    assert seen == [fut] and fut.result() == 2


def test_exceptions_keep_their_type_and_the_worker_traceback(make: Callable[..., Executor], kind: str) -> None:
    ex = make(max_workers=2)
    fut = ex.submit(helpers.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(TIMEOUT)
    if kind.endswith("process"):
        cause = info.value.__cause__
        assert cause is not None
        assert "raise ValueError(message)" in str(cause)


def test_cancel_works_on_queued_jobs_only(make: Callable[..., Executor], gate: Any) -> None:
    ex = make(max_workers=1)
    blocker = ex.submit(helpers.wait_for, gate)
    queued = [ex.submit(helpers.add_one, i) for i in range(20)]
    try:
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
    finally:
        gate.set()
    assert blocker.result(TIMEOUT) is True
    assert not blocker.cancel()
    for fut in queued[:-1]:
        if not fut.cancelled():
            assert fut.result(TIMEOUT) > 0
    with pytest.raises(futures.CancelledError):
        queued[-1].result(TIMEOUT)


def test_submit_after_shutdown_raises(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)


def test_shutdown_cancel_futures(make: Callable[..., Executor], gate: Any) -> None:
    ex = make(max_workers=1)
    blocker = ex.submit(helpers.wait_for, gate)
    queued = [ex.submit(helpers.add_one, i) for i in range(50)]
    releaser = threading.Timer(0.3, gate.set)
    releaser.start()
    ex.shutdown(wait=True, cancel_futures=True)
    releaser.join()
    # The blocker itself may not have been dispatched yet: then it is cancelled too.
    assert blocker.cancelled() or blocker.result(TIMEOUT)
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) > 20
    assert all(f.done() and f.exception() is None for f in queued if not f.cancelled())


def test_shutdown_without_wait_still_finishes_the_work(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    fs = [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(20)]
    ex.shutdown(wait=False)
    assert [f.result(TIMEOUT) for f in fs] == list(range(20))


def test_shutdown_inside_a_done_callback_does_not_deadlock(make: Callable[..., Executor], kind: str) -> None:
    if kind == "stdlib-process":
        pytest.skip("ProcessPoolExecutor deadlocks here (its manager thread joins itself)")
    ex = make(max_workers=2)
    returned = threading.Event()

    def callback(_: futures.Future[Any]) -> None:
        ex.shutdown(wait=True)
        returned.set()

    ex.submit(helpers.add_one, 1).add_done_callback(callback)
    assert returned.wait(TIMEOUT)


def test_context_manager_waits_for_the_work(make: Callable[..., Executor]) -> None:
    with make(max_workers=2) as ex:
        fs = [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(10)]
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(10))


def test_run_in_executor(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(ex, helpers.add_one, i) for i in range(20))))

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == list(range(1, 21))


def test_failing_initializer_breaks_the_pool(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2, initializer=helpers.init_fail)
    try:
        fut = ex.submit(helpers.get_state)
    except BrokenExecutor:
        pass
    else:
        with pytest.raises(BrokenExecutor):
            fut.result(TIMEOUT)
    with pytest.raises(BrokenExecutor):
        ex.submit(helpers.get_state)


def test_initializer_runs_before_jobs(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2, initializer=helpers.init_set, initargs=("initialized",))
    assert [f.result(TIMEOUT) for f in [ex.submit(helpers.get_state) for _ in range(4)]] == ["initialized"] * 4


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_must_be_positive(kind: str, bad: int) -> None:
    from tests.conformance.conftest import FACTORIES

    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        FACTORIES[kind](max_workers=bad)


def test_no_stale_references_after_a_job(make: Callable[..., Executor]) -> None:
    ex = make(max_workers=2)
    obj = helpers.Payload()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    assert ex.submit(obj.method).result(TIMEOUT) == "ran"
    del obj
    gc.collect()
    assert collected.wait(TIMEOUT) and ref() is None
