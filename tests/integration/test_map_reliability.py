"""map with a time limit or a retry policy stays chunked; limits and retries act per item."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpool import BatchPoolExecutor, JobTimeoutError, RetryPolicy
from tests import helpers

TIMEOUT = 30


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_stats_count_the_items_of_a_map_not_its_chunks(backend: str) -> None:
    with BatchPoolExecutor(max_workers=2, backend=backend) as ex:
        assert list(ex.map(abs, range(-5000, 5000))) == [abs(i) for i in range(-5000, 5000)]
        stats = ex.stats()
        assert stats.submitted == stats.completed == 10_000
        assert stats.batches < 1000  # chunks and batches are not items
        with pytest.raises(ValueError):
            list(ex.map(helpers.raise_value_error, ["a", "b"]))
        assert ex.stats().failed >= 1


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_map_with_a_retry_policy_stays_chunked_and_retries_items(backend: str, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, backoff=0.0)
    prefix = str(tmp_path / "seen")
    with BatchPoolExecutor(max_workers=2, backend=backend, retry=policy) as ex:
        out = list(ex.map(helpers.fail_once_at, [prefix] * 2000, range(2000), [100] * 2000))
        assert out == list(range(2000))  # items 0, 100, ... failed once and were retried
        stats = ex.stats()
        assert stats.completed == 2000 and stats.failed == 0
        assert stats.batches < 200, f"{stats.batches} batches: items travelled one by one"


def test_map_items_past_their_time_limit_fail_alone_and_the_map_stays_chunked() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        timed = ex.options(timeout=0.5)
        results = timed.map(helpers.slow_at, range(3000), [1234] * 3000, [30.0] * 3000)
        got = []
        with pytest.raises(JobTimeoutError):
            for value in results:
                got.append(value)
        assert got == list(range(1234))  # every item before the slow one came back
        assert ex.stats().batches < 300
        # The worker that stopped the item is still the pool's: nothing was killed.
        assert ex.stats().worker_restarts == 0
        assert list(timed.map(abs, range(-100, 0))) == list(range(100, 0, -1))


def test_a_map_with_timeout_and_retry_is_not_item_by_item_slow() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        view = ex.options(timeout=30, retry=RetryPolicy(max_attempts=3))
        assert list(view.map(abs, range(-20_000, 0))) == list(range(20_000, 0, -1))
        assert ex.stats().batches < 500


def test_jobs_of_one_batch_never_share_an_argument_object(tmp_path: Path) -> None:
    shared: list[int] = []
    with BatchPoolExecutor(max_workers=1) as ex:
        started, release = str(tmp_path / "started"), str(tmp_path / "release")
        gate = ex.submit(helpers.gate_job, started, release, 30)
        helpers.wait_until(lambda: Path(started).exists(), what="the gate to start")
        futures = [ex.submit(helpers.append_and_len, shared) for _ in range(20)]  # one batch behind the gate
        Path(release).touch()
        gate.result(TIMEOUT)
        # As with the standard pool: each job got its own copy of the list.
        assert [f.result(TIMEOUT) for f in futures] == [1] * 20
    assert shared == []
