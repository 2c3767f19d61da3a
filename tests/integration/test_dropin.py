"""batchpool.ThreadPoolExecutor / ProcessPoolExecutor as true drop-ins.

Most tests run a real script as its own ``__main__`` in a subprocess (what
matters here is how worker processes see the main module), with the
worktree on PYTHONPATH; each script prints what it checks, and the test
reads it back.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import batchpool
from batchpool import ProcessPoolExecutor, ThreadPoolExecutor
from batchpool.backends.process.growth import GROW_WAIT
from tests import helpers

ROOT = Path(__file__).resolve().parents[2]
METHODS = [m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


def run_script(tmp_path: Path, source: str, *args: str, name: str = "script.py") -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-W", "error", str(path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )


def ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


# -- threads ---------------------------------------------------------------------------


def test_thread_pool_script_with_thread_locals_and_a_shared_list(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        """
        import concurrent.futures, threading
        from batchpool import ThreadPoolExecutor

        local = threading.local()
        seen = []

        def work(x):
            local.count = getattr(local, "count", 0) + 1
            seen.append(threading.current_thread().name)
            return x * 2

        if __name__ == "__main__":
            with ThreadPoolExecutor(3, "dropin") as ex:
                assert isinstance(ex, concurrent.futures.ThreadPoolExecutor)
                print(sum(ex.map(work, range(100))))
            print(len(seen), all(name.startswith("dropin") for name in seen))
        """,
    )
    assert ok(out) == ["9900", "100", "True"]


def test_asyncio_accepts_it_as_the_default_executor(tmp_path: Path) -> None:
    # -W error: asyncio warns (3.11+) when the default executor is no ThreadPoolExecutor.
    out = run_script(
        tmp_path,
        """
        import asyncio
        import batchpool

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_default_executor(batchpool.ThreadPoolExecutor(2))
            results = await asyncio.gather(*(loop.run_in_executor(None, pow, 2, n) for n in range(8)))
            print(sum(results))

        asyncio.run(main())
        """,
    )
    assert ok(out) == ["255"]


# -- processes: callables of the main script --------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_main_script_function_with_a_lock_and_a_sqlite_connection(tmp_path: Path, method: str) -> None:
    # Neither the lock nor the connection pickles: this only works by reference,
    # with the worker importing the script again (as ProcessPoolExecutor does).
    out = run_script(
        tmp_path,
        """
        import multiprocessing, sqlite3, sys, threading
        from batchpool import ProcessPoolExecutor

        LOCK = threading.Lock()
        DB = sqlite3.connect(":memory:", check_same_thread=False)

        def query(x):
            with LOCK:
                return DB.execute("select ? * 2", (x,)).fetchone()[0], __name__

        if __name__ == "__main__":
            ctx = multiprocessing.get_context(sys.argv[1])
            with ProcessPoolExecutor(2, ctx) as ex:
                results = list(ex.map(query, range(50)))
            print(sum(r for r, _ in results), {name for _, name in results} == {"__mp_main__"})
        """,
        method,
    )
    assert ok(out) == ["2450", "True"]


def test_a_large_module_table_costs_nothing_per_call(tmp_path: Path) -> None:
    # By value, every batch would carry the table (the old behaviour: each
    # call paid a pickle of it). By reference, each worker builds its own once.
    out = run_script(
        tmp_path,
        """
        import pickle, time
        from batchpool import ProcessPoolExecutor

        TABLE = [i * 0.5 for i in range(4_000_000)]  # ~36 MB pickled

        def lookup(i):
            return TABLE[i]

        if __name__ == "__main__":
            with ProcessPoolExecutor(1) as ex:
                ex.submit(lookup, 0).result(timeout=30)  # the worker built its table
                t0 = time.perf_counter()
                for i in range(200):
                    assert ex.submit(lookup, i).result(timeout=30) == i * 0.5
                calls = time.perf_counter() - t0
            t0 = time.perf_counter()
            pickle.dumps(TABLE, 5)
            print(calls / (time.perf_counter() - t0))
        """,
    )
    (ratio,) = ok(out)
    assert float(ratio) < 5, f"200 calls took {ratio} pickles of the table"


@pytest.mark.parametrize("method", METHODS)
def test_lambdas_and_functions_defined_under_the_guard_go_by_value(tmp_path: Path, method: str) -> None:
    out = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from batchpool import ProcessPoolExecutor

        if __name__ == "__main__":
            def under_guard(x):
                return x * 3

            offset = 10
            ctx = multiprocessing.get_context(sys.argv[1])
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                print(ex.submit(lambda x: x + offset, 1).result(timeout=30))
                print(sum(ex.map(under_guard, range(10))))
                print(ex.submit(under_guard, 5).result(timeout=30))
        """,
        method,
    )
    assert ok(out) == ["11", "135", "15"]


def test_a_callable_not_found_by_reference_is_sent_again_by_value_once(tmp_path: Path) -> None:
    # Every batch header the parent encodes is recorded: the function defined
    # under the guard goes by reference first (the worker cannot find it),
    # then by value with its bytes once, then by digest alone.
    out = run_script(
        tmp_path,
        """
        import batchpool.protocol as protocol
        from batchpool import ProcessPoolExecutor

        sent = []
        encode_batch = protocol.encode_batch

        def recording(batch_id, kind, fn_blob, *rest):
            parts = encode_batch(batch_id, kind, fn_blob, *rest)
            sent.append((protocol.decode_batch_header(parts[0])[4], len(fn_blob) > 0))
            return parts

        protocol.encode_batch = recording

        if __name__ == "__main__":
            def triple(x):
                return x * 3

            with ProcessPoolExecutor(1) as ex:
                print([ex.submit(triple, n).result(timeout=30) for n in range(4)])
            print(sent)
        """,
    )
    assert result_lines(out) == [
        "[0, 3, 6, 9]",
        "[(0, True), (1, True), (1, False), (1, False), (1, False)]",
    ]


