"""The runner: one outcome per job whatever the kind; a failure stays with its job."""

from __future__ import annotations

from typing import Any

from batchpool.errors import BatchResultError
from batchpool.jobs import BATCHED, BATCHED_BISECT, CALLS, CHUNKS, CHUNKS1
from batchpool.runner import identity, run_batch, run_one


def halves(items: list[int]) -> list[Any]:
    if 0 in items:
        raise ZeroDivisionError("a zero in the batch")
    return [1 / x for x in items]


def test_calls_and_chunks() -> None:
    assert run_batch(divmod, CALLS, [((7, 2), None), ((1, 0), None)], identity)[0] == (True, (3, 1))
    ok, exc = run_batch(divmod, CALLS, [((1, 0), None)], identity)[0]
    assert not ok and isinstance(exc, ZeroDivisionError)
    ok, chunk = run_one(pow, CHUNKS, ([(2, 3), (0, -1)],), None, identity)
    assert ok and chunk.values[0] == 8 and isinstance(chunk.errors[1], ZeroDivisionError)
    ok, chunk = run_one(abs, CHUNKS1, ([-1, -2],), None, identity)
    assert chunk.values == [1, 2] and not chunk.errors
    assert run_batch(int, CALLS, [(("7",), None), (("10",), {"base": 2})], identity)[1] == (True, 2)


def test_batched_calls_bisect_to_the_bad_item() -> None:
    calls = [((x,), None) for x in (1, 0, 2, 4)]
    plain = run_batch(halves, BATCHED, calls, identity)
    assert all(not ok for ok, _ in plain)  # no bisection: every item fails
    bisected = run_batch(halves, BATCHED_BISECT, calls, identity)
    assert [ok for ok, _ in bisected] == [True, False, True, True]
    assert bisected[3] == (True, 0.25)


def test_a_batched_function_returning_the_wrong_shape_fails_its_batch() -> None:
    outcomes = run_batch(lambda items: items[:1], BATCHED, [((1,), None), ((2,), None)], identity)
    assert all(not ok and isinstance(exc, BatchResultError) for ok, exc in outcomes)


def test_a_base_exception_is_the_job_s_outcome_not_the_runner_s() -> None:
    def exits() -> None:
        raise SystemExit(3)

    ((ok, exc),) = run_batch(exits, CALLS, [((), None)], identity)
    assert not ok and isinstance(exc, SystemExit)
