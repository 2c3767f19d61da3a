"""Faults with real processes and real signals: what fails, with what, and that
the pool goes on. Every case also passes the autouse leak check (no stray
process, thread or /dev/shm segment)."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from pathlib import Path
from typing import Any

import pytest

from batchpool import (
    BatchPoolExecutor,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    ShutdownError,
    TransportError,
    WorkerCrashedError,
)
from tests import helpers

TIMEOUT = 30

# (name, job to submit, expected exception type, text in its message)
FAULTS: list[tuple[str, Callable[[BatchPoolExecutor], Any], type[BaseException], str]] = [
    ("os._exit", lambda ex: ex.submit(helpers.exit_now, 1), WorkerCrashedError, "exited with code 1"),
    ("segfault", lambda ex: ex.submit(helpers.segfault), WorkerCrashedError, "SIGSEGV"),
    (
        "arg pickling",
        lambda ex: ex.submit(helpers.echo, helpers.ErrorAtPickle()),
        pickle.PicklingError,
        "Error in pickle",
    ),
    (
        "arg unpickling",
        lambda ex: ex.submit(helpers.echo, helpers.ErrorAtUnpickle()),
        TransportError,
        "unpickled in the worker",
    ),
    ("result pickling", lambda ex: ex.submit(helpers.return_error_at_pickle), pickle.PicklingError, "Error in pickle"),
    ("result unpickling", lambda ex: ex.submit(helpers.return_error_at_unpickle), TransportError, "in the parent"),
    ("hang (timeout)", lambda ex: ex.options(timeout=0.5).submit(helpers.hang_forever), TimeoutError, "timeout of 0.5"),
]


@pytest.mark.parametrize(("name", "submit", "error", "text"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_only_its_job(
    name: str, submit: Callable[[BatchPoolExecutor], Any], error: type[BaseException], text: str
) -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        ex.submit(helpers.add_one, 0).result(TIMEOUT)
        before = [ex.submit(helpers.add_one, i) for i in range(20)]
        bad = submit(ex)
        after = [ex.submit(helpers.add_one, i) for i in range(20)]
        with pytest.raises(error, match=text):
            bad.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in before + after] == list(range(1, 21)) * 2
        # The pool is not broken: new work runs.
        assert ex.submit(helpers.mul, 6, 7).result(TIMEOUT) == 42


def test_sigkill_from_outside_fails_the_running_job_only(tmp_path: Path) -> None:
    started = str(tmp_path / "started")
    with BatchPoolExecutor(max_workers=2) as ex:
        victim = ex.submit(helpers.mark_and_sleep, started, 60, None)
        helpers.wait_until(lambda: os.path.exists(started), what="the victim to start")
        pid = victim_pid(ex)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
            victim.result(TIMEOUT)
        assert info.value.pid == pid
        assert ex.submit(helpers.add_one, 1).result(TIMEOUT) == 2


def victim_pid(ex: BatchPoolExecutor) -> int:
    backend = ex._backend
    for worker in list(backend._workers.values()):  # type: ignore[attr-defined]
        if worker.inflight:
            return int(worker.pid)
    raise AssertionError("no worker is running a job")


def test_failing_initializer_breaks_the_pool_for_good() -> None:
    ex = BatchPoolExecutor(max_workers=2, initializer=helpers.init_fail)
    try:
        fut = ex.submit(helpers.add_one, 1)
        with pytest.raises(BrokenExecutor, match="initializer"):
            fut.result(TIMEOUT)
        with pytest.raises(BrokenExecutor):
            ex.submit(helpers.add_one, 1)
    finally:
        ex.shutdown()


def test_timeout_fires_on_time_and_the_pool_recovers() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        start = time.monotonic()
        fut = ex.options(timeout=1.0).submit(helpers.sleep_and_return, 60, None)
        with pytest.raises(TimeoutError):
            fut.result(TIMEOUT)
        assert time.monotonic() - start < 1.0 + 0.5 + 1.0  # + worker start-up
        assert [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(50)]] == list(range(1, 51))


def test_thread_backend_timeout_abandons_the_thread() -> None:
    gate = threading.Event()
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        start = time.monotonic()
        fut = ex.options(timeout=0.3).submit(gate.wait, 60)
        with pytest.raises(TimeoutError):
            fut.result(TIMEOUT)
        assert time.monotonic() - start < 0.3 + 0.5
        # The replacement thread runs new work while the old one still waits.
        assert ex.submit(helpers.add_one, 1).result(TIMEOUT) == 2
        gate.set()


def test_retries_with_backoff_until_success(tmp_path: Path, backend: str) -> None:
    policy = RetryPolicy(max_attempts=5, backoff=0.01, jitter=False, retry_on=(ConnectionError,))
    with BatchPoolExecutor(max_workers=2, backend=backend, retry=policy) as ex:
        fut = ex.submit(helpers.flaky, str(tmp_path / "count"), 3)
        assert fut.result(TIMEOUT) == 4
        # Not retryable: fails on the first attempt.
        with pytest.raises(ValueError):
            ex.submit(helpers.raise_value_error, "no").result(TIMEOUT)
        # Out of attempts: the last error is the job's error.
        failing = ex.options(retry=RetryPolicy(max_attempts=2, backoff=0.01)).submit(
            helpers.flaky, str(tmp_path / "other"), 10
        )
        with pytest.raises(ConnectionError, match="attempt 2 fails"):
            failing.result(TIMEOUT)


def test_a_poison_job_in_a_batch_of_256_is_isolated() -> None:
    with BatchPoolExecutor(max_workers=2, max_batch_size=256, max_delay=0.2) as ex:
        fs = [ex.submit(helpers.exit_if, i, 137) for i in range(256)]
        for i, f in enumerate(fs):
            if i == 137:
                with pytest.raises(WorkerCrashedError):
                    f.result(TIMEOUT)
            else:
                assert f.result(TIMEOUT) == i


def test_circuit_breaker_fails_fast_then_recovers() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown=30.0, clock=lambda: now[0])
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ex.set_policy(helpers.raise_value_error, circuit_breaker=breaker)
        for _ in range(3):
            with pytest.raises(ValueError):
                ex.submit(helpers.raise_value_error, "down").result(TIMEOUT)
        with pytest.raises(CircuitOpenError):
            ex.submit(helpers.raise_value_error, "down").result(TIMEOUT)
        now[0] += 30.0  # the cooldown passes
        with pytest.raises(ValueError):  # the trial runs (and fails again)
            ex.submit(helpers.raise_value_error, "down").result(TIMEOUT)
        assert breaker.state == "open"


def test_shutdown_deadline_stops_running_work() -> None:
    ex = BatchPoolExecutor(max_workers=2)
    running = [ex.submit(helpers.sleep_and_return, 60, None) for _ in range(2)]
    queued = [ex.submit(helpers.add_one, i) for i in range(10)]
    helpers.wait_until(lambda: all(f.running() for f in running), what="both jobs to run")
    start = time.monotonic()
    ex.shutdown(wait=True, timeout=0.5)
    assert time.monotonic() - start < 0.5 + 3.0
    for f in running:
        with pytest.raises(ShutdownError):
            f.result(0)
    assert all(f.done() for f in queued)


@pytest.mark.parametrize(
    ("jobs", "interval"),
    [pytest.param(20_000, 0.03, id="short"), pytest.param(50_000, 0.03, id="long", marks=pytest.mark.stress)],
)
def test_chaos_every_future_resolves_under_random_sigkills(tmp_path: Path, jobs: int, interval: float) -> None:
    log = tmp_path / "runs"
    policy = RetryPolicy(max_attempts=50, backoff=0.001, max_backoff=0.05)
    stop = threading.Event()
    kills = 0

    def killer(ex: BatchPoolExecutor) -> None:
        nonlocal kills
        rng = random.Random(1)
        while not stop.wait(interval):
            workers = list(ex._processes.values())
            if workers:
                try:
                    os.kill(rng.choice(workers).pid, signal.SIGKILL)
                    kills += 1
                except (ProcessLookupError, ValueError):
                    pass

    with BatchPoolExecutor(max_workers=2, retry=policy) as ex:
        thread = threading.Thread(target=killer, args=(ex,))
        thread.start()
        try:
            fs = [ex.submit(helpers.count_run, str(log), i) for i in range(jobs)]
            results = [f.result(120) for f in fs]
        finally:
            stop.set()
            thread.join()
    assert results == list(range(jobs))
    runs = [int(line) for line in log.read_text().split()]
    assert set(runs) == set(range(jobs))  # every job ran at least once
    print(f"chaos: {kills} SIGKILLs, {len(runs) - jobs} re-runs of {jobs} jobs")


def test_sigterm_drains_a_service_and_exits_zero(tmp_path: Path) -> None:
    done = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        import sys, time
        from batchpool import BatchPoolExecutor
        from tests import helpers
        if __name__ == "__main__":
            ex = BatchPoolExecutor(max_workers=2)
            ex.install_signal_handlers(timeout=10)
            fs = [ex.submit(helpers.sleep_and_return, 0.2, i) for i in range(10)]
            try:
                print("ready", flush=True)  # inside the try: the signal may come at once
                time.sleep(60)
            finally:
                # SystemExit came at once; the drain goes on meanwhile on a helper thread.
                with open({str(done)!r}, "w") as f:
                    f.write(str(sum(fut.result(15) for fut in fs)))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - start < 10 + 2
        assert done.read_text() == str(sum(range(10)))
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def test_shutdown_while_workers_are_crashing_does_not_hang() -> None:
    ex = BatchPoolExecutor(max_workers=2)
    crashing = [ex.submit(helpers.exit_now, 1) for _ in range(6)]
    fine = [ex.submit(helpers.add_one, i) for i in range(50)]
    ex.shutdown(wait=True)  # bounded by the test's timeout
    for f in crashing:
        with pytest.raises(WorkerCrashedError):
            f.result(0)
    assert [f.result(0) for f in fine] == list(range(1, 51))


_SUBMIT_LOOP = textwrap.dedent(
    """
    import sys
    from batchpool import BatchPoolExecutor
    from tests import helpers

    if __name__ == "__main__":
        ex = BatchPoolExecutor(max_workers=2, backend=sys.argv[1])
        ex.install_signal_handlers(timeout=20)
        futures = []
        try:
            print("ready", flush=True)  # inside the try: the signal may come at once
            while True:
                futures.append(ex.submit(helpers.add_one, len(futures)))
        except RuntimeError:
            pass  # refused once the signal came: the drain has begun
        finally:
            assert [f.result(30) for f in futures] == list(range(1, len(futures) + 1))
            print("done", len(futures), flush=True)
    """
)


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize(
    "run",
    [pytest.param(0, id="once")] + [pytest.param(i, id=f"run{i}", marks=pytest.mark.stress) for i in range(1, 20)],
)
def test_sigterm_at_a_random_moment_of_a_submit_loop_drains_and_exits_zero(backend: str, run: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUBMIT_LOOP, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(random.Random(run).uniform(0.0, 0.3))  # the random moment, not a synchronisation
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.startswith("done "), out + err
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
