"""The ledger: every Future settled exactly once, retries and requeues, observers, aborts."""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpool.batching import Batcher
from batchpool.errors import JobTimeoutError, WorkerCrashedError
from batchpool.jobs import CHUNKS1, Batch, ChunkResult, Job
from batchpool.ledger import Ledger
from batchpool.metrics import Metrics
from batchpool.options import JobOptions
from batchpool.retry import CircuitBreaker, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[Ledger, Batcher, Clock]:
    clock = Clock()
    batcher = Batcher(max_batch_size=100, max_delay=0.0, clock=clock)
    return Ledger(batcher, Metrics()), batcher, clock


def job(opts: JobOptions | None = None, kind: int = 0, args: tuple[Any, ...] = (1,)) -> Job:
    return Job(abs, args, None, kind, opts or JobOptions())


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def job_running(self, jobs: Any) -> None:
        self.events.extend(("running", j.id) for j in jobs)

    def job_done(self, job: Job, value: Any) -> None:
        self.events.append(("done", value))

    def jobs_done(self, outcomes: Any) -> None:
        self.events.append(("done many", [value for _, value in outcomes]))

    def job_failed(self, job: Job, exc: BaseException) -> None:
        self.events.append(("failed", type(exc).__name__))

    def job_retrying(self, job: Job, exc: BaseException) -> None:
        self.events.append(("retrying", job.attempt))

    def job_cancelled(self, job: Job) -> None:
        self.events.append(("cancelled", job.id))


def test_the_first_settler_wins_and_a_late_attempt_is_dropped() -> None:
    ledger, _, _ = setup()
    j = job()
    assert ledger.claim(Batch([j], "free worker", None))
    assert ledger.succeed(j, 1)
    assert not ledger.succeed(j, 2)  # no InvalidStateError, no second value
    ledger.fail(j, ValueError("late"))
    assert j.future.result(0) == 1
    retried = job(JobOptions(retry=RetryPolicy(max_attempts=3, jitter=False)))
    ledger.claim(Batch([retried], "free worker", None))
    ledger.fail(retried, JobTimeoutError(1.0), attempt=1)  # a watchdog gave up on attempt 1
    assert retried.attempt == 2 and not retried.future.done()
    assert not ledger.succeed(retried, "late", attempt=1)  # the abandoned attempt's result
    assert ledger.succeed(retried, "second", attempt=2)
    assert retried.future.result(0) == "second"


def test_retries_wait_in_the_lanes_and_run_out() -> None:
    ledger, batcher, clock = setup()
    j = job(JobOptions(retry=RetryPolicy(max_attempts=2, backoff=1.0, jitter=False)))
    ledger.claim(Batch([j], "free worker", None))
    ledger.fail(j, WorkerCrashedError(1, -9))
    assert batcher.take(max_jobs=10, idle_workers=1) is None  # backoff not over
    clock.now = 1.0
    batch = batcher.take(max_jobs=10, idle_workers=1)
    assert batch is not None and batch.jobs == [j] and j.attempt == 2
    ledger.fail(j, WorkerCrashedError(1, -9))
    with pytest.raises(WorkerCrashedError):
        j.future.result(0)


def test_a_job_that_never_started_costs_no_attempt() -> None:
    ledger, batcher, _ = setup()
    j = job(JobOptions(retry=RetryPolicy(max_attempts=1)))
    ledger.claim(Batch([j], "free worker", None))
    ledger.fail(j, WorkerCrashedError(1, -9), charge=False)
    again = batcher.take(max_jobs=10, idle_workers=1)
    assert again is not None and again.jobs == [j] and j.attempt == 1 and not j.future.done()


def test_claim_drops_cancelled_jobs_and_frees_their_breaker_trial() -> None:
    ledger, _, _ = setup()
    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown=1.0, clock=lambda: now[0])
    breaker.record(False)
    now[0] = 2.0
    assert breaker.allow()  # this job is the half-open trial
    trial, other = job(), job()
    trial.breaker = breaker
    trial.future.cancel()
    batch = Batch([trial, other], "free worker", None)
    assert ledger.claim(batch) and batch.jobs == [other]
    assert breaker.allow(), "the cancelled trial gave its slot back"


