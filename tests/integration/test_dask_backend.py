"""backend="dask": the same API on a Dask cluster.

Most tests share one in-process ``LocalCluster`` (``processes=False``: the
workers are threads of this process talking over inproc://, no sockets), so
module globals (gates, records) are shared with the jobs. The crash test
starts a cluster of worker processes (bound to 127.0.0.1) and closes it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="the Dask backend needs distributed (batchpool[dask])")

from batchpool import BatchPoolExecutor, Priority, RetryPolicy, batched, job_info  # noqa: E402
from batchpool.batching.lane import AGE_STEP  # noqa: E402
from batchpool.errors import JobTimeoutError, ShutdownError, WorkerCrashedError  # noqa: E402
from tests import helpers  # noqa: E402

# Threads Dask starts once per process and keeps (its callback and offload
# executors): not a pool's leak.
_DASK_GLOBAL_THREADS = ("Dask-Callback-Thread", "Dask-Offload")

_GATE = threading.Event()
_ORDER: list[str] = []
_ATTEMPTS: dict[str, int] = {}


def gate_wait(tag: str) -> str:
    _GATE.wait(30)
    return tag


def record(tag: str) -> str:
    _ORDER.append(tag)
    return tag


def flaky(key: str, failures: int) -> str:
    """Fails the first ``failures`` calls for ``key``, then returns it."""
    _ATTEMPTS[key] = _ATTEMPTS.get(key, 0) + 1
    if _ATTEMPTS[key] <= failures:
        raise ConnectionError(f"attempt {_ATTEMPTS[key]}")
    return key


def maybe_exit(x: int) -> int:
    if x == 13:
        os._exit(1)
    return x * 2


@batched
def halve_all(items: list[int]) -> list[Any]:
    return [ValueError(f"odd {x}") if x % 2 else x // 2 for x in items]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """The shared leak check, minus Dask's process-wide threads."""
    baseline = helpers.leak_baseline()
    yield
    leaks = [
        leak for leak in helpers.find_leaks(baseline) if not (leak.startswith("threads") and _only_dask_globals(leak))
    ]
    assert not leaks, "; ".join(leaks)


def _only_dask_globals(message: str) -> bool:
    names = message.split(": ", 1)[1].strip("[]").replace("'", "").split(", ")
    return all(name.startswith(_DASK_GLOBAL_THREADS) for name in names)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        processes=False,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787, which another cluster may hold
    )
    dask_client = distributed.Client(cluster, set_as_default=False)
    try:
        # Start the cluster's lazily made threads before any test takes stock.
        with BatchPoolExecutor(backend="dask", client=dask_client) as ex:
            assert list(ex.map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
        yield dask_client
    finally:
        dask_client.close()
        cluster.close()


@pytest.fixture
def pool(client: Any) -> Iterator[Any]:
    made: list[BatchPoolExecutor] = []

    def make(**kwargs: Any) -> BatchPoolExecutor:
        ex = BatchPoolExecutor(backend="dask", client=client, **kwargs)
        made.append(ex)
        return ex

    yield make
    _GATE.set()
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
    _GATE.clear()


# -- the drop-in subset --------------------------------------------------------------------


def test_submit_map_as_completed_wait(pool: Any) -> None:
    ex = pool()
    assert ex.submit(pow, 2, 10).result(timeout=30) == 1024
    assert ex.submit(helpers.capture, 1, k="v").result(timeout=30) == ((1,), {"k": "v"})
    assert list(ex.map(helpers.mul, range(50), range(50), timeout=30)) == [i * i for i in range(50)]
    futures = [ex.submit(helpers.add_one, i) for i in range(200)]
    assert sorted(f.result() for f in as_completed(futures, timeout=30)) == list(range(1, 201))
    done, not_done = wait(futures, timeout=30)
    assert len(done) == 200 and not not_done
    info = job_info(futures[-1])
    assert info is not None and info.batch_size >= 1
    assert ex.stats().completed >= 251


def test_exceptions_keep_their_type_and_traceback(pool: Any) -> None:
    ex = pool()
    bad = ex.submit(helpers.raise_value_error, "boom")
    good = ex.submit(helpers.add_one, 1)
    with pytest.raises(ValueError, match="boom") as info:
        bad.result(timeout=30)
    assert "raise ValueError(message)" in str(info.value.__cause__)
    assert good.result(timeout=30) == 2
    results = ex.map(helpers.add_one, [1, "x", 3])
    assert next(results) == 2
    with pytest.raises(TypeError):
        next(results)


def test_unpicklable_call_fails_alone(pool: Any) -> None:
    ex = pool()
    futures = [ex.submit(helpers.echo, i) for i in range(3)] + [ex.submit(helpers.echo, threading.Lock())]
    assert [f.result(timeout=30) for f in futures[:3]] == [0, 1, 2]
    with pytest.raises(TypeError):
        futures[3].result(timeout=30)


def test_queued_jobs_can_be_cancelled(pool: Any) -> None:
    ex = pool()
    # A callable never timed goes out one job at a time: the rest wait here.
    first = ex.submit(gate_wait, "first")
    rest = [ex.submit(gate_wait, f"r{i}") for i in range(3)]
    assert all(f.cancel() for f in rest)
    _GATE.set()
    assert first.result(timeout=30) == "first"
    for f in rest:
        with pytest.raises(CancelledError):
            f.result(timeout=0)


# -- batchpool's own semantics ------------------------------------------------------------


def test_realtime_jobs_go_before_queued_bulk_jobs(pool: Any) -> None:
    ex = pool(max_batch_size=1)
    _GATE.set()
    ex.submit(gate_wait, "warm").result(timeout=30)  # timed: its jobs may now leave together
    ex.submit(record, "warm").result(timeout=30)
    _GATE.clear()
    _ORDER.clear()
    blockers = [ex.submit(gate_wait, f"b{i}") for i in range(4)]  # 2 threads x 2 batches each
    deadline = time.monotonic() + 30
    while ex.stats().queued and time.monotonic() < deadline:
        time.sleep(0.005)
    queued_at = time.monotonic()
    bulk = [ex.options(priority=Priority.BULK).submit(record, f"bulk{i}") for i in range(4)]
    urgent = [ex.options(priority=Priority.REALTIME).submit(record, f"rt{i}") for i in range(4)]
    _GATE.set()
    wait(blockers + bulk + urgent, timeout=30)
    assert [f.result() for f in bulk + urgent]
    assert _ORDER[0].startswith("rt"), _ORDER
    if time.monotonic() - queued_at < AGE_STEP:
        # Slower than that (a loaded machine: a Dask round trip), the BULK
        # lane has aged and may rightly be served between REALTIME batches.
        assert sorted(_ORDER[:4]) == ["rt0", "rt1", "rt2", "rt3"], _ORDER


def test_batched_function_one_future_per_item(pool: Any) -> None:
    ex = pool()
    futures = [ex.submit(halve_all, x) for x in range(10)]
    for x, f in enumerate(futures):
        if x % 2:
            with pytest.raises(ValueError, match=f"odd {x}"):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) == x // 2


