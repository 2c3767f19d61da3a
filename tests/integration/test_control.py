"""Controlling a running pool: resize, pause/resume, per-key concurrency and rate limits.

Modelled on loky's resize tests, scaled to a 2-core machine: small jobs, files
as gates and as records of what ran (shared by threads and processes alike).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from batchpool import UNLIMITED, BatchPoolExecutor, QueueFullError, WorkerCrashedError, batched
from tests.helpers import count_run, mark_and_sleep, wait_for_path, wait_until

Pool = Callable[..., BatchPoolExecutor]
RESULT_TIMEOUT = 30


# -- jobs (module level: worker processes import them) ---------------------------------


def whoami(seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return os.getpid(), threading.get_ident()


def mark_pid_and_sleep(path: str, seconds: float, value: int) -> int:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)  # the pid is whole when the file appears
    time.sleep(seconds)
    return value


def record_span(path: str, seconds: float, value: int) -> int:
    """Append 'start end' (the system-wide monotonic clock) of this run."""
    start = time.monotonic()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{start} {time.monotonic()}\n")
    return value


def record_start(path: str, value: int) -> int:
    with open(path, "a") as f:
        f.write(f"{time.monotonic()}\n")
    return value


@batched
def record_call(items: list[str]) -> list[int]:
    path = items[0]
    start = time.monotonic()
    time.sleep(0.02)
    with open(path, "a") as f:
        f.write(f"{start} {time.monotonic()}\n")
    return [len(items)] * len(items)


def worker_ids(ex: BatchPoolExecutor, backend: str) -> set[Any]:
    return set(ex._processes) if backend == "process" else {t.ident for t in ex._threads}


def spans(path: Path) -> list[tuple[float, float]]:
    return sorted(tuple(map(float, line.split())) for line in path.read_text().splitlines())  # type: ignore[misc]


# -- resize ------------------------------------------------------------------------------------


def test_grow_keeps_the_old_workers(pool: Pool, backend: str) -> None:
    ex = pool(max_workers=1)
    ex.submit(whoami, 0).result(timeout=RESULT_TIMEOUT)
    old = worker_ids(ex, backend)
    assert len(old) == 1
    ex.resize(3)
    assert ex.max_workers == 3
    ran = [f.result(timeout=RESULT_TIMEOUT) for f in [ex.submit(whoami, 0.3) for _ in range(3)]]
    which = {pid for pid, _ in ran} if backend == "process" else {tid for _, tid in ran}
    assert len(which) == 3  # three workers ran at once
    assert old <= worker_ids(ex, backend)  # the old one is still there
    assert ex.stats().target_workers == 3


def test_shrink_while_jobs_run(pool: Pool, backend: str, tmp_path: Path) -> None:
    ex = pool(max_workers=4)
    paths = [str(tmp_path / f"started{i}") for i in range(4)]
    futures = [ex.submit(mark_and_sleep, p, 0.4, i) for i, p in enumerate(paths)]
    for p in paths:
        assert wait_for_path(p, RESULT_TIMEOUT)
    old = worker_ids(ex, backend)
    assert len(old) == 4
    ex.resize(1)
    assert ex.max_workers == 1
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [0, 1, 2, 3]
    wait_until(lambda: len(worker_ids(ex, backend)) == 1, RESULT_TIMEOUT, "one worker left")
    assert worker_ids(ex, backend) <= old  # an old one stays, none is started
    assert ex.submit(whoami, 0).result(timeout=RESULT_TIMEOUT)
    assert len(ex.stats().workers) == 1


def test_resize_sequence_while_jobs_flow(pool: Pool, tmp_path: Path) -> None:
    ex = pool(max_workers=2)
    runs = tmp_path / "runs"
    futures = []
    n = 0
    for size in (4, 1, 3, 1, 2):
        futures += [ex.submit(count_run, str(runs), n + i) for i in range(60)]
        n += 60
        ex.resize(size)
        futures += [ex.submit(mark_and_sleep, str(tmp_path / f"m{n}"), 0.01, -1)]
    results = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
    assert sorted(r for r in results if r >= 0) == list(range(n))
    assert sorted(map(int, runs.read_text().split())) == list(range(n))  # each ran exactly once
    assert ex.max_workers == 2


def test_resize_back_up_keeps_retiring_workers(pool: Pool, backend: str, tmp_path: Path) -> None:
    ex = pool(max_workers=2)
    paths = [str(tmp_path / f"s{i}") for i in range(2)]
    futures = [ex.submit(mark_and_sleep, p, 0.3, i) for i, p in enumerate(paths)]
    for p in paths:
        assert wait_for_path(p, RESULT_TIMEOUT)
    old = worker_ids(ex, backend)
    ex.resize(1)
    ex.resize(2)  # before either finished: both stay
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [0, 1]
    ran = [f.result(timeout=RESULT_TIMEOUT) for f in [ex.submit(whoami, 0.2) for _ in range(2)]]
    assert len({pid for pid, _ in ran} if backend == "process" else {tid for _, tid in ran}) == 2
    if backend == "process":
        assert worker_ids(ex, backend) == old


def test_worker_killed_during_a_shrink(tmp_path: Path) -> None:
    with BatchPoolExecutor(max_workers=3) as ex:
        paths = [str(tmp_path / f"pid{i}") for i in range(3)]
        futures = [ex.submit(mark_pid_and_sleep, p, 1.0, i) for i, p in enumerate(paths)]
        for p in paths:
            assert wait_for_path(p, RESULT_TIMEOUT)
        pids = [int(Path(p).read_text()) for p in paths]
        ex.resize(1)
        os.kill(pids[1], signal.SIGKILL)
        assert futures[0].result(timeout=RESULT_TIMEOUT) == 0
        assert futures[2].result(timeout=RESULT_TIMEOUT) == 2
        with pytest.raises(WorkerCrashedError):
            futures[1].result(timeout=RESULT_TIMEOUT)
        wait_until(lambda: len(ex._processes) == 1, RESULT_TIMEOUT, "one worker left")
        assert ex.submit(whoami, 0).result(timeout=RESULT_TIMEOUT)
        assert len(ex._processes) == 1


def test_resize_ramp_steps_up_and_a_new_resize_cancels_it() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ex.resize(3, ramp=0.2)
        assert ex.max_workers == 1  # returns at once
        wait_until(lambda: ex.max_workers == 3, RESULT_TIMEOUT, "the ramp to reach 3")
        ex.resize(8, ramp=60)
        ex.resize(2)
        assert ex.max_workers == 2
        assert not [t for t in threading.enumerate() if t.name == "batchpool-ramp"]


def test_resize_and_pause_arguments() -> None:
    ex = BatchPoolExecutor(max_workers=1, backend="thread")
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(error, match="max_workers"):
            ex.resize(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ramp"):
        ex.resize(2, ramp=-1)
    with pytest.raises(ValueError, match="timeout"):
        ex.pause(wait=True, timeout=-1)
    assert ex.max_workers == 1 and not ex.paused
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.resize(2)
    with pytest.raises(RuntimeError):
        ex.pause()
    ex.resume()  # harmless


# -- pause / resume ---------------------------------------------------------------------------


def test_pause_lets_running_batches_finish_and_starts_nothing(pool: Pool, tmp_path: Path) -> None:
    ex = pool(max_workers=2)
    gate, started, runs = tmp_path / "gate", tmp_path / "started", tmp_path / "runs"
    running = ex.submit(mark_and_sleep_until, str(started), str(gate))
    assert wait_for_path(str(started), RESULT_TIMEOUT)
    ex.pause()
    assert ex.paused and ex.stats().paused
    queued = [ex.submit(count_run, str(runs), i) for i in range(5)]
    assert not ex.pause(wait=True, timeout=0.05)  # the running job holds it
    gate.touch()
    assert ex.pause(wait=True, timeout=RESULT_TIMEOUT)  # it finished
    assert running.result(timeout=RESULT_TIMEOUT) == "done"
    time.sleep(0.2)  # a window in which nothing may start
    assert not runs.exists()
    assert all(not f.running() and not f.done() for f in queued)
    assert queued[0].cancel()
    ex.resume()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued[1:]] == [1, 2, 3, 4]
    assert sorted(map(int, runs.read_text().split())) == [1, 2, 3, 4]
    with pytest.raises(CancelledError):
        queued[0].result(timeout=0)


def mark_and_sleep_until(started: str, gate: str) -> str:
    with open(started, "w"):
        pass
    assert wait_for_path(gate, RESULT_TIMEOUT)
    return "done"


def test_shutdown_while_paused_drains(pool: Pool, tmp_path: Path) -> None:
    ex = pool()
    ex.pause()
    futures = [ex.submit(count_run, str(tmp_path / "runs"), i) for i in range(6)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(6))


def test_shutdown_cancel_futures_while_paused_cancels(pool: Pool, tmp_path: Path) -> None:
    ex = pool()
    ex.pause()
    futures = [ex.submit(count_run, str(tmp_path / "runs"), i) for i in range(6)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    assert not (tmp_path / "runs").exists()


def test_caller_runs_blocks_while_paused() -> None:
    with BatchPoolExecutor(
        max_workers=1, backend="thread", max_pending=1, on_full="caller_runs", block_timeout=0.2
    ) as ex:
        ex.pause()
        first = ex.submit(threading.get_ident)
        with pytest.raises(QueueFullError):
            ex.submit(threading.get_ident)  # not run here: a paused pool runs nothing
        ex.resume()
        assert first.result(timeout=RESULT_TIMEOUT) != threading.get_ident()


# -- per-key limits ---------------------------------------------------------------------------


def test_max_concurrency_one_never_overlaps(pool: Pool, tmp_path: Path) -> None:
    ex = pool(max_workers=2)
    ex.set_policy("probe", max_concurrency=1)
    path = tmp_path / "spans"
    view = ex.options(key="probe")
    futures = [view.submit(record_span, str(path), 0.03, i) for i in range(8)]
    others = [ex.submit(whoami, 0.05) for _ in range(2)]  # other keys still run meanwhile
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == list(range(8))
    for f in others:
        f.result(timeout=RESULT_TIMEOUT)
    recorded = spans(path)
    assert len(recorded) == 8
    for (_, end), (start, _) in itertools.pairwise(recorded):
        assert start >= end  # no two runs overlap
    limits = ex.stats().key_limits["probe"]
    assert limits.limit == 1 and limits.running == 0


def test_max_concurrency_counts_batched_calls(tmp_path: Path) -> None:
    with BatchPoolExecutor(max_workers=2, backend="thread", max_batch_size=4) as ex:
        ex.set_policy(record_call, max_concurrency=1)
        path = str(tmp_path / "calls")
        sizes = [f.result(timeout=RESULT_TIMEOUT) for f in [ex.submit(record_call, path) for _ in range(12)]]
        recorded = spans(Path(path))
        assert sum(sizes) >= 12 and len(recorded) < 12  # items went in batches
        for (_, end), (start, _) in itertools.pairwise(recorded):
            assert start >= end


def test_rate_limit_from_above(pool: Pool, tmp_path: Path) -> None:
    ex = pool(max_workers=2)
    for f in [ex.submit(whoami, 0.1) for _ in range(2)]:  # both workers up: starts follow dispatches
        f.result(timeout=RESULT_TIMEOUT)
    ex.set_policy("api", rate_limit=100)
    path = tmp_path / "starts"
    view = ex.options(key="api")
    t0 = time.monotonic()
    futures = [view.submit(record_start, str(path), i) for i in range(150)]
    assert sorted(f.result(timeout=RESULT_TIMEOUT) for f in futures) == list(range(150))
    elapsed = time.monotonic() - t0
    burst = 10  # a tenth of a second's worth

    def worst(times: list[float]) -> int:
        times.sort()
        return max(sum(1 for t in times if s <= t <= s + 1.0) for s in times)

    # What the limiter decides: dispatches. Exact.
    dispatched = worst([f.record.t_dispatch for f in futures])  # type: ignore[attr-defined]
    assert dispatched <= 100 + burst, f"{dispatched} dispatches in one second"
    # What the jobs see: starts, a transport's latency after their dispatch.
    started = worst([float(x) for x in path.read_text().split()])
    assert started <= 100 + burst, f"{started} starts in one second"
    assert elapsed >= (150 - burst) / 100 * 0.9  # it did wait (the limit is on)


def test_set_policy_keeps_omitted_values_and_unlimited_lifts() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ex.set_policy("k", max_batch_size=3, max_delay=0.05)
        ex.set_policy("k", max_concurrency=2, rate_limit=50)
        assert ex._batcher.policy("k") == (3, 0.05)
        ex.set_policy("k", max_batch_size=7)
        assert ex._batcher.policy("k") == (7, 0.05)
        limits = ex.stats().key_limits["k"]
        assert (limits.limit, limits.rate_limit) == (2, 50.0)
        ex.set_policy("k", rate_limit=UNLIMITED)
        limits = ex.stats().key_limits["k"]
        assert (limits.limit, limits.rate_limit) == (2, None)
        ex.set_policy("k", max_concurrency=UNLIMITED)
        assert "k" not in ex.stats().key_limits
        assert ex.options(key="k").submit(abs, -4).result(timeout=RESULT_TIMEOUT) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": 1.5}, TypeError, "max_concurrency"),
        ({"max_concurrency": True}, TypeError, "max_concurrency"),
        ({"rate_limit": 0}, ValueError, "rate_limit"),
        ({"rate_limit": -3.0}, ValueError, "rate_limit"),
        ({"rate_limit": float("inf")}, ValueError, "rate_limit"),
        ({"rate_limit": "fast"}, TypeError, "rate_limit"),
        ({"ramp": -1}, ValueError, "ramp"),
        ({"ramp": 2.0}, ValueError, "ramp"),  # no rate to ramp to
        ({"max_batch_size": 0}, ValueError, "max_batch_size"),
    ],
)
def test_set_policy_arguments(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        ex.set_policy("k", max_concurrency=3)
        with pytest.raises(error, match=name):
            ex.set_policy("k", **kwargs)
        assert ex.stats().key_limits["k"].limit == 3  # a refused call changes nothing


def test_stats_dashboard_and_prometheus_show_the_controls() -> None:
    import io

    from rich.console import Console

    from batchpool.dashboard import render

    with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        ex.set_policy("api", max_concurrency=4, rate_limit=20)
        ex.resize(3)
        ex.pause()
        ex.options(key="api").submit(abs, 1)
        s = ex.stats()
        assert (s.target_workers, s.paused) == (3, True)
        assert s.key_limits["api"].waiting == 1
        console = Console(record=True, width=100, file=io.StringIO())
        console.print(render(s, width=100))
        text = console.export_text()
        assert "PAUSED" in text and "target 3" in text and "Per-key limits" in text
        from batchpool.dashboard import one_line

        assert one_line(s).endswith(", target 3), PAUSED")
        prom = s.to_prometheus(pool="p")
        assert 'batchpool_target_workers{pool="p"} 3' in prom
        assert 'batchpool_paused{pool="p"} 1' in prom
        assert 'batchpool_key_max_concurrency{pool="p",key="api"} 4' in prom
        ex.resume()


def fail_once_after_gate(path: str, gate: str) -> int:
    assert wait_for_path(gate, RESULT_TIMEOUT)
    with open(path, "a") as f:
        f.write("x")
    runs = len(Path(path).read_text())
    if runs == 1:
        raise ConnectionError("first attempt fails")
    return runs


def test_while_paused_retries_wait_and_timeouts_do_not_tick(tmp_path: Path) -> None:
    from batchpool import RetryPolicy

    policy = RetryPolicy(max_attempts=3, backoff=0.01, jitter=False, retry_on=(ConnectionError,))
    with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        gate, runs = tmp_path / "gate", tmp_path / "runs"
        retried = ex.options(retry=policy).submit(fail_once_after_gate, str(runs), str(gate))
        wait_until(retried.running, RESULT_TIMEOUT, "the first attempt to start")
        ex.pause()
        timed = ex.options(timeout=0.05).submit(abs, -5)  # waits far longer than its time limit
        gate.touch()
        assert ex.pause(wait=True, timeout=RESULT_TIMEOUT)  # the first attempt failed meanwhile
        time.sleep(0.3)  # the backoff (10 ms) passes; nothing may run
        assert runs.read_text() == "x" and not retried.done() and not timed.done()
        ex.resume()
        assert retried.result(timeout=RESULT_TIMEOUT) == 2
        assert timed.result(timeout=RESULT_TIMEOUT) == 5


def sleep_and_count(path: str, x: int) -> int:
    time.sleep(0.001)
    return count_run(path, x)


@pytest.mark.stress
@pytest.mark.skipif(not os.environ.get("BATCHPOOL_STRESS"), reason="stress loop: set BATCHPOOL_STRESS=1")
def test_random_resizes_and_pauses_while_jobs_flow(pool: Pool, tmp_path: Path) -> None:
    import random

    rng = random.Random(16)
    ex = pool(max_workers=2)
    ex.set_policy("limited", max_concurrency=2)
    runs = str(tmp_path / "runs")
    futures = []
    for i in range(3000):
        view = ex.options(key="limited") if i % 3 == 0 else ex
        futures.append(view.submit(sleep_and_count, runs, i))
        if i % 50 == 0:
            action = rng.random()
            if action < 0.6:
                ex.resize(rng.randint(1, 4))
            elif action < 0.8:
                ex.pause()
            else:
                ex.resume()
    ex.resume()
    assert [f.result(timeout=120) for f in futures] == list(range(3000))
    assert sorted(map(int, Path(runs).read_text().split())) == list(range(3000))
    assert ex.stats().key_limits["limited"].running == 0


def test_pause_wait_from_a_done_callback_does_not_wait_for_itself(pool: Pool, tmp_path: Path) -> None:
    ex = pool()
    seen: list[bool] = []
    gate = tmp_path / "gate"
    fut = ex.submit(wait_for_path, str(gate), RESULT_TIMEOUT)
    fut.add_done_callback(lambda _: seen.append(ex.pause(wait=True)))  # runs on a pool thread
    gate.touch()
    assert fut.result(timeout=RESULT_TIMEOUT) is True
    wait_until(lambda: bool(seen), RESULT_TIMEOUT, "the callback")
    assert seen == [False]  # it did not wait for its own batch
    ex.resume()
    assert ex.submit(abs, -2).result(timeout=RESULT_TIMEOUT) == 2


def test_caller_runs_respects_a_key_limit(tmp_path: Path) -> None:
    with BatchPoolExecutor(
        max_workers=1, backend="thread", max_pending=1, on_full="caller_runs", block_timeout=0.2
    ) as ex:
        ex.set_policy("one", max_concurrency=1)
        gate, started = tmp_path / "gate", tmp_path / "started"
        view = ex.options(key="one")
        running = view.submit(mark_and_sleep_until, str(started), str(gate))
        assert wait_for_path(str(started), RESULT_TIMEOUT)
        queued = view.submit(threading.get_ident)  # waits for the slot
        with pytest.raises(QueueFullError):
            view.submit(threading.get_ident)  # not run here past the limit
        gate.touch()
        assert running.result(timeout=RESULT_TIMEOUT) == "done"
        assert queued.result(timeout=RESULT_TIMEOUT) != threading.get_ident()
