"""Shared fixtures. The autouse ``no_leaks`` fixture checks every test leaves
no child process, thread or /dev/shm segment behind."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

LEAK_DEADLINE = 10.0


def _service_pids() -> set[int]:
    """Long-lived helpers multiprocessing keeps for the whole session."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        if pid:
            pids.add(pid)
        pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        if pid:
            pids.add(pid)
    except ImportError:  # pragma: no cover
        pass
    return pids


def _shm_entries() -> set[str]:
    # multiprocessing's own semaphores ("sem.mp-*", used by the standard pools
    # of the control runs and by Manager) are unlinked when collected; ours
    # are the pool's segments.
    try:
        return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    shm_before = _shm_entries()
    yield
    deadline = time.monotonic() + LEAK_DEADLINE
    # Threads: a pool's threads may still be finishing their last statement.
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(max(0.0, deadline - time.monotonic()))
    stray_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    ignore = children_before | _service_pids()
    new = [p for p in me.children(recursive=True) if p.pid not in ignore]
    _, alive = psutil.wait_procs(new, timeout=max(0.1, deadline - time.monotonic()))
    # Reap our own zombies so later tests do not count them.
    for child in multiprocessing.active_children():
        child.join(0)
    stray_shm = sorted(_shm_entries() - shm_before)
    assert not stray_threads, f"threads outlived the test: {stray_threads}"
    assert not alive, f"child processes outlived the test: {[p.pid for p in alive]}"
    assert not stray_shm, f"/dev/shm segments outlived the test: {stray_shm}"