def test_observers_hear_every_transition_and_a_failing_one_is_only_logged(caplog: Any) -> None:
    ledger, _, _ = setup()
    recorder = Recorder()

    class Broken:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any) -> None:
                raise RuntimeError("observer bug")

            return fail

    ledger.observers.extend([Broken(), recorder])  # type: ignore[list-item]
    ok, bad, gone = job(), job(JobOptions(retry=RetryPolicy(max_attempts=2, jitter=False))), job()
    gone.future.cancel()
    with caplog.at_level(logging.ERROR, logger="batchpool"):
        ledger.claim(Batch([ok, bad, gone], "free worker", None))
        ledger.succeed(ok, "v")
        ledger.fail(bad, ValueError("x"))
        ledger.fail(bad, ValueError("x"))
    kinds = [event for event, _ in recorder.events]
    assert kinds == ["cancelled", "running", "running", "done", "retrying", "failed"]
    assert "observer bug" in caplog.text


def test_a_batch_of_outcomes_tells_its_successes_in_one_call() -> None:
    ledger, _, _ = setup()
    recorder = Recorder()
    ledger.observers.append(recorder)
    jobs = [job(), job(), job()]
    ledger.claim(Batch(jobs, "free worker", None))
    ledger.outcomes(jobs, [(True, 1), (False, ValueError("x")), (True, 3)])
    assert recorder.events[3:] == [("failed", "ValueError"), ("done many", [1, 3])]
    assert [j.future.result(timeout=1) for j in (jobs[0], jobs[2])] == [1, 3]


def test_abort_fails_everything_dispatched_and_queued() -> None:
    ledger, batcher, _ = setup()
    running, queued, finished = job(), job(), job()
    ledger.claim(Batch([running, finished], "free worker", None))
    ledger.succeed(finished, 0)
    batcher.put(queued)
    ledger.abort(RuntimeError("stop"))
    for j in (running, queued):
        with pytest.raises(RuntimeError, match="stop"):
            j.future.result(0)
    assert finished.future.result(0) == 0 and ledger.in_flight() == 0


def test_cancel_queued_jobs() -> None:
    ledger, batcher, _ = setup()
    jobs = [job() for _ in range(3)]
    for j in jobs:
        batcher.put(j)
    ledger.cancel(batcher.cancel_queued())
    for j in jobs:
        with pytest.raises(CancelledError):
            j.future.result(0)


@given(st.lists(st.booleans(), min_size=1, max_size=30), st.integers(1, 4))
def test_a_chunk_s_failed_items_are_retried_and_merged_back(fails: list[bool], attempts: int) -> None:
    """Item i fails on its first ``attempts - 1`` runs when ``fails[i]``; the merged chunk is whole."""
    ledger, batcher, clock = setup()
    items = list(range(len(fails)))
    chunk_job = job(JobOptions(retry=RetryPolicy(max_attempts=attempts, backoff=0.0)), CHUNKS1, (items,))
    runs: dict[int, int] = {}

    def run(chunk: Job) -> ChunkResult:
        values: list[Any] = []
        errors: dict[int, Any] = {}
        for k, item in enumerate(chunk.args[0]):
            runs[item] = runs.get(item, 0) + 1
            if fails[item] and runs[item] < attempts:
                errors[k] = ConnectionError(item)
                values.append(None)
            else:
                values.append(item * 10)
        return ChunkResult(values, errors)

    ledger.claim(Batch([chunk_job], "free worker", None))
    ledger.succeed(chunk_job, run(chunk_job))
    while (batch := batcher.take(max_jobs=100, idle_workers=1)) is not None:
        ledger.claim(batch)
        for j in batch.jobs:
            ledger.succeed(j, run(j))
        clock.now += 1
    result = chunk_job.future.result(0)
    assert result.values == [item * 10 for item in items] and result.errors == {}
    assert all(runs[i] == (attempts if fails[i] and attempts > 1 else 1) for i in items)
