"""Idle threads parked on their own locks, and the direct hand-off of a job to one (``batching.parking``)."""

from __future__ import annotations

import threading
import time
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any

import pytest

from batchpool.batching import Batcher
from batchpool.batching.lane import lane_key
from batchpool.batching.parking import Parking
from batchpool.jobs import Batch, Job
from batchpool.state import Phase
from tests.helpers import interrupt_storm, wait_until

TIMEOUT = 30.0


def job(fn: object = abs) -> Job:
    return Job(fn, (1,), None)  # type: ignore[arg-type]


class _Taker:
    """One thread in ``take_wait`` on a Batcher; ``batch`` is what it got."""

    def __init__(self, b: Batcher) -> None:
        self.b = b
        self.stop = False
        self.batches: list[Batch | None] = []
        self.thread = threading.Thread(target=self._take, daemon=True)
        self.thread.start()

    def _take(self) -> None:
        self.batches.append(self.b.take_wait(stop=lambda: self.stop))

    def join(self) -> Batch | None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "take_wait never returned"
        return self.batches[0]


# -- Parking on its own --------------------------------------------------------------------


def test_a_hand_off_reaches_the_parked_thread_and_a_notify_wakes_it_empty_handed() -> None:
    lock = threading.Lock()
    parking = Parking(lock)
    got: list[Any] = []

    def park() -> None:
        with lock:
            got.append(parking.wait(TIMEOUT))
            got.append(parking.wait(TIMEOUT))

    t = threading.Thread(target=park, daemon=True)
    t.start()
    wait_until(lambda: len(parking.parked) == 1, what="the thread to park")
    assert parking.hand_off("a job")  # type: ignore[arg-type]
    wait_until(lambda: len(got) == 1 and len(parking.parked) == 1, what="the thread to park again")
    with lock:
        parking.notify()
    t.join(TIMEOUT)
    assert got == ["a job", None]
    assert parking.handed == 1 and not parking.parked


def test_a_timed_wait_that_ends_leaves_the_parking() -> None:
    lock = threading.Lock()
    parking = Parking(lock)
    with lock:
        assert parking.wait(0.001) is None
    assert not parking.parked
    assert not parking.hand_off("a job")  # type: ignore[arg-type]  # nobody to take it


def test_a_hand_off_racing_a_timeout_is_not_lost() -> None:
    # The thread's timed wait ends just as a hand-off pops it: it is no
    # longer in the parking, so the release is certain and the job is its.
    lock = threading.Lock()
    parking = Parking(lock)

    class RacingQueue(SimpleQueue):  # type: ignore[type-arg]
        """A spot whose timed get times out while a hand-off pops it."""

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            if timeout is not None:
                assert parking.hand_off("raced job")  # type: ignore[arg-type]
                raise Empty
            return super().get(block, timeout)  # the blocking get after it takes that job

    parking._local.spot = RacingQueue()
    with lock:
        assert parking.wait(5.0) == "raced job"
    assert not parking.parked and parking.handed == 1


