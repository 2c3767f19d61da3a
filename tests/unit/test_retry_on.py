"""RetryPolicy(retry_on=...): a class, a tuple of classes, a predicate; nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from batchpool import JobTimeoutError, RetryPolicy, WorkerCrashedError


def test_a_class_is_taken_as_the_class_not_as_a_predicate() -> None:
    policy = RetryPolicy(retry_on=ConnectionError)
    assert policy.retryable(ConnectionError("down"))
    assert policy.retryable(ConnectionResetError("reset"))  # a subclass
    assert not policy.retryable(ValueError("bad input"))
    assert policy.retry_on == (ConnectionError,)


def test_a_tuple_of_classes() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, TimeoutError))
    assert policy.retryable(ConnectionError()) and not policy.retryable(KeyError())


def test_a_predicate() -> None:
    policy = RetryPolicy(retry_on=lambda exc: "again" in str(exc))
    assert policy.retryable(ValueError("try again")) and not policy.retryable(ValueError("no"))


def test_crashes_and_timeouts_stay_retryable_whatever_retry_on_says() -> None:
    policy = RetryPolicy(retry_on=KeyError)
    assert policy.retryable(JobTimeoutError(1.0)) and policy.retryable(WorkerCrashedError(1234, -9))
    assert not policy.retryable(TimeoutError())  # raised by the job itself: follows retry_on


@pytest.mark.parametrize("bad", [int, "ConnectionError", 3, (ConnectionError, "x"), (int,), None])
def test_anything_else_is_a_type_error_naming_retry_on(bad: Any) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=bad)
