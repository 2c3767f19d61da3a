"""Every Future a pool hands out is a LightFuture (no Condition until someone waits), and it is its job."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from batchpool import BatchPoolExecutor, job_info
from batchpool.futures import _STRIPES, LightFuture
from tests import helpers

TIMEOUT = 30


def test_submit_and_map_futures_are_light(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool()
    fut = ex.submit(helpers.add_one, 1)
    assert isinstance(fut, LightFuture) and isinstance(fut, concurrent.futures.Future)
    assert fut.result(TIMEOUT) == 2
    assert "__dict__" not in dir(fut) or not fut.__dict__  # where it went is in slots, not a dict
    info = job_info(fut)
    assert info is not None and info.batch_size >= 1
    done, _ = concurrent.futures.wait([ex.submit(helpers.add_one, 2)], timeout=TIMEOUT)
    assert [f.result(0) for f in done] == [3]
    assert list(ex.map(helpers.add_one, range(3), timeout=TIMEOUT)) == [1, 2, 3]


def test_a_finished_future_does_not_keep_its_arguments_alive(pool: Callable[..., BatchPoolExecutor]) -> None:
    # The stdlib Future never holds the call; batchpool's Future is its job,
    # which must let go of the call once the job is over.
    ex = pool()
    payload = helpers.Payload()
    alive = weakref.ref(payload)
    fut = ex.submit(helpers.echo, [payload])  # a list: the thread backend returns the same object
    fut.result(TIMEOUT)
    del payload, fut  # the result (a copy on the process backend, the list itself on threads) goes too
    # The batch's end is bookkept just after its outcomes: poll for it, bounded.
    helpers.wait_until(lambda: gc.collect() >= 0 and alive() is None, TIMEOUT, "the argument to be freed")


def test_a_held_future_lets_go_of_its_arguments(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool()
    payload = helpers.Payload()
    alive = weakref.ref(payload)
    fut = ex.submit(id, payload)
    assert isinstance(fut.result(TIMEOUT), int)
    del payload
    helpers.wait_until(lambda: gc.collect() >= 0 and alive() is None, TIMEOUT, "the argument to be freed")
    assert fut.done() and job_info(fut) is not None  # the Future and where it went stay


def test_a_cancelled_future_lets_go_of_its_arguments(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool(max_workers=1)
    ex.pause()
    payload = helpers.Payload()
    alive = weakref.ref(payload)
    fut = ex.submit(id, payload)
    assert fut.cancel()
    del payload
    ex.resume()  # the lanes drop it as they reach it
    assert ex.submit(abs, -1).result(TIMEOUT) == 1
    helpers.wait_until(lambda: gc.collect() >= 0 and alive() is None, TIMEOUT, "the argument to be freed")
    assert fut.cancelled()


@pytest.mark.stress
@pytest.mark.timeout(120, method="thread")  # SIGALRM is the test's own
def test_ctrl_c_anywhere_in_the_main_threads_future_calls_leaves_no_lock_held() -> None:
    # SIGALRM every 50 us raises KeyboardInterrupt wherever the main thread
    # is in result() waits, cancel() and add_done_callback(). Afterwards
    # every stripe must be free (a worker settling a Future of a stripe the
    # main thread kept would hang) and the pool must still run jobs.
    with BatchPoolExecutor(1, backend="thread") as ex:
        with helpers.interrupt_storm() as storm:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                f, g = ex.submit(abs, -1), ex.submit(abs, -2)
                try:
                    storm.arm()
                    f.add_done_callback(lambda fut: None)
                    g.cancel()
                    f.result(timeout=30)
                    storm.disarm()
                except KeyboardInterrupt:
                    pass
        free: list[bool] = []

        def check() -> None:
            for stripe in _STRIPES:
                got = stripe.acquire(timeout=5)
                free.append(got)
                if got:
                    stripe.release()

        checker = threading.Thread(target=check)
        checker.start()
        checker.join(60)
        assert free == [True] * len(_STRIPES)
        assert ex.submit(abs, -3).result(timeout=30) == 3
    assert storm.interrupted > 0
