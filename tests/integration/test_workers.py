"""Worker processes: task limits, crashes, and cleanup when the parent dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psutil
import pytest

from batchpool import BatchPoolExecutor, WorkerCrashedError
from tests import helpers

TIMEOUT = 30


def test_max_tasks_per_child_replaces_the_worker() -> None:
    with BatchPoolExecutor(max_workers=1, max_tasks_per_child=3) as ex:
        pids = [ex.submit(helpers.getpid).result(TIMEOUT) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5] != pids[0]
    assert pids[6] not in (pids[0], pids[3])


def test_max_tasks_per_child_under_a_burst() -> None:
    with BatchPoolExecutor(max_workers=2, max_tasks_per_child=5) as ex:
        fs = [ex.submit(helpers.getpid, i) for i in range(60)]
        pids = [f.result(TIMEOUT) for f in fs]
    for pid in set(pids):
        assert pids.count(pid) <= 5
    assert len(set(pids)) >= 12


def test_max_tasks_per_child_refuses_fork() -> None:
    import multiprocessing

    with pytest.raises(ValueError, match="max_tasks_per_child"):
        BatchPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=3)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_dead_worker_fails_its_jobs_and_the_pool_goes_on(how: str, tmp_path: Any) -> None:
    started = str(tmp_path / "started")
    with BatchPoolExecutor(max_workers=2) as ex:
        pid = ex.submit(helpers.getpid).result(TIMEOUT)
        if how == "exit":
            victim = ex.submit(helpers.exit_now, 3)
        else:
            victim = ex.submit(helpers.mark_and_sleep, started, 60, None)
            # Kill the worker that runs it once it has started (a worker killed
            # before it starts a batch is not blamed: the batch just goes again).
            helpers.wait_until(lambda: os.path.exists(started), what="the victim to start")
            for process in ex._processes.values():
                os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            victim.result(TIMEOUT)
        message = str(info.value)
        assert "exited with code 3" in message if how == "exit" else "SIGKILL" in message
        # New work still runs, on a fresh worker if need be.
        assert [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(100)]] == list(range(1, 101))
        del pid


def test_workers_exit_when_the_parent_is_killed(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from batchpool import BatchPoolExecutor
        from tests import helpers
        if __name__ == "__main__":
            ex = BatchPoolExecutor(max_workers=2)
            pids = {f.result(30) for f in [ex.submit(helpers.sleep_and_return, 0.2, None) for _ in range(4)]}
            print(" ".join(str(p.pid) for p in ex._processes.values()), flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd(), text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        workers = [psutil.Process(int(pid)) for pid in line.split()]
        assert workers
        proc.kill()
        proc.wait(TIMEOUT)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "workers outlived their killed parent"
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def test_an_idle_pool_uses_no_cpu() -> None:
    # Every wait is a sleep on a descriptor (doorbells, sentinels, the
    # lifeline), in the parent's manager thread and in the workers alike.
    me = psutil.Process()
    with BatchPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(helpers.sleep_and_return, 0.1, i) for i in range(4)]
        assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2, 3]
        workers = [psutil.Process(p.pid) for p in ex._processes.values()]
        everyone = [me, *workers]
        before = [sum(p.cpu_times()[:2]) for p in everyone]
        time.sleep(1.0)  # the measured interval, not a synchronisation
        spent = [sum(p.cpu_times()[:2]) - b for p, b in zip(everyone, before, strict=True)]
    assert max(spent) < 0.05, f"CPU seconds in 1 s of idling (parent, workers): {spent}"