@pytest.mark.timeout(60, method="thread")  # SIGALRM is the test's own
def test_wake_ups_interrupted_by_a_signal_in_the_waker_lose_no_thread() -> None:
    # SIGALRM every 50 us raises KeyboardInterrupt in the main thread while it
    # hands off jobs and notifies, as a Ctrl-C in a submit would. A pop and its
    # put are one call into C, so no spot is left popped with nothing put in
    # it: afterwards one notify_all still wakes every thread.
    lock = threading.Lock()
    parking = Parking(lock)
    stop = False
    taken: list[Any] = []

    def park() -> None:
        with lock:
            while not stop:
                job = parking.wait(None)
                if job is not None:
                    taken.append(job)

    threads = [threading.Thread(target=park, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    handed = 0
    with interrupt_storm() as storm:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                storm.arm()
                for _ in range(20):
                    handed += parking.hand_off("a job")  # type: ignore[arg-type]
                    with lock:
                        parking.notify()
                storm.disarm()
            except KeyboardInterrupt:
                pass
    assert storm.interrupted > 0 and handed > 0
    with lock:
        stop = True
        parking.notify_all()
    end = time.monotonic() + 10.0
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread was left asleep"
    # Counted hand-offs reached threads: none was counted and lost (the
    # loop's own count may miss one whose hand_off returned into the interrupt).
    assert len(taken) == parking.handed >= handed


def test_a_thread_that_parks_after_a_lock_free_put_does_not_wait() -> None:
    # The put went into the inbox after the thread looked at it, and found no
    # thread parked to wake: the thread sees it once registered, and returns.
    lock = threading.Lock()
    inbox: deque[Any] = deque(["a job put without the lock"])
    parking = Parking(lock, inbox)
    with lock:
        assert parking.wait(None) is None  # with no timeout: it would hang if it waited
    assert not parking.parked


@pytest.mark.parametrize("miscount", ["counted, not queued", "queued, not counted"])
def test_a_miscounted_queue_does_not_keep_a_closing_pool_waiting_or_leave_a_job(miscount: str) -> None:
    # A Ctrl-C between a change to a lane and to the count (the main thread,
    # under the lock) leaves them apart; closing counts again from the lanes.
    b = Batcher(max_batch_size=8, max_delay=0)
    j = job()
    with b._lock:
        if miscount == "counted, not queued":
            b._pending += 1
        else:
            b._table.lane(lane_key(j), j).jobs.append(j)
    taker = _Taker(b)
    wait_until(lambda: b.waiters == 1, what="the thread to park")
    b.state.close()
    got = taker.join()
    if miscount == "counted, not queued":
        assert got is None
    else:  # the job left in its lane is found and taken, not left behind
        assert got is not None and got.jobs == [j]
    assert b.pending == 0


# -- the Batcher's hand-off -----------------------------------------------------------------


def test_a_job_put_while_a_thread_is_idle_goes_straight_to_it() -> None:
    b = Batcher(max_batch_size=8, max_delay=0)
    taker = _Taker(b)
    wait_until(lambda: b.waiters == 1, what="the thread to park")
    j = job()
    assert b.put(j)
    assert b.submitted == 1 and b.pending == 0  # counted at once, and never in a lane
    batch = taker.join()
    assert batch is not None and batch.jobs == [j] and batch.reason == "free worker" and batch.fresh
    assert b.depths() == {}


@pytest.mark.parametrize("setup", ["linger", "limit", "paused", "retry waiting"])
def test_no_hand_off_when_it_could_change_what_runs_first(setup: str) -> None:
    b = Batcher(max_batch_size=8, max_delay=30.0 if setup == "linger" else 0)
    if setup == "limit":
        b.set_limit(abs, max_concurrency=1)
    if setup == "paused":
        b.state.pause()
    if setup == "retry waiting":
        b.put_delayed(job(round), 30.0)  # queued: a later job must not be handed past it
    taker = _Taker(b)
    wait_until(lambda: b.waiters == 1, what="the thread to park")
    later = job()
    b.put(later)
    assert b._parking.handed == 0
    if setup in ("limit", "retry waiting"):
        batch = taker.join()  # woken by the put, it takes the job from its lane
        assert batch is not None and batch.jobs == [later]
        return
    assert b.pending == 1  # lingering, or paused: it waits in its lane
    taker.stop = True
    b.wake_all()
    assert taker.join() is None


def test_a_job_handed_off_just_before_a_pause_waits_in_its_lane() -> None:
    b = Batcher(max_batch_size=8, max_delay=0)
    taker = _Taker(b)
    wait_until(lambda: b.waiters == 1, what="the thread to park")
    with b.state.lock:
        # The hand-off needs no lock; the pause lands before the woken
        # thread gets the lock back (set as PoolState._move would).
        j = job()
        assert b.put(j)
        b.state.phase = Phase.PAUSED
    wait_until(lambda: b.pending == 1 and b.waiters == 1, what="the job to go to its lane")
    assert b.submitted == 1
    b.state.resume()
    batch = taker.join()
    assert batch is not None and batch.jobs == [j]


def test_threads_that_leave_keep_their_hand_offs_counted() -> None:
    from batchpool import BatchPoolExecutor

    with BatchPoolExecutor(4, backend="thread") as ex:
        gate = threading.Event()
        blockers = [ex.submit(gate.wait, TIMEOUT) for _ in range(4)]  # all four threads start
        gate.set()
        assert all(f.result(timeout=TIMEOUT) for f in blockers)
        for _ in range(20):
            ex.submit(abs, -1).result(timeout=TIMEOUT)
        parking = ex._batcher._parking
        handed = parking.handed
        assert handed > 0
        ex.resize(1)
        wait_until(lambda: sum(t.is_alive() for t in ex._backend._threads) == 1, what="the retired threads to leave")
        assert parking.handed == handed and ex.stats().submitted == 24
    assert parking.handed == handed


def test_a_job_handed_over_as_the_pool_stops_fails_with_the_pool_error() -> None:
    from batchpool import BatchPoolExecutor

    ex = BatchPoolExecutor(1, backend="thread")
    ex.submit(abs, -1).result(timeout=TIMEOUT)
    wait_until(lambda: ex._batcher.waiters == 1, what="the thread to park")
    state = ex._state
    with state.lock:
        # The hand-off needs no lock; the pool stops before the woken thread
        # gets it back (set as PoolState._move would), so abort's drain
        # never saw the job.
        future = ex.submit(abs, -2)
        state.error = RuntimeError("the pool stopped")
        state.phase = Phase.ABORTED
    with pytest.raises(RuntimeError, match="the pool stopped"):
        future.result(timeout=TIMEOUT)
    ex.shutdown(wait=True)
