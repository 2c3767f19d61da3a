"""Per-key limits: the token bucket, ramps, concurrency counters, and the lanes that obey them (fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool.batching import Batcher
from batchpool.batching.limits import BURST_SECONDS, RAMP_START, UNLIMITED, KeyLimit, TokenBucket, linear
from batchpool.control import ramp_steps
from batchpool.jobs import BATCHED, Job
from batchpool.options import JobOptions
from batchpool.state import PoolState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def starts_in_any_window(starts: list[tuple[float, int]], window: float = 1.0) -> int:
    """Most starts inside any closed window of ``window`` seconds."""
    worst = 0
    for t0, _ in starts:
        worst = max(worst, sum(n for t, n in starts if t0 <= t <= t0 + window))
    return worst


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1.0, max_value=500.0),
    ramp=st.sampled_from([0.0, 0.5, 3.0]),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.2), st.integers(min_value=1, max_value=50)),
        min_size=1,
        max_size=150,
    ),
)
def test_bucket_never_exceeds_rate_plus_burst_in_any_second(
    rate: float, ramp: float, steps: list[tuple[float, int]]
) -> None:
    now = 0.0
    bucket = TokenBucket(rate, now=now, ramp=ramp)
    starts: list[tuple[float, int]] = []
    for dt, want in steps:
        now += dt
        n = min(want, bucket.allowance(now))
        if n:
            bucket.take(n, now)
            starts.append((now, n))
    burst = max(1.0, rate * BURST_SECONDS)
    assert starts_in_any_window(starts) <= rate + burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=5.0, max_value=200.0), ramp=st.floats(min_value=1.0, max_value=10.0))
def test_ramp_starts_low_and_reaches_the_rate(rate: float, ramp: float) -> None:
    bucket = TokenBucket(rate, now=0.0, ramp=ramp)
    assert bucket.rate_at(0.0) == pytest.approx(rate * RAMP_START)
    assert bucket.rate_at(ramp / 2) == pytest.approx(rate * (RAMP_START + 1) / 2)
    assert bucket.rate_at(ramp + 1) == rate
    # Greedy starts over the first half of the ramp: bounded by the area under the line + burst.
    now, started = 0.0, 0
    while now < ramp / 2:
        n = bucket.allowance(now)
        bucket.take(n, now)
        started += n
        now += 0.01
    area = (rate * RAMP_START + bucket.rate_at(ramp / 2)) / 2 * (ramp / 2)
    assert started <= area + bucket.capacity(0.0) + 1


def test_linear_and_ramp_steps() -> None:
    assert linear(0, 10, 0.0, 0.0, 0.0) == 10
    assert ramp_steps(2, 2, 5.0) == []
    assert ramp_steps(1, 3, 1.0) == [(0.5, 2), (1.0, 3)]


def test_bucket_validates_its_rate() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            TokenBucket(bad, now=0.0)


def test_concurrency_counts_calls_for_batched_and_jobs_otherwise() -> None:
    limit = KeyLimit(max_concurrency=2)
    assert limit.allowance(0.0, batched=True) > 1000  # a call of any size: one slot
    holders = limit.started(5, 0.0, batched=True)
    assert limit.running == 1 and len(holders) == 5
    for h in holders[:4]:
        h.release()
    assert limit.running == 1  # the call ends with its last item
    holders[4].release()
    assert limit.running == 0


# -- the lanes obey the limits ---------------------------------------------------------


def make(clock: Clock, **kw: object) -> Batcher:
    return Batcher(max_batch_size=64, max_delay=0.0, clock=clock, state=PoolState(4), **kw)  # type: ignore[arg-type]


def job(key: str = "k", kind: int = 0) -> Job:
    return Job(abs, (1,), None, kind, JobOptions(key=key))


def test_a_lane_at_its_concurrency_limit_is_skipped_and_others_go_on() -> None:
    clock = Clock()
    b = make(clock)
    b._estimates[("builtins", "abs", 0)] = (1e-6, 64)  # timed already: batches may hold several
    b.set_limit("k", max_concurrency=2)
    for _ in range(5):
        b.put(job("k"))
    b.put(job("other"))
    first = b.take(max_jobs=64, idle_workers=1)
    assert first is not None and len(first.jobs) == 2  # at most the remaining concurrency
    other = b.take(max_jobs=64, idle_workers=1)
    assert other is not None and other.jobs[0].opts.key == "other"
    assert b.take(max_jobs=64, idle_workers=1) is None  # "k" is at its limit
    b.job_done(first.jobs[0])
    again = b.take(max_jobs=64, idle_workers=1)
    assert again is not None and len(again.jobs) == 1
    assert not b.holding.keys() - {j.id for j in [first.jobs[1], *again.jobs]}


def test_slots_come_back_when_jobs_return_to_the_lanes() -> None:
    clock = Clock()
    b = make(clock)
    b.set_limit("k", max_concurrency=1)
    b.put(job())
    b.put(job())
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and b.key_limits()["k"][0] == 1
    b.put_back(batch.jobs)  # never started
    assert b.key_limits()["k"][0] == 0
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None
    b.put_delayed(batch.jobs[0], 1.0)  # a retry waits for its backoff without a slot
    assert b.key_limits()["k"][0] == 0 and not b.holding


def test_rate_limit_in_the_lanes_with_a_fake_clock() -> None:
    clock = Clock()
    b = make(clock)
    b._estimates[("builtins", "abs", 0)] = (1e-6, 64)
    b.set_limit("k", rate_limit=100)
    for _ in range(200):
        b.put(job())
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 10  # the burst: 0.1 s worth
    assert b.take(max_jobs=64, idle_workers=1) is None
    deadline = b.next_deadline()
    assert deadline is not None and 100.0 < deadline <= 100.011  # the next token
    clock.now += 0.05
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 5


def test_batched_rate_counts_items() -> None:
    clock = Clock()
    b = make(clock)
    b.set_limit("k", rate_limit=50, max_concurrency=1)  # burst: 5 items
    for _ in range(20):
        b.put(job(kind=BATCHED))
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 5
    assert b.key_limits()["k"][0] == 1  # one call


def test_set_limit_keeps_what_is_not_given_and_unlimited_lifts() -> None:
    clock = Clock()
    b = make(clock)
    b.set_limit("k", max_concurrency=3, rate_limit=10)
    b.set_limit("k", max_concurrency=5)
    assert b.key_limits()["k"][1:3] == (5, 10.0)
    b.set_limit("k", rate_limit=UNLIMITED)
    assert b.key_limits()["k"][1:3] == (5, None)
    b.set_limit("k", max_concurrency=UNLIMITED)
    assert "k" not in b.key_limits()
    with pytest.raises(ValueError, match="ramp"):
        b.set_limit("k", ramp=2.0)


def test_a_new_rate_ends_a_ramp_and_ramp_alone_restarts_it() -> None:
    clock = Clock()
    b = make(clock)
    b.set_limit("k", rate_limit=100, ramp=10.0)
    assert b.key_limits()["k"][2] == pytest.approx(10.0)
    clock.now += 5
    assert b.key_limits()["k"][2] == pytest.approx(55.0)
    b.set_limit("k", max_concurrency=2)  # another limit: the ramp goes on
    assert b.key_limits()["k"][2] == pytest.approx(55.0)
    b.set_limit("k", rate_limit=100)  # a new rate: no ramp
    assert b.key_limits()["k"][2] == 100.0
    b.set_limit("k", ramp=4.0)  # ramp the current rate again
    clock.now += 2
    assert b.key_limits()["k"][2] == pytest.approx(55.0)


def test_a_refused_set_limit_changes_nothing_and_a_lifted_limit_keeps_counting() -> None:
    clock = Clock()
    b = make(clock)
    b.set_limit("k", max_concurrency=1)
    with pytest.raises(ValueError, match="ramp"):
        b.set_limit("k", max_concurrency=5, ramp=1.0)
    assert b.key_limits()["k"][1] == 1
    b.put(job())
    b.put(job())
    running = b.take(max_jobs=64, idle_workers=1)
    assert running is not None
    b.set_limit("k", max_concurrency=UNLIMITED)  # lifted while a job runs
    b.set_limit("k", max_concurrency=1)  # and set again: the running job still counts
    assert b.key_limits()["k"][0] == 1 and b.take(max_jobs=64, idle_workers=1) is None
    b.job_done(running.jobs[0])
    assert b.take(max_jobs=64, idle_workers=1) is not None