def test_retries_run_in_the_parent(pool: Any) -> None:
    ex = pool(retry=RetryPolicy(max_attempts=3, backoff=0.01, jitter=False))
    _ATTEMPTS.clear()
    assert ex.submit(flaky, "twice", 2).result(timeout=30) == "twice"
    assert _ATTEMPTS["twice"] == 3
    with pytest.raises(ConnectionError, match="attempt 3"):
        ex.submit(flaky, "always", 99).result(timeout=30)
    assert _ATTEMPTS["always"] == 3


def test_job_timeout_fails_that_job_on_time(pool: Any) -> None:
    ex = pool()
    others = [ex.submit(helpers.add_one, i) for i in range(20)]
    start = time.monotonic()
    slow = ex.options(timeout=0.3).submit(gate_wait, "late")
    with pytest.raises(JobTimeoutError):
        slow.result(timeout=30)
    assert time.monotonic() - start < 10
    assert [f.result(timeout=30) for f in others] == list(range(1, 21))
    _GATE.set()  # the task ends; its late result is dropped
    assert ex.submit(helpers.add_one, 1).result(timeout=30) == 2
    with pytest.raises(JobTimeoutError):
        slow.result(timeout=0)


def test_shutdown_deadline_fails_what_still_runs(client: Any) -> None:
    ex = BatchPoolExecutor(backend="dask", client=client)
    try:
        stuck = ex.submit(gate_wait, "stuck")
        deadline = time.monotonic() + 30
        while ex.stats().in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        start = time.monotonic()
        ex.shutdown(wait=True, timeout=0.3)
        assert time.monotonic() - start < 15
        with pytest.raises(ShutdownError):
            stuck.result(timeout=0)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(helpers.add_one, 1)
    finally:
        _GATE.set()
        ex.shutdown(wait=True)
        _GATE.clear()
    assert client.submit(helpers.add_one, 1, pure=False).result(timeout=30) == 2  # the user's client lives on


def test_initializer_runs_on_each_worker(pool: Any) -> None:
    try:
        ex = pool(initializer=helpers.init_set, initargs=("dask-init",))
        assert ex.submit(helpers.get_state).result(timeout=30) == "dask-init"
    finally:
        helpers.init_set("uninitialized")


def test_failing_initializer_breaks_the_pool(pool: Any) -> None:
    ex = pool(initializer=helpers.init_fail)
    with pytest.raises(BrokenProcessPool, match="error in initializer"):
        ex.submit(helpers.add_one, 1)


def test_stats_show_the_cluster_workers(pool: Any) -> None:
    ex = pool()
    assert ex.submit(helpers.add_one, 1).result(timeout=30) == 2
    stats = ex.stats()
    assert len(stats.workers) == 2
    assert stats.completed == 1


