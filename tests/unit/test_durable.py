"""Durable jobs in one process (thread backend): ids, idempotency, recover, flush, the report.

Across processes (a SIGKILLed owner, the lock) see tests/integration/test_durable.py.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from batchpool import (
    BatchPoolExecutor,
    DuplicateJobError,
    Journal,
    JournalLockedError,
    PoisonJobError,
    ResultNotKeptError,
    RetryPolicy,
    job_info,
)
from batchpool.journal import JournalWriter
from tests import durable_helpers, helpers

WAIT = 10.0


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> Iterator[threading.Event]:
    name = f"gate-{request.node.name}"
    yield durable_helpers.event(name)
    durable_helpers.drop_event(name).set()  # a failing test must not leave a worker blocked


def occupy(ex: BatchPoolExecutor, gate: threading.Event, job_id: str | None = None) -> Future[Any]:
    """Occupy the pool's one worker until ``gate`` is set."""
    gate_name = durable_helpers.event_name(gate)
    started = f"started-{gate_name}-{job_id}"
    fut = ex.options(job_id=job_id).submit(durable_helpers.block, started, gate_name)
    assert durable_helpers.event(started).wait(WAIT)
    return fut


def pool(path: str | None, **kwargs: Any) -> BatchPoolExecutor:
    kwargs.setdefault("max_workers", 1)
    return BatchPoolExecutor(backend="thread", journal=path, **kwargs)


def state(path: str, job_id: str) -> str | None:
    with Journal(path) as journal:
        job = journal.get(job_id)
    return None if job is None else job.state


# -- construction ----------------------------------------------------------------


def test_journal_options_need_a_journal() -> None:
    with pytest.raises(ValueError, match="journal_sync needs a journal"):
        BatchPoolExecutor(backend="thread", journal_sync="full")
    with pytest.raises(ValueError, match="journal_results needs a journal"):
        BatchPoolExecutor(backend="thread", journal_results=False)
    with pytest.raises(TypeError, match="journal must be a path"):
        BatchPoolExecutor(backend="thread", journal=42)  # type: ignore[arg-type]


def test_a_bad_sync_value_or_a_second_pool_raise_at_construction(path: str) -> None:
    with pytest.raises(ValueError, match="journal_sync must be 'normal' or 'full'"):
        pool(path, journal_sync="fast")
    with pool(path, journal_sync="full"):
        with pytest.raises(JournalLockedError, match=r"jobs\.db"):
            pool(path)
    pool(path).shutdown()  # shutdown released it


def test_not_a_journal_raises_at_construction(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a database at all, just text that is long enough to have a header" * 20)
    from batchpool import NotAJournalError

    with pytest.raises(NotAJournalError):
        pool(str(other))


# -- ids and idempotency --------------------------------------------------------


def test_same_id_while_queued_or_running_is_the_same_future(path: str, gate: threading.Event) -> None:
    with pool(path) as ex:
        blocker = occupy(ex, gate)
        first = ex.options(job_id="a").submit(helpers.mul, 2, 3)
        assert ex.options(job_id="a").submit(helpers.mul, 2, 3) is first
        with pytest.raises(DuplicateJobError, match="'a'"):
            ex.options(job_id="a").submit(helpers.mul, 2, 4)
        gate.set()
        assert first.result(timeout=WAIT) == 6 and blocker.result(timeout=WAIT)
        again = ex.options(job_id="a").submit(helpers.mul, 2, 3)  # done: the stored result
        assert again.result(timeout=WAIT) == 6
        assert job_info(first) is not None and job_info(first).job_id == "a"  # type: ignore[union-attr]
        with pytest.raises(DuplicateJobError):
            ex.options(job_id="a").submit(helpers.mul, 2, 4)
        assert ex.stats().completed == 2  # nothing ran twice


def test_done_job_is_answered_from_the_journal_in_a_new_pool(path: str, tmp_path: Path) -> None:
    out = str(tmp_path / "runs")
    with pool(path) as ex:
        assert ex.options(job_id="once").submit(durable_helpers.append_line, out, "once").result(timeout=WAIT) == "once"
    with pool(path) as ex:
        fut = ex.options(job_id="once").submit(durable_helpers.append_line, out, "once")
        assert fut.done() and fut.result() == "once"
    assert durable_helpers.lines(out) == ["once"]


def test_results_not_kept(path: str) -> None:
    with pool(path, journal_results=False) as ex:
        assert ex.options(job_id="a").submit(abs, -1).result(timeout=WAIT) == 1
        with pytest.raises(ResultNotKeptError, match="already ran and its result was not kept"):
            ex.options(job_id="a").submit(abs, -1).result(timeout=WAIT)


def test_failed_job_returns_its_stored_exception(path: str) -> None:
    with pool(path) as ex:
        with pytest.raises(KeyError, match="nope"):
            ex.options(job_id="f").submit(durable_helpers.fail_with, "nope").result(timeout=WAIT)
    with pool(path) as ex:
        with pytest.raises(KeyError, match="nope"):
            ex.options(job_id="f").submit(durable_helpers.fail_with, "nope").result(timeout=WAIT)
        assert ex.stats().submitted == 0


def test_generated_ids_are_unique_and_shown_by_job_info(path: str) -> None:
    with pool(path, max_workers=2) as ex:
        futures = [ex.submit(abs, -i) for i in range(50)]
        assert [f.result(timeout=WAIT) for f in futures] == list(range(50))
        ids = {job_info(f).job_id for f in futures}  # type: ignore[union-attr]
        ex.journal_flush(timeout=WAIT)
    assert len(ids) == 50 and all(isinstance(i, str) and len(i) == 32 for i in ids)
    with Journal(path) as journal:
        assert journal.counts()["done"] == 50


def test_in_memory_ids_without_a_journal(gate: threading.Event) -> None:
    with pool(None) as ex:
        first = ex.options(job_id="a").submit(helpers.mul, 2, 3)
        assert first.result(timeout=WAIT) == 6
        assert ex.options(job_id="a").submit(helpers.mul, 2, 3) is first  # remembered for the pool's life
        with pytest.raises(DuplicateJobError):
            ex.options(job_id="a").submit(helpers.mul, 3, 3)
        lock = threading.Lock()  # unpicklable: compared by identity
        held = ex.options(job_id="b").submit(helpers.echo, lock)
        assert ex.options(job_id="b").submit(helpers.echo, lock) is held
        plain = ex.submit(abs, -1)
        plain.result(timeout=WAIT)
        assert job_info(plain).job_id is None  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="needs a journal"):
            ex.recover()
        with pytest.raises(ValueError, match="needs a journal"):
            ex.journal_flush()
        assert ex.stats().journal_lag is None


