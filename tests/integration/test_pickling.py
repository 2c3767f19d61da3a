"""Serialization failures in both directions fail only the job concerned."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator

import pytest

from batchpool import BatchPoolExecutor, RemoteError, TransportError
from tests import helpers

TIMEOUT = 30


@pytest.fixture
def ex() -> Iterator[BatchPoolExecutor]:
    with BatchPoolExecutor(max_workers=2, max_batch_size=64, max_delay=0.05) as pool:
        yield pool


def _neighbours(ex: BatchPoolExecutor) -> list:  # type: ignore[type-arg]
    return [ex.submit(helpers.add_one, i) for i in range(10)]


def _check(neighbours: list) -> None:  # type: ignore[type-arg]
    assert [f.result(TIMEOUT) for f in neighbours] == list(range(1, 11))


def test_lambdas_and_closures_travel_by_value(ex: BatchPoolExecutor) -> None:
    offset = 10
    assert ex.submit(lambda x: x + offset, 1).result(TIMEOUT) == 11
    assert list(ex.map(lambda x: x * offset, range(3), timeout=TIMEOUT)) == [0, 10, 20]

    class Local:
        value = 7

    assert ex.submit(helpers.echo, Local()).result(TIMEOUT).value == 7


def test_an_argument_that_cannot_be_pickled_fails_alone(ex: BatchPoolExecutor) -> None:
    before = _neighbours(ex)
    bad = ex.submit(helpers.echo, threading.Lock())
    bad2 = ex.submit(helpers.add_one, helpers.ErrorAtPickle())  # type: ignore[arg-type]
    after = _neighbours(ex)
    with pytest.raises(TypeError):
        bad.result(TIMEOUT)
    with pytest.raises(pickle.PicklingError, match="Error in pickle"):
        bad2.result(TIMEOUT)
    _check(before)
    _check(after)


def test_an_argument_that_cannot_be_unpickled_in_the_worker_fails_alone(ex: BatchPoolExecutor) -> None:
    before = _neighbours(ex)
    bad = ex.submit(helpers.echo, helpers.ErrorAtUnpickle())
    after = _neighbours(ex)
    with pytest.raises(TransportError) as info:
        bad.result(TIMEOUT)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    _check(before)
    _check(after)


def test_a_result_that_cannot_be_pickled_fails_alone(ex: BatchPoolExecutor) -> None:
    before = _neighbours(ex)
    bad = ex.submit(helpers.return_error_at_pickle)
    after = _neighbours(ex)
    with pytest.raises(pickle.PicklingError):
        bad.result(TIMEOUT)
    _check(before)
    _check(after)


def test_a_result_that_cannot_be_unpickled_in_the_parent_fails_clearly(ex: BatchPoolExecutor) -> None:
    bad = ex.submit(helpers.return_error_at_unpickle)
    with pytest.raises(TransportError, match="could not be unpickled in the parent"):
        bad.result(TIMEOUT)
    _check(_neighbours(ex))


def test_an_exception_that_cannot_be_pickled_arrives_as_remote_error(ex: BatchPoolExecutor) -> None:
    bad = ex.submit(helpers.raise_unpicklable)
    with pytest.raises(RemoteError, match="Unpicklable: holds a lock") as info:
        bad.result(TIMEOUT)
    assert info.value.type_name == "tests.helpers.Unpicklable"
    assert "raise Unpicklable()" in str(info.value.__cause__)
    _check(_neighbours(ex))


def test_a_callable_that_cannot_be_pickled_fails_its_jobs_only(ex: BatchPoolExecutor) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    bad = [ex.submit(uses_lock, i) for i in range(3)]
    for fut in bad:
        with pytest.raises(TypeError):
            fut.result(TIMEOUT)
    _check(_neighbours(ex))


def test_system_exit_in_a_job_is_that_jobs_exception(ex: BatchPoolExecutor) -> None:
    with pytest.raises(SystemExit):
        ex.submit(helpers.sys_exit).result(TIMEOUT)
    _check(_neighbours(ex))
