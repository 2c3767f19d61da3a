"""The Batcher on its own: no threads, no processes, a fake clock."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool.batching import Batcher
from batchpool.jobs import Job
from batchpool.ledger import Ledger
from batchpool.metrics import Metrics
from batchpool.options import JobOptions, Priority


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(fn: object = abs, clock: Clock | None = None) -> Job:
    j = Job(fn, (1,), None)  # type: ignore[arg-type]
    if clock is not None:
        j.t_submit = clock.now
    return j


def test_free_worker_takes_what_is_waiting() -> None:
    b = Batcher(max_batch_size=4, max_delay=0)
    b.record(("builtins", "abs", 0), 10, 0.00001)  # known to be quick
    for _ in range(6):
        b.put(job())
    first = b.take(max_jobs=100, idle_workers=1)
    second = b.take(max_jobs=100, idle_workers=1)
    assert first is not None and second is not None
    assert (len(first.jobs), len(second.jobs)) == (4, 2)
    assert b.take(max_jobs=100, idle_workers=1) is None
    assert b.pending == 0


def test_an_untimed_callable_goes_one_job_at_a_time() -> None:
    b = Batcher(max_batch_size=64, max_delay=0)
    for _ in range(10):
        b.put(job())
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 1
    assert b.take(max_jobs=64, idle_workers=1, prefetch=True) is None


def test_slow_jobs_are_cut_to_the_target_batch_time() -> None:
    b = Batcher(max_batch_size=64, max_delay=0, target_batch_time=0.01)
    b.record(("builtins", "abs", 0), 1, 0.004)
    for _ in range(10):
        b.put(job())
    batch = b.take(max_jobs=64, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 2
    # Quick enough to wait behind a running batch:
    assert b.take(max_jobs=64, idle_workers=1, prefetch=True) is not None


def test_slow_jobs_are_prefetched_only_from_a_deep_lane() -> None:
    b = Batcher(max_batch_size=64, max_delay=0, target_batch_time=0.01)
    b.record(("builtins", "abs", 0), 1, 0.05)
    for _ in range(3):
        b.put(job())
    # Three jobs, two workers: a prefetched one could leave the other worker idle.
    assert b.take(max_jobs=64, idle_workers=1, prefetch=True, workers=2) is None
    batch = b.take(max_jobs=64, idle_workers=1, workers=2)
    assert batch is not None and len(batch.jobs) == 1
    for _ in range(10):
        b.put(job())
    batch = b.take(max_jobs=64, idle_workers=1, prefetch=True, workers=2)
    assert batch is not None and len(batch.jobs) == 1


def test_work_is_split_between_idle_workers() -> None:
    b = Batcher(max_batch_size=64, max_delay=0)
    b.record(("builtins", "abs", 0), 64, 64e-7)
    for _ in range(30):
        b.put(job())
    batch = b.take(max_jobs=64, idle_workers=3)
    assert batch is not None and len(batch.jobs) == 10


ABS = ("builtins", "abs", 0)


def _sizes(b: Batcher, clock: Clock, seconds_per_job: float, rounds: int) -> list[int]:
    """Cut a batch, report it back as taking ``seconds_per_job`` per job, and again."""
    sizes = []
    for _ in range(rounds):
        batch = b.take(max_jobs=1000, idle_workers=1)
        assert batch is not None
        sizes.append(len(batch.jobs))
        clock.now += seconds_per_job * len(batch.jobs)
        b.record(batch.timing_key, len(batch.jobs), seconds_per_job * len(batch.jobs))
    return sizes


def test_quick_warm_up_calls_do_not_make_an_oversized_batch_of_slow_calls() -> None:
    clock = Clock()
    b = Batcher(max_batch_size=1000, max_delay=0, target_batch_time=0.005, clock=clock)
    b.record(ABS, 1, 1e-6)  # one quick warm-up call: 5000 of them would fit the target
    for _ in range(200):
        b.put(job(clock=clock))
    # The first batch after it holds two jobs; they take 10 ms each, and from
    # then on each batch holds one (10 ms is over the 5 ms target).
    assert _sizes(b, clock, 0.010, 4) == [2, 1, 1, 1]
    assert b.estimate(ABS) == (0.010, 2)


def test_batches_grow_by_doubling_as_they_are_measured() -> None:
    clock = Clock()
    b = Batcher(max_batch_size=1000, max_delay=0, target_batch_time=0.005, clock=clock)
    for _ in range(500):
        b.put(job(clock=clock))
    assert _sizes(b, clock, 1e-6, 9) == [1, 2, 4, 8, 16, 32, 64, 128, 245]  # the rest: 500 - 255


def test_a_slower_sample_replaces_the_estimate_a_quicker_one_is_averaged() -> None:
    b = Batcher(max_batch_size=100, max_delay=0)
    b.record(ABS, 4, 0.004)
    assert b.estimate(ABS) == (0.001, 4)
    b.record(ABS, 8, 0.012)  # 1.5 ms a job: slower, believed at once; 8 jobs measured
    assert b.estimate(ABS) == (0.0015, 8)
    b.record(ABS, 2, 0.001)  # quicker: a weighted step towards it
    estimate = b.estimate(ABS)
    assert estimate is not None and 0.001 < estimate[0] < 0.0015 and estimate[1] == 8
    b.record(ABS, 1, 0.1)  # over twice the estimate: a new regime, measured from one job
    assert b.estimate(ABS) == (0.1, 1)
    assert b.estimate(("builtins", "len", 0)) is None


def test_linger_until_max_delay_then_flush() -> None:
    clock = Clock()
    b = Batcher(max_batch_size=10, max_delay=0.5, clock=clock)
    for _ in range(3):
        b.put(job(clock=clock))
    assert b.take(max_jobs=10, idle_workers=1) is None
    assert b.next_deadline() == clock.now + 0.5
    clock.now += 0.5
    batch = b.take(max_jobs=10, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 3 and batch.reason == "delay"


def test_a_full_lane_does_not_linger() -> None:
    clock = Clock()
    b = Batcher(max_batch_size=3, max_delay=60, clock=clock)
    for _ in range(4):
        b.put(job(clock=clock))
    batch = b.take(max_jobs=10, idle_workers=1)
    assert batch is not None and len(batch.jobs) == 3 and batch.reason == "size"
    assert b.take(max_jobs=10, idle_workers=1) is None


def test_close_flushes_and_refuses() -> None:
    clock = Clock()
    b = Batcher(max_batch_size=10, max_delay=60, clock=clock)
    b.put(job(clock=clock))
    b.state.close("closed for the day")
    batch = b.take(max_jobs=10, idle_workers=1)
    assert batch is not None and batch.reason == "shutdown"
    try:
        b.put(job())
    except RuntimeError as exc:
        assert "closed for the day" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("put after close must raise")


def test_a_batch_holds_one_callable() -> None:
    b = Batcher(max_batch_size=10, max_delay=0)
    for fn in (abs, abs, str, abs):
        b.record(("builtins", fn.__qualname__, 0), 10, 1e-6)
        b.put(job(fn))
    batches = []
    while (batch := b.take(max_jobs=10, idle_workers=1)) is not None:
        batches.append(batch)
    assert sorted(len(x.jobs) for x in batches) == [1, 3]
    assert all(len({j.fn for j in x.jobs}) == 1 for x in batches)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from([abs, str, repr])),
            st.tuples(st.just("take"), st.integers(1, 5)),
            st.tuples(st.just("tick"), st.floats(0, 1)),
            st.tuples(st.just("cancel"), st.integers(0, 1000)),
        ),
        max_size=80,
    ),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.2]),
)
def test_every_job_is_dispatched_once_or_cancelled(ops: list, size: int, delay: float) -> None:  # type: ignore[type-arg]
    clock = Clock()
    b = Batcher(max_batch_size=size, max_delay=delay, clock=clock)
    ledger = Ledger(b, Metrics())
    b.record(("builtins", "abs", 0), 1, 1e-7)
    submitted: list[Job] = []
    taken: list[Job] = []
    for op, arg in ops:
        if op == "put":
            submitted.append(job(arg, clock))
            b.put(submitted[-1])
        elif op == "take":
            batch = b.take(max_jobs=10, idle_workers=arg)
            if batch is not None:
                assert 1 <= len(batch.jobs) <= size
                ledger.claim(batch)  # drops the cancelled ones, as a backend does
                taken.extend(batch.jobs)
        elif op == "cancel":
            if submitted:
                submitted[arg % len(submitted)].future.cancel()
        else:
            clock.now += arg
    b.state.close("done")
    while (batch := b.take(max_jobs=10, idle_workers=1)) is not None:
        ledger.claim(batch)
        taken.extend(batch.jobs)
    ran = sorted(j.id for j in taken)
    assert len(ran) == len(set(ran)), "a job was dispatched twice"
    cancelled = {j.id for j in submitted if j.future.cancelled()}
    assert set(ran) | cancelled == {j.id for j in submitted}, "a job was lost"
    assert not set(ran) & cancelled, "a cancelled job was dispatched"
    assert b.pending == 0


# -- puts without the lock (the process backend's) ---------------------------------


def lock_free(**kwargs: object) -> Batcher:
    b = Batcher(max_batch_size=8, max_delay=0, **kwargs)  # type: ignore[arg-type]
    b.lock_free_put = True
    b.record(("builtins", "abs", 0), 10, 0.00001)
    return b


def test_lock_free_puts_are_counted_and_taken_in_arrival_order() -> None:
    b = lock_free()
    jobs = [job() for _ in range(5)]
    for j in jobs:
        assert b.put(j)
    assert b._inbox  # not in the lanes yet: no lock was taken
    assert b.pending == 5
    assert b.submitted == 5
    assert sum(b.depths().values()) == 5
    batch = b.take(max_jobs=100, idle_workers=1)
    assert batch is not None and batch.jobs == jobs
    assert b.pending == 0


def test_runs_of_one_callable_and_options_land_in_their_lanes_in_order() -> None:
    # The inbox is moved into the lanes a run at a time (one key lookup per
    # run): a change of callable, options or priority in the middle of a run
    # must still send each job to its own lane, in arrival order.
    b = lock_free()
    normal, urgent = JobOptions(), JobOptions(priority=Priority.REALTIME)
    plan = [(abs, normal), (abs, normal), (round, normal), (abs, urgent), (abs, normal)]
    jobs = [Job(fn, (1,), None, opts=opts) for fn, opts in plan]  # type: ignore[arg-type]
    for j in jobs:
        assert b.put(j)
    assert b.depths() == {"NORMAL/abs": 3, "NORMAL/round": 1, "REALTIME/abs": 1}  # counted in the inbox
    assert len(b._inbox) == 5  # ... not moved: the main thread asks (stats()), and a Ctrl-C there could lose a job
    with b._lock:
        b._absorb_locked()  # as the consumer's next look moves them
    assert not b._inbox and b.depths() == {"NORMAL/abs": 3, "NORMAL/round": 1, "REALTIME/abs": 1}
    assert b.submitted == 5 and b.pending == 5
    assert b.sizer.last_realtime == jobs[3].t_submit
    taken = []
    while (batch := b.take(max_jobs=100, idle_workers=1)) is not None:
        taken.append(batch.jobs)
    assert taken[0] == [jobs[3]]  # REALTIME first
    assert [jobs[0], jobs[1], jobs[4]] in taken and [jobs[2]] in taken


def test_key_limits_count_jobs_still_in_the_inbox_without_moving_them() -> None:
    b = lock_free()
    b.set_limit(abs, max_concurrency=1)
    for _ in range(2):
        assert b.put(job())
    assert b.put(Job(round, (1.5,), None))  # type: ignore[arg-type]  # not limited: not listed
    assert b.key_limits()[abs][4] == 2 and round not in b.key_limits()
    assert len(b._inbox) == 3


def test_a_lock_free_put_after_the_close_is_refused_and_left_out() -> None:
    b = lock_free()
    b.state.close()
    with pytest.raises(RuntimeError):
        b.put(job())
    assert b.pending == 0 and b.drain() == []


def test_a_lock_free_put_the_consumer_took_before_the_close_runs() -> None:
    # The consumer moves the job into its lane between the append and the
    # put's second look at the state, which then says closed: the job was
    # accepted before the close, and a closing pool runs what it holds.
    b = lock_free()
    late = job()

    class Racing(deque):  # type: ignore[type-arg]
        def append(self, item: Job) -> None:
            super().append(item)
            with b._lock:
                b._absorb_locked()  # the consumer looks (under the lock): the job goes to its lane
            b.state.close()

    b._inbox = Racing()
    assert b.put(late) is True
    batch = b.take(max_jobs=100, idle_workers=1)
    assert batch is not None and batch.jobs == [late]


def test_a_bound_on_pending_jobs_takes_the_lock_path() -> None:
    b = lock_free(max_pending=2)
    assert b.put(job()) and b.put(job())
    assert not b._inbox
    assert b.put(job()) is False  # full: refused at once, not queued
    assert b.pending == 2
