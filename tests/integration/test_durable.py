"""Durable jobs across real processes: the owner SIGKILLed mid-run, recovery in a new process.

The owner runs in a child interpreter of its own session, so that SIGKILL of
its process group takes its workers too, as an OOM kill of a service would;
the test process is the "next" process that opens the journal and recovers.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpool import BatchPoolExecutor, Journal, JournalLockedError
from tests import durable_helpers, helpers

WAIT = 30.0
JOBS = 2000
ROOT = str(Path(__file__).parent.parent.parent)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Start children; any still alive at the end are killed with their process group."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(WAIT)
        if child.stdout is not None:
            child.stdout.close()


def start(children: list[subprocess.Popen[str]], code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    child = subprocess.Popen(
        durable_helpers.child_command(code), cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    children.append(child)
    return child


def expect_line(child: subprocess.Popen[str], text: str) -> None:
    assert child.stdout is not None
    line = child.stdout.readline().strip()  # bounded: the child prints it or dies (EOF)
    assert line == text, f"child said {line!r} (exit code {child.poll()})"


def kill_group(child: subprocess.Popen[str]) -> None:
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(WAIT) == -signal.SIGKILL
    # The workers were in the group: wait until none is left writing.
    pgid = child.pid
    helpers.wait_until(lambda: not _group_alive(pgid), timeout=WAIT, what="the killed group to end")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_recover_after_the_owner_is_sigkilled(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    journal, out = str(tmp_path / "jobs.db"), str(tmp_path / "runs")
    owner = start(
        spawn, f"from tests import durable_helpers as d; d.crash_owner_main({journal!r}, {out!r}, {JOBS}, 0.002)"
    )
    expect_line(owner, "flushed")
    helpers.wait_until(lambda: len(durable_helpers.lines(out)) >= 100, timeout=WAIT, what="100 jobs to run")
    kill_group(owner)

    ran_before = collections.Counter(durable_helpers.lines(out))
    with Journal(journal) as reader:
        counts = reader.counts()
        done_before = {job_id for job_id in ran_before if (job := reader.get(job_id)) and job.state == "done"}
    assert sum(counts.values()) == JOBS  # every job was committed before the kill (journal_flush)
    assert counts["done"] < JOBS, "the kill came after the end: nothing to recover"

    with BatchPoolExecutor(2, journal=journal) as ex:
        futures = ex.recover()
        assert len(futures) == JOBS - counts["done"]
        assert {f.result(timeout=WAIT) for f in futures.values()} == set(futures)
        assert ex.recover() == {}

    runs = collections.Counter(durable_helpers.lines(out))
    assert set(runs) == {f"job-{i}" for i in range(JOBS)}  # every job ran at least once
    again = {job_id for job_id, n in runs.items() if n > 1}
    assert not again & done_before  # none recorded done before the kill ran again
    # Re-runs are bounded by what was in flight: started before the kill, not committed done.
    assert again <= set(ran_before) - done_before
    assert max(runs.values()) <= 2
    with Journal(journal) as reader:
        assert reader.counts()["done"] == JOBS


def test_a_job_done_in_one_process_is_not_run_in_the_next(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    journal, out = str(tmp_path / "jobs.db"), str(tmp_path / "runs")
    first = start(spawn, f"from tests import durable_helpers as d; d.run_once_main({journal!r}, {out!r})")
    expect_line(first, "once")
    assert first.wait(WAIT) == 0
    with BatchPoolExecutor(1, journal=journal) as ex:
        fut = ex.options(job_id="once").submit(durable_helpers.append_line, out, "once")
        assert fut.result(timeout=WAIT) == "once"
        assert ex.stats().submitted == 0
    assert durable_helpers.lines(out) == ["once"]


def test_one_live_owner_and_the_lock_dies_with_it(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    journal = str(tmp_path / "jobs.db")
    holder = start(spawn, f"from tests import durable_helpers as d; d.hold_main({journal!r})")
    expect_line(holder, "ready")
    with pytest.raises(JournalLockedError, match=r"jobs\.db") as caught:
        BatchPoolExecutor(1, journal=journal)
    assert str(holder.pid) in str(caught.value)
    kill_group(holder)
    with BatchPoolExecutor(1, journal=journal) as ex:
        assert ex.submit(abs, -3).result(timeout=WAIT) == 3


def test_process_backend_journals_every_outcome(tmp_path: Path) -> None:
    journal = str(tmp_path / "jobs.db")
    with BatchPoolExecutor(2, journal=journal) as ex:
        good = [ex.submit(helpers.mul, i, 2) for i in range(200)]
        bad = ex.options(job_id="bad").submit(durable_helpers.fail_with, "x")
        assert [f.result(timeout=WAIT) for f in good] == [2 * i for i in range(200)]
        assert isinstance(bad.exception(timeout=WAIT), KeyError)
        ex.journal_flush(timeout=WAIT)
        stats = ex.stats()
        assert stats.journal_lag == 0 and stats.journal_commits_per_s is not None
    with Journal(journal) as reader:
        assert reader.counts() == {"queued": 0, "running": 0, "done": 200, "failed": 1, "cancelled": 0}


def test_interpreter_exit_runs_the_queued_jobs_and_commits(tmp_path: Path, spawn: list[subprocess.Popen[str]]) -> None:
    journal = str(tmp_path / "jobs.db")
    child = start(spawn, f"from tests import durable_helpers as d; d.exit_without_shutdown_main({journal!r}, 300)")
    assert child.wait(WAIT) == 0
    with Journal(journal) as reader:
        assert reader.counts()["done"] == 300
