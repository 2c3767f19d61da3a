"""Callables and child-process entry points for the durable-jobs tests.

Worker processes import the job functions by name; the ``*_main`` functions
run in a child interpreter started with ``python -c`` (its own session, so a
test can SIGKILL its whole process group, workers included, as a crash or an
OOM kill of a service would).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

WAIT = 30.0


def append_line(path: str, text: str, seconds: float = 0.0) -> str:
    """Record one run of the job ``text`` (one O_APPEND write, atomic), then sleep as work."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return text


def lines(path: str) -> list[str]:
    """The runs recorded by ``append_line``, in order."""
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def fail_with(message: str) -> None:
    raise KeyError(message)


def child_command(code: str) -> list[str]:
    """``python -c code`` with this interpreter."""
    return [sys.executable, "-c", code]


def crash_owner_main(journal: str, out: str, jobs: int, seconds: float) -> None:
    """Submit ``jobs`` journaled jobs, flush, say so on stdout, and run until killed."""
    from batchpool import BatchPoolExecutor

    ex = BatchPoolExecutor(2, journal=journal)
    for i in range(jobs):
        ex.options(job_id=f"job-{i}").submit(append_line, out, f"job-{i}", seconds)
    ex.journal_flush(timeout=WAIT)
    print("flushed", flush=True)
    time.sleep(WAIT * 4)  # never reached in a passing test: the test kills us


def hold_main(journal: str) -> None:
    """Own the journal, say so, and wait to be killed."""
    from batchpool import BatchPoolExecutor

    ex = BatchPoolExecutor(1, backend="thread", journal=journal)
    print("ready", flush=True)
    time.sleep(WAIT * 4)
    ex.shutdown()


def run_once_main(journal: str, out: str) -> None:
    """Run the job "once" to its end and shut down cleanly."""
    from batchpool import BatchPoolExecutor

    with BatchPoolExecutor(1, journal=journal) as ex:
        result: Any = ex.options(job_id="once").submit(append_line, out, "once").result(timeout=WAIT)
        print(result, flush=True)


# Events by name: a journaled pool pickles every call, and an Event does not
# pickle, so thread-backend jobs name their gates instead. Looked up under a
# lock: a defaultdict's __missing__ runs Python code (Event()), so a worker and
# the test missing one name at once could each make an Event of their own,
# and the test would wait on the one nobody sets.
EVENTS: dict[str, threading.Event] = {}
_EVENTS_LOCK = threading.Lock()


def event(name: str) -> threading.Event:
    """The event called ``name``, made on first use (by whichever thread asks first)."""
    with _EVENTS_LOCK:
        found = EVENTS.get(name)
        if found is None:
            found = EVENTS[name] = threading.Event()
        return found


def event_name(wanted: threading.Event) -> str:
    """The name ``wanted`` was made under."""
    with _EVENTS_LOCK:
        return next(name for name, found in EVENTS.items() if found is wanted)


def drop_event(name: str) -> threading.Event:
    """Forget the event ``name`` and return it."""
    with _EVENTS_LOCK:
        return EVENTS.pop(name)


def block(started: str, gate: str) -> bool:
    """Set the event ``started``, then wait for the event ``gate`` (thread backend)."""
    event(started).set()
    return event(gate).wait(WAIT)


def exit_without_shutdown_main(journal: str, jobs: int) -> None:
    """Submit journaled jobs and leave: interpreter exit drains the pool, then commits the journal."""
    from batchpool import BatchPoolExecutor

    ex = BatchPoolExecutor(2, journal=journal)
    for i in range(jobs):
        ex.options(job_id=f"job-{i}").submit(time.sleep, 0.001)
