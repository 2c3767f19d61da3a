"""Regression tests for the faults the ledger issue found under injection.

Each defect gets a test that failed on the code before the ledger, made
deterministic: the bad job, signal or death is put at the chosen point
(a gate job holds the worker; a file says a job started; a patched method
raises the signal while the lock is held).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from batchpool import (
    BatchPoolExecutor,
    CircuitBreaker,
    CircuitOpenError,
    JobTimeoutError,
    RetryPolicy,
    ShutdownError,
    TransportError,
    WorkerCrashedError,
)
from batchpool.backends.process import workers as process_workers
from tests import helpers

TIMEOUT = 30


def _gate(ex: BatchPoolExecutor, tmp_path: Path, seconds: float = 60.0) -> tuple[Any, str]:
    """A job that holds the (only) worker until the test releases it; returns (future, release path)."""
    started, release = str(tmp_path / "gate-started"), str(tmp_path / "gate-release")
    fut = ex.submit(helpers.gate_job, started, release, seconds)
    helpers.wait_until(lambda: os.path.exists(started), what="the gate job to start")
    return fut, release


def test_a_result_the_parent_cannot_unpickle_fails_only_its_own_job(tmp_path: Path) -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        gate, release = _gate(ex, tmp_path)
        good = [ex.submit(helpers.echo, i) for i in range(999)]
        bad = ex.submit(helpers.return_error_at_unpickle)
        more = [ex.submit(helpers.echo, -i) for i in range(20)]
        open(release, "w").close()
        gate.result(TIMEOUT)
        with pytest.raises(TransportError, match="unpickled in the parent"):
            bad.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in good] == list(range(999))
        assert [f.result(TIMEOUT) for f in more] == [-i for i in range(20)]


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_an_argument_whose_reduce_raises_a_base_exception_fails_alone(tmp_path: Path, exc_type: type) -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        _, release = _gate(ex, tmp_path)
        good = [ex.submit(helpers.echo, i) for i in range(200)]
        bad = ex.submit(helpers.echo, helpers.ReduceRaises(exc_type))
        good += [ex.submit(helpers.echo, i) for i in range(200, 400)]
        open(release, "w").close()
        with pytest.raises(TypeError, match="could not be pickled") as info:
            bad.result(TIMEOUT)
        assert isinstance(info.value.__cause__, exc_type)
        assert [f.result(TIMEOUT) for f in good] == list(range(400))
        assert ex.submit(helpers.add_one, 1).result(TIMEOUT) == 2  # the pool goes on


def test_a_worker_killed_before_it_starts_a_batch_charges_no_attempt(tmp_path: Path) -> None:
    once = RetryPolicy(max_attempts=1)  # a charged crash would fail it at once
    with BatchPoolExecutor(max_workers=1) as ex:
        # Teach the pool that add_one is quick, so it is prefetched behind the gate.
        assert [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(50)]] == list(range(1, 51))
        gate, _ = _gate(ex, tmp_path)
        victim = ex.options(retry=once).submit(helpers.add_one, 41)
        helpers.wait_until(victim.running, what="the job to be sent behind the gate")
        (worker,) = ex._processes.values()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            gate.result(TIMEOUT)  # the gate was running: it is charged
        assert victim.result(TIMEOUT) == 42  # never started: sent again as it was


def test_thread_backend_starts_a_thread_per_submit_up_to_max_workers() -> None:
    barrier = threading.Barrier(4, timeout=10)
    with BatchPoolExecutor(max_workers=4, backend="thread") as ex:
        futures = [ex.submit(helpers.wait_for_barrier, barrier) for _ in range(4)]
        # Only four threads running at once can get all four past the barrier.
        assert sorted(f.result(TIMEOUT) for f in futures) == [0, 1, 2, 3]


def test_thread_backend_no_job_waits_behind_a_blocked_batch_mate() -> None:
    ev = threading.Event()
    with BatchPoolExecutor(max_workers=4, backend="thread", max_batch_size=64) as ex:
        ex.submit(abs, -1).result(TIMEOUT)  # measured: now jobs may batch together
        waiter = ex.submit(ev.wait, 5.0)
        quick = [ex.submit(time.sleep, 0.001) for _ in range(2)]
        setter = ex.submit(ev.set)
        start = time.monotonic()
        assert waiter.result(TIMEOUT) is True
        assert time.monotonic() - start < 4.0, "ev.wait ran out its timeout: ev.set waited behind it"
        setter.result(TIMEOUT)
        for f in quick:
            f.result(TIMEOUT)


def test_an_abort_fails_a_job_that_is_running_instead_of_leaving_it_running() -> None:
    ev = threading.Event()
    ex = BatchPoolExecutor(max_workers=1, backend="thread")
    try:
        running = ex.submit(ev.wait, 30)
        helpers.wait_until(running.running, what="the job to run")
        queued = ex.submit(abs, -1)
        ex.shutdown(wait=True, timeout=0.1)
        with pytest.raises(ShutdownError):
            running.result(0)
        assert queued.cancelled() or isinstance(queued.exception(0), ShutdownError)
    finally:
        ev.set()


def test_a_batched_job_settled_elsewhere_does_not_kill_its_thread() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        fut = ex.submit(helpers.slow_items, 0.3)
        helpers.wait_until(fut.running, what="the batch to run")
        fut.set_result("settled by the user")  # the batch's own result then finds it done
        assert fut.result(TIMEOUT) == "settled by the user"
        assert ex.submit(abs, -5).result(TIMEOUT) == 5  # the thread is still there
        assert len(ex._threads) == 1


def test_a_timeout_on_a_batched_job_is_enforced_on_the_thread_backend() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        fut = ex.options(timeout=0.2).submit(helpers.slow_items, 3.0)
        start = time.monotonic()
        with pytest.raises(JobTimeoutError):
            fut.result(TIMEOUT)
        assert time.monotonic() - start < 2.5


def test_a_cancelled_half_open_trial_frees_the_breaker(tmp_path: Path) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown=30.0, clock=lambda: now[0])
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ex.set_policy(helpers.raise_value_error, circuit_breaker=breaker)
        with pytest.raises(ValueError):
            ex.submit(helpers.raise_value_error, "down").result(TIMEOUT)
        now[0] += 31.0  # the cooldown passes: the next job is the trial
        release = threading.Event()
        blocker = ex.submit(release.wait, 30)  # holds the only thread, so the trial stays queued
        helpers.wait_until(blocker.running, what="the blocker to run")
        trial = ex.submit(helpers.raise_value_error, "trial")
        assert trial.cancel()
        release.set()
        blocker.result(TIMEOUT)
        helpers.wait_until(lambda: breaker.state != "half-open", what="the trial slot to be freed")
        # Not refused with CircuitOpenError: the cancelled trial gave its slot back.
        with pytest.raises(ValueError, match="again"):
            ex.submit(helpers.raise_value_error, "again").result(TIMEOUT)
        with pytest.raises(CircuitOpenError):
            ex.submit(helpers.raise_value_error, "refused").result(TIMEOUT)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_caller_runs_runs_a_job_as_its_kind_and_keeps_its_retry_policy(backend: str, tmp_path: Path) -> None:
    with BatchPoolExecutor(max_workers=1, backend=backend, max_pending=1, on_full="caller_runs") as ex:
        gate, release = _gate(ex, tmp_path) if backend == "process" else (None, "")
        hold = threading.Event()
        if backend == "thread":
            gate = ex.submit(hold.wait, 30)
            helpers.wait_until(gate.running, what="the gate to run")
        filler = ex.submit(helpers.add_one, 0)  # the one queued slot
        me = threading.get_ident()
        batched = ex.submit(helpers.item_lists, "x")  # queue full: runs here, as a one-item batch
        assert batched.done() and batched.result(0) == ["x"]
        flaky_path = str(tmp_path / "flaky")
        retried = ex.options(retry=RetryPolicy(max_attempts=3, backoff=0.0)).submit(helpers.flaky, flaky_path, 1)
        assert not retried.done(), "the retry must wait in the lanes, not run again in the caller"
        if backend == "process":
            open(release, "w").close()
        hold.set()
        assert retried.result(TIMEOUT) == 2  # ran twice: once here, once in the pool
        filler.result(TIMEOUT)
        assert gate is not None
        gate.result(TIMEOUT)
        del me


def test_a_pool_with_a_dashboard_is_collected_when_unreferenced() -> None:
    ex = BatchPoolExecutor(max_workers=1, backend="thread", dashboard=True)
    assert ex.submit(abs, -1).result(TIMEOUT) == 1
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None, "the dashboard kept the pool alive"


def test_stats_forget_workers_that_exited(tmp_path: Path) -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        first = ex.submit(helpers.getpid).result(TIMEOUT)
        ex.stats()
        with pytest.raises(WorkerCrashedError):
            ex.submit(helpers.exit_now, 3).result(TIMEOUT)
        second = ex.submit(helpers.getpid).result(TIMEOUT)
        assert second != first
        ex.stats()
        assert first not in ex._metrics._procs


def test_shutdown_from_another_thread_waits_for_a_first_worker_still_starting(monkeypatch: Any) -> None:
    entered, proceed = threading.Event(), threading.Event()
    real_start = process_workers.start_worker

    def slow_start(*args: Any) -> Any:
        entered.set()
        assert proceed.wait(TIMEOUT)
        return real_start(*args)

    monkeypatch.setattr("batchpool.backends.process.manager.start_worker", slow_start)
    ex = BatchPoolExecutor(max_workers=1)
    submitted: list[Any] = []
    submitter = threading.Thread(target=lambda: submitted.append(ex.submit(helpers.add_one, 1)))
    submitter.start()
    assert entered.wait(TIMEOUT)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (ex.shutdown(wait=True), done.set()))
    closer.start()
    assert not done.wait(0.3), "shutdown(wait=True) returned while the first worker was still starting"
    proceed.set()
    submitter.join(TIMEOUT)
    closer.join(TIMEOUT)
    assert done.is_set()
    assert submitted[0].result(0) == 2


@pytest.mark.parametrize("where", ["after the thread runs", "before it exists", "just after it is counted"])
def test_a_submit_interrupted_while_its_thread_starts_leaves_the_pool_whole(monkeypatch: Any, where: str) -> None:
    # A Ctrl-C while submit() starts a thread may come after the thread runs,
    # before it exists, or between counting it and starting it. Either way the
    # pool keeps max_workers threads that run jobs, and shutdown leaves none behind.
    real_start = threading.Thread.start
    interrupted: list[threading.Thread] = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("bp-interrupted") and not interrupted and where != "just after it is counted":
            interrupted.append(self)
            if where == "after the thread runs":
                real_start(self)
            raise KeyboardInterrupt
        real_start(self)

    class InterruptedAppend(list):  # type: ignore[type-arg]
        def append(self, thread: Any) -> None:
            super().append(thread)
            if not interrupted:
                interrupted.append(thread)
                raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    ex = BatchPoolExecutor(2, backend="thread", thread_name_prefix="bp-interrupted")
    if where == "just after it is counted":
        ex._backend._threads = InterruptedAppend()
    with pytest.raises(KeyboardInterrupt):
        ex.submit(abs, -1)
    gate = threading.Event()
    blocked = [ex.submit(gate.wait, TIMEOUT) for _ in range(2)]  # two threads, both busy
    helpers.wait_until(lambda: len(ex._backend._busy) == 2, what="two threads running jobs")
    alive = [t.name for t in threading.enumerate() if t.name.startswith("bp-interrupted") and t.is_alive()]
    assert len(alive) == 2 and len(ex._backend._threads) == 2, alive
    gate.set()
    assert all(f.result(TIMEOUT) for f in blocked)
    assert ex.submit(abs, -2).result(TIMEOUT) == 2
    ex.shutdown(wait=True)
    assert not [t for t in interrupted + list(ex._backend._threads) if t.is_alive()]
    if where != "after the thread runs":
        assert interrupted[0].ident is None  # it never ran


@pytest.mark.stress
# The interrupts also land in the standard library's weakref callbacks ("Exception ignored").
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(120, method="thread")  # SIGALRM is the test's own
def test_ctrl_c_anywhere_in_submit_never_hangs_or_leaks_a_thread_pool() -> None:
    # SIGALRM every 50 us raises KeyboardInterrupt wherever the main thread is
    # in submit() (the put, the hand-off, the wake-ups, Thread.start), on
    # fresh pools so that threads keep starting. Every Future returned
    # resolves, and shutdown() returns and leaves no thread alive.
    pools = 0
    with helpers.interrupt_storm() as storm:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            pools += 1
            prefix = f"bp-ctrl-c-{pools}"
            ex = BatchPoolExecutor(4, backend="thread", thread_name_prefix=prefix)
            gate = threading.Event()
            futures = []
            for _ in range(8):
                try:
                    storm.arm()
                    future = ex.submit(gate.wait, TIMEOUT)
                    storm.disarm()
                    futures.append(future)
                except (KeyboardInterrupt, RuntimeError):  # RuntimeError: Condition.wait in Thread.start, interrupted
                    pass
            storm.disarm()
            gate.set()
            assert all(f.result(TIMEOUT) for f in futures)
            ex.shutdown(wait=True)
            alive = [t.name for t in threading.enumerate() if t.name.startswith(prefix + "_") and t.is_alive()]
            assert not alive, alive
    assert storm.interrupted > 0


_SIGNAL_IN_SUBMIT = textwrap.dedent(
    """
    import os, signal, sys
    from batchpool import BatchPoolExecutor
    from batchpool.batching import lanes
    from tests import helpers

    if __name__ == "__main__":
        backend = sys.argv[1]
        fired = []
        real_put = lanes.Batcher.put

        puts = []

        def put_and_signal(self, job, **kwargs):
            # Both backends' submits put without the lanes' lock: the handler
            # runs inside the put, just after the job went in.
            accepted = real_put(self, job, **kwargs)
            puts.append(job)
            if len(fired) == 0 and len(puts) == 101:
                fired.append(len(puts))
                os.kill(os.getpid(), signal.SIGTERM)
            return accepted

        lanes.Batcher.put = put_and_signal
        ex = BatchPoolExecutor(max_workers=2, backend=backend)
        ex.install_signal_handlers(timeout=20)
        futures = []
        try:
            for i in range(100_000):
                futures.append(ex.submit(helpers.add_one, i))
        finally:
            done = sum(1 for f in futures if f.result(20) is not None)
            print("done", done, "accepted-at-signal", fired[0], flush=True)
    """
)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_signal_inside_submit_drains_and_exits_instead_of_hanging(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_SUBMIT, backend],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stderr
    # The submit in progress when the signal came finished; no later one was accepted.
    words = proc.stdout.split()
    assert words[0::2] == ["done", "accepted-at-signal"], proc.stdout + proc.stderr
    done, accepted = int(words[1]), int(words[3])
    # The hook runs after the put, inside submit: the 101st is queued, its submit never returned.
    assert (done, accepted) == (100, 101), proc.stdout + proc.stderr


def test_a_cancelled_future_stays_cancelled() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ev = threading.Event()
        blocker = ex.submit(ev.wait, 30)
        helpers.wait_until(blocker.running, what="the blocker to run")
        queued = ex.submit(abs, -1)
        assert queued.cancel()
        ev.set()
        with pytest.raises(CancelledError):
            queued.result(TIMEOUT)
