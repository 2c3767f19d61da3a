"""No job waits to start while a worker is idle (the stdlib pools as the control).

Each case runs as its own ``__main__`` script, as a user's program would, once
with batchpool and once with the standard pool it replaces. The slow job is a
gate that holds its worker until the script releases it, so "the small jobs
finished first" is a fact, not a race against a sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_PROCESS = textwrap.dedent(
    """
    import os, sys, tempfile
    from concurrent.futures import ProcessPoolExecutor
    from batchpool import BatchPoolExecutor
    from tests import helpers

    if __name__ == "__main__":
        kind = sys.argv[1]
        tmp = tempfile.mkdtemp()
        started, release = os.path.join(tmp, "started"), os.path.join(tmp, "release")
        ex = BatchPoolExecutor(max_workers=2) if kind == "batchpool" else ProcessPoolExecutor(2)
        with ex:
            # Both workers up, and the small jobs' run time known: the pool may
            # now prefetch them, even into the worker about to run the slow one.
            [f.result(30) for f in [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(8)]]
            slow = ex.submit(helpers.gate_job, started, release, 30)
            small = [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(6)]
            # Every small job finishes while the slow one still holds its worker.
            print(sorted(f.result(20) for f in small), slow.done(), flush=True)
            open(release, "w").close()
            slow.result(30)
    """
)

_THREAD = textwrap.dedent(
    """
    import sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from batchpool import BatchPoolExecutor

    if __name__ == "__main__":
        kind = sys.argv[1]
        ex = BatchPoolExecutor(max_workers=4, backend="thread") if kind == "batchpool" else ThreadPoolExecutor(4)
        with ex:
            ev = threading.Event()
            start = time.monotonic()
            # Producer/consumer in a burst: ev.set must not wait behind ev.wait.
            waiter = ex.submit(ev.wait, 10.0)
            naps = [ex.submit(time.sleep, 0.001) for _ in range(2)]
            setter = ex.submit(ev.set)
            print(waiter.result(30), time.monotonic() - start < 5.0, flush=True)
            setter.result(30)
            [f.result(30) for f in naps]
    """
)


@pytest.mark.parametrize("kind", ["batchpool", "stdlib"])
def test_small_jobs_do_not_wait_behind_a_slow_one_on_worker_processes(kind: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROCESS, kind], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[0, 1, 2, 3, 4, 5] False"


@pytest.mark.parametrize("kind", ["batchpool", "stdlib"])
def test_a_burst_of_thread_jobs_does_not_deadlock_behind_an_event_wait(kind: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _THREAD, kind], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
