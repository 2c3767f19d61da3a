"""Every Future a pool hands out is a LightFuture (no Condition until someone waits)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from batchpool import BatchPoolExecutor, job_info
from batchpool.futures import LightFuture
from tests import helpers

TIMEOUT = 30


def test_submit_and_map_futures_are_light(pool: Callable[..., BatchPoolExecutor]) -> None:
    ex = pool()
    fut = ex.submit(helpers.add_one, 1)
    assert type(fut) is LightFuture
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(TIMEOUT) == 2
    info = job_info(fut)  # stored on the Future's __dict__
    assert info is not None and info.batch_size >= 1
    done, _ = concurrent.futures.wait([ex.submit(helpers.add_one, 2)], timeout=TIMEOUT)
    assert [f.result(0) for f in done] == [3]
    assert list(ex.map(helpers.add_one, range(3), timeout=TIMEOUT)) == [1, 2, 3]