def test_large_arguments_are_scattered_once_and_released(pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    ex = pool()
    scattered: list[int] = []
    original = ex._backend._client.scatter

    def counting(obj: Any, **kwargs: Any) -> Any:
        scattered.append(id(obj))
        return original(obj, **kwargs)

    monkeypatch.setattr(ex._backend._client, "scatter", counting)
    big = np.arange(2**18, dtype=np.float64)  # 2 MiB
    futures = [ex.submit(np.sum, big) for _ in range(6)]
    assert {f.result(timeout=30) for f in futures} == {float(big.sum())}
    assert ex.submit(helpers.echo, b"small").result(timeout=30) == b"small"
    assert scattered.count(id(big)) <= 2  # once, or again after it was released between batches
    assert len(ex._backend._scatter) == 0


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": "process", "address": "tcp://127.0.0.1:1"}, ValueError, "address is for backend='dask'"),
        ({"backend": "thread", "client": object()}, ValueError, "client is for backend='dask'"),
        ({"backend": "dask", "mp_context": "spawn"}, ValueError, "mp_context cannot be used"),
        ({"backend": "dask", "transport": "pipe"}, ValueError, "transport cannot be used"),
        ({"backend": "dask", "max_tasks_per_child": 3}, ValueError, "max_tasks_per_child cannot be used"),
        ({"backend": "dask", "client": object(), "address": "tcp://x:1"}, ValueError, "not both"),
        ({"backend": "dask", "address": 8786}, TypeError, "address must be a str"),
        ({"backend": "dask", "client": object()}, TypeError, "client must be a distributed.Client"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BatchPoolExecutor(**kwargs)


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("batchpool.backends.dask")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"batchpool\[dask\]"):
        BatchPoolExecutor(backend="dask")


def test_another_protocol_version_is_refused() -> None:
    from batchpool import protocol, serialization
    from batchpool.backends.dask.remote import ProtocolMismatchError, run_remote

    calls = serialization.dumps([((1,), None)])
    with pytest.raises(ProtocolMismatchError, match="install the same batchpool"):
        run_remote(protocol.PROTOCOL_VERSION + 1, 0, 0, serialization.dumps_callable(abs), calls)


_EXIT_SCRIPT = """
from distributed import Client, LocalCluster
from batchpool import BatchPoolExecutor
if __name__ == "__main__":
    cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = Client(cluster, set_as_default=False)
    ex = BatchPoolExecutor(backend="dask", client=client)
    futures = [ex.submit(pow, 2, n) for n in range(10)]
    futures[-1].add_done_callback(lambda f: print("settled at exit:", f.result(), flush=True))
"""


def test_queued_work_finishes_at_interpreter_exit(tmp_path: Any) -> None:
    """No shutdown(): interpreter exit still runs what was submitted (before Dask's executors stop)."""
    import subprocess

    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "settled at exit: 512" in result.stdout


# -- a worker process that dies ---------------------------------------------------------------


def test_a_job_that_kills_its_worker_fails_alone() -> None:
    """An owned LocalCluster of 2 processes: only the killer fails; everything else resolves."""
    with BatchPoolExecutor(2, backend="dask", max_batch_size=4) as ex:
        assert ex.submit(maybe_exit, 0).result(timeout=60) == 0  # timed: later jobs leave in batches
        futures = {x: ex.submit(maybe_exit, x) for x in range(1, 17)}
        done, _ = wait(list(futures.values()), timeout=120, return_when=FIRST_COMPLETED)
        assert done
        for x, f in futures.items():
            if x == 13:
                with pytest.raises(WorkerCrashedError):
                    f.result(timeout=120)
            else:
                assert f.result(timeout=120) == x * 2
        assert ex.submit(maybe_exit, 21).result(timeout=60) == 42  # the pool goes on
        assert ex.stats().workers


_RUNNING = [0, 0]  # now, most at once
_RUNNING_LOCK = threading.Lock()


def overlap_probe(seconds: float) -> int:
    with _RUNNING_LOCK:
        _RUNNING[0] += 1
        _RUNNING[1] = max(_RUNNING[1], _RUNNING[0])
    time.sleep(seconds)
    with _RUNNING_LOCK:
        _RUNNING[0] -= 1
    return 1


def test_resize_on_dask_bounds_the_batches_in_flight(pool: Any) -> None:
    ex = pool(max_batch_size=1)  # one job per batch: batches in flight = jobs running at once
    ex.resize(1)
    _RUNNING[:] = [0, 0]
    assert sum(f.result(timeout=30) for f in [ex.submit(overlap_probe, 0.02) for _ in range(12)]) == 12
    assert _RUNNING[1] == 1, f"{_RUNNING[1]} jobs ran at once on a pool resized to 1"
    ex.resize(2)  # the cluster's two threads both take batches again
    assert sum(f.result(timeout=30) for f in [ex.submit(overlap_probe, 0.01) for _ in range(12)]) == 12
