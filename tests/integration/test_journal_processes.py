"""The journal across real processes: one live owner, the lock dying with it, recovery after SIGKILL.

Children report over a pipe once they are where the test needs them; the test
then kills them with SIGKILL, as a crash or an OOM kill would.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import re
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchpool import Journal, JournalLockedError, JournalReadOnlyError, PoisonJobError
from batchpool.journal import JournalWriter
from tests import helpers

WAIT = 30.0
JOBS = 2000
RUNNING = range(0, 500)  # marked running, then the owner dies
DONE = range(500, 1000)  # finished before the owner died


def _accept_all(writer: JournalWriter) -> None:
    for i in range(JOBS):
        writer.accept(f"job-{i}", helpers.mul, (i, 2), None, key=None, priority=1, timeout=None, retry=None)


def hold(path: str, report: multiprocessing.connection.Connection) -> None:
    """Own the journal, say so, and wait to be killed."""
    writer = JournalWriter.open(path)
    writer.flush(timeout=WAIT)
    report.send(os.getpid())
    time.sleep(WAIT * 4)  # never reached in a passing test: the test kills us
    writer.close()


def hold_then_fork(path: str, report: multiprocessing.connection.Connection) -> None:
    """Own the journal, fork a child that outlives us, report its pid, and wait to be killed."""
    writer = JournalWriter.open(path)
    pid = os.fork()
    if pid == 0:  # the child: holds every inherited descriptor, but not the lock
        try:
            time.sleep(WAIT * 4)
        finally:
            os._exit(0)
    report.send(pid)
    time.sleep(WAIT * 4)
    writer.close()


def first_owner(path: str, report: multiprocessing.connection.Connection) -> None:
    """Accept JOBS jobs, run some, finish some, flush, and wait to be killed."""
    writer = JournalWriter.open(path)
    _accept_all(writer)
    writer.running([f"job-{i}" for i in (*RUNNING, *DONE)])
    for i in DONE:
        writer.done(f"job-{i}", i * 2)
    writer.flush(timeout=WAIT)
    report.send(os.getpid())
    time.sleep(WAIT * 4)
    writer.close()


def next_owner(path: str, report: multiprocessing.connection.Connection) -> None:
    """Recover, run the jobs that were running again, flush, and wait to be killed."""
    writer = JournalWriter.open(path)
    recovered = writer.unfinished()
    writer.running([job.job_id for job in recovered if job.state == "running"])
    writer.flush(timeout=WAIT)
    report.send(len(recovered))
    time.sleep(WAIT * 4)
    writer.close()


def prune_until_told(path: str, report: multiprocessing.connection.Connection) -> None:
    """Prune everything finished, again and again, until the parent says stop; report the total."""
    with Journal(path) as journal:
        report.send("started")
        pruned = 0
        while not report.poll(0):
            pruned += journal.prune(older_than=0)
        report.recv()
        report.send(pruned)


def exit_without_close(path: str, report: multiprocessing.connection.Connection) -> None:
    """Accept jobs and return without flush or close: the atexit hook writes them."""
    writer = JournalWriter.open(path)
    for i in range(100):
        writer.accept(f"job-{i}", helpers.mul, (i, 2), None, key=None, priority=1, timeout=None, retry=None)
    report.send("accepted")


@contextmanager
def child(method: str, target: Callable[..., None], path: str) -> Iterator[tuple[BaseProcess, Any]]:
    """Start ``target(path, pipe)``, wait for its report, and make sure it is dead afterwards."""
    ctx: Any = multiprocessing.get_context(method)
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(path, send))
    process.start()
    send.close()
    try:
        assert receive.poll(WAIT), f"the child ({method}) did not report; exit code {process.exitcode}"
        yield process, receive.recv()
    finally:
        receive.close()
        kill(process)


def kill(process: BaseProcess) -> None:
    """SIGKILL ``process`` and reap it.

    Waits on a pidfd, not on ``join()``: join waits for the process's sentinel
    pipe to close, and a grandchild that inherited its write end keeps it open.
    """
    if process.exitcode is None:
        os.kill(process.pid or 0, signal.SIGKILL)
        pidfd = os.pidfd_open(process.pid or 0)
        try:
            assert select.select([pidfd], [], [], WAIT)[0], f"pid {process.pid} outlived SIGKILL"
        finally:
            os.close(pidfd)
    assert process.exitcode is not None  # polling reaps it


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_live_owner_in_another_process_locks_the_journal_until_it_dies(method: str, path: str) -> None:
    with child(method, hold, path) as (process, pid):
        with pytest.raises(JournalLockedError, match=rf"{re.escape(path)}.*pid {pid}"):
            JournalWriter.open(path)
        with Journal(path) as journal:  # reading is always allowed
            assert journal.counts()["queued"] == 0
        kill(process)
        assert process.exitcode == -signal.SIGKILL
        with JournalWriter.open(path) as writer:
            assert writer.unfinished() == []


def test_a_forked_child_does_not_keep_a_dead_owners_lock(path: str) -> None:
    with child("spawn", hold_then_fork, path) as (process, grandchild_pid):
        grandchild = psutil.Process(grandchild_pid)
        try:
            with pytest.raises(JournalLockedError):
                JournalWriter.open(path)
            kill(process)
            assert grandchild.is_running()  # still alive, with the owner's descriptors
            with JournalWriter.open(path) as writer:
                writer.flush(timeout=WAIT)
        finally:
            grandchild.kill()
            grandchild.wait(WAIT)


def test_recovery_after_sigkill_charges_running_jobs_and_stops_poison(path: str) -> None:
    with child("spawn", first_owner, path) as (process, _):
        kill(process)
    with Journal(path) as journal:  # everything flushed before the kill is there
        assert journal.counts() == {"queued": 1000, "running": 500, "done": 500, "failed": 0, "cancelled": 0}
        done = journal.get("job-700")
        assert done is not None and done.result() == 1400

    # This process is the new owner: exactly the queued and running jobs come back.
    with JournalWriter.open(path) as writer:
        jobs = {job.job_id: job for job in writer.unfinished()}
        assert set(jobs) == {f"job-{i}" for i in (*RUNNING, *range(1000, JOBS))}
        for job in jobs.values():
            i = int(job.job_id.split("-")[1])
            assert (job.fn, job.args, job.kwargs, job.error, job.poison) == (helpers.mul, (i, 2), None, None, False)
            assert (job.state, job.attempts) == (("running", 1) if i in RUNNING else ("queued", 0))
        writer.running([f"job-{i}" for i in RUNNING])  # they run again, and the owner "dies" (crash 2 below)
        writer.flush(timeout=WAIT)

    with child("spawn", next_owner, path) as (process, recovered):  # charges crash 2, runs them, is killed
        assert recovered == 1500
        kill(process)

    with JournalWriter.open(path) as writer:  # crash 3: poison
        jobs = {job.job_id: job for job in writer.unfinished()}
        assert set(jobs) == {f"job-{i}" for i in (*RUNNING, *range(1000, JOBS))}
        for i in RUNNING:
            job = jobs[f"job-{i}"]
            assert job.poison and job.attempts == 3 and isinstance(job.error, PoisonJobError)
        assert not any(jobs[f"job-{i}"].poison for i in range(1000, JOBS))
    with Journal(path) as journal:
        assert journal.counts() == {"queued": 1000, "running": 0, "done": 500, "failed": 500, "cancelled": 0}
        poison = journal.get("job-0")
        assert poison is not None and poison.error_type == "batchpool.errors.PoisonJobError"


def _open_as_nobody(paths: list[str], report: multiprocessing.connection.Connection) -> None:
    # A forked child: everything it needs is imported already (root's
    # interpreter files may not be readable once we are nobody).
    os.setgid(65534)
    os.setuid(65534)
    outcomes = []
    for target in paths:
        try:
            JournalWriter.open(target).close()
            outcomes.append("opened")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    report.send(outcomes)


def test_a_read_only_directory_is_a_clear_error_at_open() -> None:
    directory = tempfile.mkdtemp(prefix="batchpool-ro-")
    try:
        existing = os.path.join(directory, "jobs.db")
        with JournalWriter.open(existing) as writer:
            writer.accept("a", abs, (-1,), None, key=None, priority=1, timeout=None, retry=None)
        os.chmod(directory, 0o555)
        paths = [existing, os.path.join(directory, "new.db")]
        if os.geteuid() != 0:
            outcomes = []
            for target in paths:
                with pytest.raises(JournalReadOnlyError) as info:
                    JournalWriter.open(target)
                outcomes.append(f"JournalReadOnlyError: {info.value}")
        else:
            # Root writes through any mode bits: a forked child drops to "nobody" instead.
            ctx = multiprocessing.get_context("fork")
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_open_as_nobody, args=(paths, send))
            process.start()
            send.close()
            try:
                assert receive.poll(WAIT)
                outcomes = receive.recv()
            finally:
                receive.close()
                kill(process)
        for target, outcome in zip(paths, outcomes, strict=True):
            assert outcome.startswith("JournalReadOnlyError: ") and target in outcome, outcome
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)


def test_prune_in_another_process_while_the_owner_writes(path: str) -> None:
    writer = JournalWriter.open(path)
    try:
        ctx = multiprocessing.get_context("spawn")
        here, there = ctx.Pipe(duplex=True)
        process = ctx.Process(target=prune_until_told, args=(path, there))
        process.start()
        there.close()
        try:
            assert here.poll(WAIT) and here.recv() == "started"
            for round_ in range(20):
                ids = [f"{round_}-{i}" for i in range(500)]
                for job_id in ids:
                    writer.accept(job_id, helpers.mul, (1, 2), None, key=None, priority=1, timeout=None, retry=None)
                writer.running(ids[:400])
                for job_id in ids[:300]:
                    writer.done(job_id, 2)
                writer.flush(timeout=WAIT)
            here.send("stop")
            assert here.poll(WAIT)
            pruned = here.recv()
        finally:
            here.close()
            kill(process)
        with Journal(path) as journal:
            counts = journal.counts()
            pruned += journal.prune(older_than=0)
        # Nothing unfinished was touched; every finished job was pruned exactly once.
        assert (counts["queued"], counts["running"]) == (20 * 100, 20 * 100)
        assert pruned == 20 * 300
    finally:
        writer.close()


def test_what_was_accepted_is_written_when_the_owner_exits_without_closing(path: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=exit_without_close, args=(path, send))
    process.start()
    send.close()
    try:
        assert receive.poll(WAIT) and receive.recv() == "accepted"
        process.join(WAIT)
        assert process.exitcode == 0
    finally:
        receive.close()
        kill(process)
    with Journal(path) as journal:
        assert journal.counts()["queued"] == 100
    with JournalWriter.open(path) as writer:  # and the lock went with the process
        assert len(writer.unfinished()) == 100