def test_a_job_id_view_submits_one_job(path: str) -> None:
    with pool(path) as ex:
        view = ex.options(job_id="x")
        with pytest.raises(ValueError, match="job_id='x'"):
            view.map(abs, [1, 2])
        with pytest.raises(TypeError, match="job_id must be a str"):
            ex.options(job_id=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must not be empty"):
            ex.options(job_id="")


# -- pickling at submit -----------------------------------------------------------


def test_unpicklable_argument_fails_at_once(path: str) -> None:
    with pool(path) as ex:
        fut = ex.options(job_id="bad").submit(helpers.echo, threading.Lock())
        assert fut.done()
        with pytest.raises(TypeError, match="pickle"):
            fut.result()
        assert ex.submit(abs, -1).result(timeout=WAIT) == 1
        ex.journal_flush(timeout=WAIT)
    assert state(path, "bad") is None


def test_unpicklable_result_is_returned_and_recorded_not_kept(path: str) -> None:
    with pool(path) as ex:
        lock = ex.options(job_id="r").submit(threading.Lock).result(timeout=WAIT)
        assert hasattr(lock, "acquire")
    with Journal(path) as journal:
        job = journal.get("r")
    assert job is not None and job.state == "done" and not job.result_kept
    with pool(path) as ex:
        with pytest.raises(ResultNotKeptError):
            ex.options(job_id="r").submit(threading.Lock).result(timeout=WAIT)


def test_map_works_with_a_journal(path: str) -> None:
    with pool(path, max_workers=2) as ex:
        assert list(ex.map(abs, range(-300, 0), timeout=WAIT)) == list(range(300, 0, -1))
        ex.journal_flush(timeout=WAIT)
    with Journal(path) as journal:
        counts = journal.counts()
    assert counts["done"] >= 1 and counts["queued"] == counts["running"] == 0


# -- cancelling, shutdown, recover ---------------------------------------------------


def test_user_cancel_is_recorded_and_cancel_futures_stays_recoverable(path: str, gate: threading.Event) -> None:
    ex = pool(path)
    blocker = occupy(ex, gate)
    mine = ex.options(job_id="mine").submit(abs, -1)
    cut = [ex.options(job_id=f"cut-{i}").submit(abs, -i) for i in range(3)]
    assert mine.cancel()
    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    ex.shutdown(wait=True)
    assert blocker.result(timeout=WAIT) and all(f.cancelled() for f in cut)
    assert state(path, "mine") == "cancelled"
    assert [state(path, f"cut-{i}") for i in range(3)] == ["queued"] * 3
    with pool(path) as again:
        futures = again.recover()
        assert sorted(futures) == ["cut-0", "cut-1", "cut-2"]
        assert [futures[f"cut-{i}"].result(timeout=WAIT) for i in range(3)] == [0, 1, 2]
        assert again.recover() == {}


def test_shutdown_deadline_leaves_jobs_recoverable(path: str, gate: threading.Event) -> None:
    ex = pool(path)
    running = occupy(ex, gate, "running")
    queued = ex.options(job_id="queued").submit(abs, -5)
    ex.shutdown(wait=True, timeout=0.2)  # the thread cannot be stopped: it is abandoned
    gate.set()
    assert running.exception(timeout=WAIT) is not None and queued.done()
    assert state(path, "running") == "queued" and state(path, "queued") == "queued"
    with pool(path) as again:
        futures = again.recover()
        assert futures["queued"].result(timeout=WAIT) == 5
        assert futures["running"].result(timeout=WAIT) is True


def test_recover_redrives_failed_jobs_with_failed_true(path: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    with pool(path) as ex:
        with pytest.raises(ConnectionError):
            ex.options(job_id="flaky").submit(helpers.flaky, counter, 1).result(timeout=WAIT)
    with pool(path) as ex:
        assert ex.recover() == {}  # failed is final...
    with pool(path) as ex:
        futures = ex.recover(failed=True)  # ...unless redriven
        assert futures["flaky"].result(timeout=WAIT) == 2
    assert state(path, "flaky") == "done"


def test_recover_keeps_options_and_attempts(path: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    policy = RetryPolicy(max_attempts=3, backoff=0.001, jitter=False)
    with JournalWriter.open(path) as writer:  # a dead owner's journal: attempt 1 failed, retry queued
        writer.accept("r", helpers.flaky, (counter, 10), None, key="api", priority=0, timeout=5.0, retry=policy)
        writer.retrying("r", 1)
    with pool(path) as ex:
        fut = ex.recover()["r"]
        with pytest.raises(ConnectionError):
            fut.result(timeout=WAIT)
    assert len(Path(counter).read_text()) == 2  # attempts 2 and 3 only
    with Journal(path) as journal:
        job = journal.get("r")
    assert job is not None and job.attempts == 3 and job.key == "api" and job.priority == 0


def test_recover_reports_poison_and_unloadable_jobs(path: str, tmp_path: Path) -> None:
    module = tmp_path / "gone_soon.py"
    module.write_text("def work(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_soon  # type: ignore[import-not-found]

        with JournalWriter.open(path) as writer:
            writer.accept("poison", abs, (-1,), None, retry=RetryPolicy(max_attempts=1))
            writer.running(["poison"])  # its owner died with it running, out of attempts
            writer.accept("gone", gone_soon.work, (1,), None)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_soon", None)
    with pool(path) as ex:
        futures = ex.recover()
        with pytest.raises(PoisonJobError, match="'poison'"):
            futures["poison"].result(timeout=WAIT)
        with pytest.raises(ModuleNotFoundError, match="gone_soon"):
            futures["gone"].result(timeout=WAIT)
        ex.journal_flush(timeout=WAIT)
    assert state(path, "poison") == state(path, "gone") == "failed"


# -- flushing, stats, lifetimes -------------------------------------------------------


def test_journal_flush_times_out_while_the_disk_is_slow(path: str) -> None:
    slow = threading.Event()
    with pool(path) as ex:
        writer = ex._durable.writer
        assert writer is not None
        writer._before_commit = lambda: slow.wait(WAIT)
        fut = ex.submit(abs, -1)
        assert fut.result(timeout=WAIT) == 1  # submit and the job never wait for the disk
        with pytest.raises(TimeoutError, match="not committed"):
            ex.journal_flush(timeout=0.05)
        stats = ex.stats()
        assert stats.journal_lag is not None and stats.journal_lag >= 1
        assert stats.journal_lag_seconds is not None and stats.journal_commits_per_s is not None
        slow.set()
        ex.journal_flush(timeout=WAIT)
        assert ex.stats().journal_lag == 0
    with pytest.raises(ValueError, match="timeout"):
        pool(None).journal_flush(timeout=-1)


def test_a_pool_collected_unreferenced_releases_its_journal(path: str) -> None:
    ex = pool(path)
    assert ex.submit(abs, -1).result(timeout=WAIT) == 1
    del ex
    gc.collect()
    helpers.wait_until(lambda: _opens(path), timeout=WAIT, what="the journal to be released")
    assert state(path, next(iter(_ids(path)))) == "done"


def test_shutdown_without_wait_releases_the_journal_when_drained(path: str) -> None:
    ex = pool(path)
    fut = ex.submit(helpers.sleep_and_return, 0.05, 7)
    ex.shutdown(wait=False)
    assert fut.result(timeout=WAIT) == 7
    helpers.wait_until(lambda: _opens(path), timeout=WAIT, what="the journal to be released")


def _opens(path: str) -> bool:
    try:
        JournalWriter.open(path).close()
    except JournalLockedError:
        return False
    return True


def _ids(path: str) -> list[str]:
    with Journal(path) as journal:
        return [row[0] for row in journal._query("SELECT job_id FROM bp_jobs")]


# -- the failure report ------------------------------------------------------------


def test_failure_report_and_cli(path: str) -> None:
    with pool(path, max_workers=2) as ex:
        futures = [ex.options(job_id=f"bad-{i}").submit(durable_helpers.fail_with, f"no {i}") for i in range(3)]
        good = ex.submit(abs, -1)
        assert all(isinstance(f.exception(timeout=WAIT), KeyError) for f in futures) and good.result(timeout=WAIT)
    with Journal(path) as journal:
        failed = list(journal.failed())
    assert sorted(job.job_id for job in failed) == ["bad-0", "bad-1", "bad-2"]
    assert {job.error_type for job in failed} == {"KeyError"}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "batchpool", "journal", path, "--failed", "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert all(f"bad-{i}" in text for i in range(3)) and "KeyError" in text