def result_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# -- the missing main guard ---------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_script_without_a_main_guard_gets_an_error_naming_the_fix(tmp_path: Path, method: str) -> None:
    out = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from batchpool import ProcessPoolExecutor

        ex = ProcessPoolExecutor(2, multiprocessing.get_context(sys.argv[1]))
        print(ex.submit(abs, -1).result(timeout=30))
        """,
        method,
        name="unguarded.py",
    )
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("concurrent.futures.process.BrokenProcessPool: worker pid"), out.stderr[-2000:]
    assert "unguarded.py starts the pool when it is imported" in last
    assert 'put the code that uses the pool under `if __name__ == "__main__":`' in last
    # One worker failed and the pool broke: no storm of replacements, each dying the same way.
    assert out.stderr.count("bootstrapping phase") <= 2


# -- signatures --------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["mp_context", "transport", "max_tasks_per_child", "backend"])
def test_thread_pool_refuses_process_options(option: str) -> None:
    with pytest.raises(TypeError, match=repr(option)):
        ThreadPoolExecutor(**{option: None})


@pytest.mark.parametrize("option", ["thread_name_prefix", "backend"])
def test_process_pool_refuses_thread_options(option: str) -> None:
    with pytest.raises(TypeError, match=repr(option)):
        ProcessPoolExecutor(**{option: "x"})


def test_process_pool_refuses_a_start_method_name() -> None:
    with pytest.raises(TypeError, match="mp_context"):
        ProcessPoolExecutor(2, "spawn")


def test_standard_positional_signatures_and_batchpool_options() -> None:
    with ThreadPoolExecutor(2, "named", None, (), max_batch_size=4, retry=batchpool.RetryPolicy(max_attempts=2)) as ex:
        assert ex.submit(lambda: __import__("threading").current_thread().name).result(5).startswith("named")
        assert ex._max_workers == 2
    ctx = multiprocessing.get_context("spawn")
    ex2 = ProcessPoolExecutor(1, ctx, None, (), max_tasks_per_child=3, max_delay=0.001)
    try:
        assert ex2._mp_context is ctx
        assert isinstance(ex2, concurrent.futures.ProcessPoolExecutor)
        assert isinstance(ex2, batchpool.BatchPoolExecutor)
    finally:
        ex2.shutdown()
    assert ProcessPoolExecutor()._mp_context.get_start_method() in ("forkserver", "spawn")


def test_the_standard_machinery_is_never_reached() -> None:
    with ThreadPoolExecutor(1) as ex:
        assert not hasattr(ex, "_work_queue")
        with pytest.raises(AttributeError, match="batchpool replaces"):
            ex._adjust_thread_count()
    pex = ProcessPoolExecutor(1)
    try:
        assert not hasattr(pex, "_pending_work_items")
        with pytest.raises(AttributeError, match="batchpool replaces"):
            pex._adjust_process_count()
    finally:
        pex.shutdown()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_processes_start_in_submit_for_jobs_no_idle_worker_can_take(tmp_path: Path, method: str) -> None:
    # As with ProcessPoolExecutor: when submit returns, a process has been
    # started for its job if no idle one could take it (code that reads
    # `_processes` or counts children right after submitting relies on it).
    gate = tmp_path / "go"
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context(method)) as ex:
        futures = [ex.submit(helpers.wait_for_path, str(gate), 30) for _ in range(3)]
        assert len(ex._processes) == 3
        gate.touch()
        assert [f.result(timeout=30) for f in futures] == [True] * 3
        # Sequential jobs find the idle workers: no process beyond those.
        for _ in range(5):
            assert ex.submit(abs, -1).result(timeout=30) == 1
        assert len(ex._processes) == 3


def test_sequential_jobs_keep_to_one_process() -> None:
    with ProcessPoolExecutor(4) as ex:
        for _ in range(10):
            assert ex.submit(abs, -1).result(timeout=30) == 1
        assert len(ex._processes) == 1


def test_a_submit_never_waits_for_a_callback_that_needs_a_lock_the_submitter_holds() -> None:
    # Workers start on demand and a growing pool's submit waits for them, but
    # not while done-callbacks run on the manager thread: one may need a lock
    # the submitter holds (here the callback blocks until the submits are done).
    lock = threading.Lock()
    seen: list[int] = []

    def note(f: concurrent.futures.Future[int]) -> None:
        with lock:
            seen.append(f.result())

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("forkserver")) as ex:
        with lock:
            first = ex.submit(abs, -1)
            first.add_done_callback(note)
            helpers.wait_until(first.done, 30, "the first job to finish")  # its callback waits for the lock
            t0 = time.monotonic()
            more = [ex.submit(abs, -i) for i in range(2, 5)]  # no idle worker takes them all: the pool grows
            # A submit that waited for the callback would take GROW_WAIT (2 s) at
            # least: all three together take less (the margin is for a loaded machine).
            assert time.monotonic() - t0 < GROW_WAIT
        assert sorted(f.result(timeout=30) for f in more) == [2, 3, 4]
        helpers.wait_until(lambda: seen == [1], 30, "the callback to run")
