"""map_pages on the thread backend: pipelining, bounds, progress, failures, resumable runs.

Synchronised with Events and Futures; time-dependent parts (stuck pages) use a
fake clock. Every wait is bounded.
"""

from __future__ import annotations

import gc
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool import (
    BatchPoolExecutor,
    ExecutorView,
    Priority,
    RetryPolicy,
    Run,
    RunFailedError,
    RunFinishedError,
    RunStore,
    live_runs,
)
from tests.helpers import wait_until

WAIT = 10.0
NO_RETRY = RetryPolicy(max_attempts=1)
FAST_RETRY = RetryPolicy(max_attempts=3, backoff=0, jitter=False)


@pytest.fixture
def ex() -> Iterator[BatchPoolExecutor]:
    pool = BatchPoolExecutor(max_workers=2, backend="thread")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def single() -> Iterator[BatchPoolExecutor]:
    """A pool that sends one job per batch (a blocked job holds no other behind it)."""
    pool = BatchPoolExecutor(max_workers=2, backend="thread", max_batch_size=1)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def pages_of(n_pages: int, size: int) -> Callable[[int], tuple[list[int], int | None]]:
    """A source of ``n_pages`` pages of ``size`` consecutive ints; cursors 0, 1, ..."""

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        items = list(range(cursor * size, (cursor + 1) * size))
        return items, (cursor + 1 if cursor + 1 < n_pages else None)

    return fetch


def double(x: int) -> int:
    return 2 * x


def run_threads(run: Run) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"batchpool-run-{run.run_id}-")]


# -- results ----------------------------------------------------------------------------


def test_results_complete_in_completion_order(ex: BatchPoolExecutor) -> None:
    with ex.map_pages(pages_of(5, 4), double, 0) as run:
        results = list(run)
    assert sorted(results) == [2 * x for x in range(20)]
    p = run.progress
    assert (p.pages_done, p.pages_running, p.items_done, p.items_failed, p.finished) == (5, 0, 20, 0, True)
    assert p.slowest is None


def test_ordered_keeps_page_then_item_order(ex: BatchPoolExecutor) -> None:
    def slow_firsts(x: int) -> int:
        if x % 4 == 0:
            time.sleep(0.02)  # simulated work: the first item of each page finishes last
        return x

    with ex.map_pages(pages_of(3, 4), slow_firsts, 0, ordered=True, prefetch=3) as run:
        assert list(run) == list(range(12))


def test_empty_source_and_empty_pages(ex: BatchPoolExecutor) -> None:
    assert list(ex.map_pages(lambda c: ([], None), double)) == []
    source = {0: ([], 1), 1: ([5], 2), 2: ([], None)}
    assert list(ex.map_pages(source.__getitem__, double, 0, ordered=True)) == [10]


def test_a_view_applies_its_options(ex: BatchPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Priority, object]] = []
    submit = ExecutorView.submit

    def spy(self: ExecutorView, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        seen.append((self.opts.priority, self.opts.key))
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ExecutorView, "submit", spy)
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(x: int) -> int:
        with lock:
            attempts[x] = attempts.get(x, 0) + 1
            if attempts[x] < 3:
                raise ConnectionError(f"attempt {attempts[x]}")
        return x

    view = ex.options(priority=Priority.BULK, key="pages", retry=FAST_RETRY)
    with view.map_pages(pages_of(2, 3), flaky, 0) as run:
        assert sorted(run) == list(range(6))  # the view's retry policy let every item through
    assert seen == [(Priority.BULK, "pages")] * 6
    assert all(n == 3 for n in attempts.values())


# -- pipelining and bounds --------------------------------------------------------------


def test_next_fetch_starts_before_the_previous_page_is_processed(ex: BatchPoolExecutor) -> None:
    fetched = [threading.Event() for _ in range(3)]
    release = threading.Event()

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        fetched[cursor].set()
        return [cursor], (cursor + 1 if cursor < 2 else None)

    def held(x: int) -> int:
        assert release.wait(WAIT)
        return x

    with ex.map_pages(fetch, held, 0, prefetch=2) as run:
        assert fetched[1].wait(WAIT), "page 1 was not fetched while page 0's item ran"
        assert run.progress.items_done == 0
        release.set()
        assert sorted(run) == [0, 1, 2]


def test_endless_source_with_early_stop_stays_bounded(ex: BatchPoolExecutor) -> None:
    size, prefetch, wanted = 5, 2, 23
    calls: list[int] = []

    def fetch(cursor: int) -> tuple[list[int], int]:
        calls.append(cursor)
        return list(range(cursor * size, (cursor + 1) * size)), cursor + 1

    run = ex.map_pages(fetch, double, 0, prefetch=prefetch)
    got = list(itertools.islice(run, wanted))
    assert len(got) == wanted
    threads = run_threads(run)
    assert threads
    run.close()
    assert not any(t.is_alive() for t in threads)
    assert len(calls) <= wanted // size + prefetch + 1
    assert run.progress.finished
    assert live_runs(ex) == []


def test_with_block_and_garbage_collection_stop_the_run(ex: BatchPoolExecutor) -> None:
    def endless(cursor: int) -> tuple[list[int], int]:
        return [cursor], cursor + 1

    with ex.map_pages(endless, double, 0) as run:
        assert next(run) in (0, 2)
        threads = run_threads(run)
    assert not any(t.is_alive() for t in threads)

    for _ in ex.map_pages(endless, double, 0, run_id="dropped"):
        break
    threads = [t for t in threading.enumerate() if t.name.startswith("batchpool-run-dropped-")]
    gc.collect()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)


def test_close_waits_for_a_fetch_thread_caught_inside_a_submit_that_returns(ex: BatchPoolExecutor) -> None:
    # close() used to skip the fetch thread whenever it was inside submit()
    # (meant for a submit blocked by a full pool), so a run closed mid-submit
    # left its thread running after the with block.
    inside, leave = threading.Event(), threading.Event()
    real_submit = ex.submit

    def slow_submit(fn: Any, *args: Any) -> Any:
        if not inside.is_set():
            inside.set()
            assert leave.wait(WAIT)
        return real_submit(fn, *args)

    ex.submit = slow_submit  # type: ignore[method-assign]
    run = ex.map_pages(pages_of(100, 10), double, 0)
    assert inside.wait(WAIT)
    threads = run_threads(run)
    core = run._core
    real_join = core.join

    def join() -> None:
        leave.set()  # the submit returns as close() begins to wait
        real_join()

    core.join = join  # type: ignore[method-assign]
    run.close()
    assert not any(t.is_alive() for t in threads)


def test_items_are_bounded_by_max_pending_and_close_does_not_wait_for_a_full_pool() -> None:
    release = threading.Event()
    started: list[int] = []

    def held(x: int) -> int:
        started.append(x)
        assert release.wait(WAIT)
        return x

    pool = BatchPoolExecutor(max_workers=1, backend="thread", max_pending=3, max_batch_size=1)
    try:
        run = pool.map_pages(pages_of(1000, 10), held, 0)
        wait_until(lambda: started and pool.stats().queued == 3, WAIT, "a full queue")
        assert run.progress.pages_running == 1  # the fetch thread waits in submit()
        threads = run_threads(run)
        run.close()  # returns at once: cancelled jobs hold their place in the pool until dispatched
        release.set()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert started == [0]  # the queued items, and the one whose submit was blocked, never ran


# -- stuck pages ------------------------------------------------------------------------


def test_a_stuck_page_is_reported_and_blocks_no_other_page(ex: BatchPoolExecutor) -> None:
    now = [0.0]
    release = threading.Event()
    reported: list[tuple[int, float]] = []

    def slow_zero(x: int) -> int:
        if x == 0:
            assert release.wait(WAIT)
        return x

    def broken_listener(cursor: int, age: float) -> None:
        raise RuntimeError("a listener bug must not stop the run")

    # One job per batch: the blocked item must not hold another one behind it in its batch.
    big = BatchPoolExecutor(max_workers=3, backend="thread", max_batch_size=1)
    try:
        run = big.map_pages(pages_of(4, 2), slow_zero, 0, prefetch=3, stuck_after=10.0, clock=lambda: now[0])
        run.add_listener(on_page_stuck=broken_listener)
        run.add_listener(on_page_stuck=lambda cursor, age: reported.append((cursor, age)))
        others = sorted(itertools.islice(run, 7))  # every item but the stuck one, in completion order
        assert others == list(range(1, 8))
        assert run.progress.pages_stuck == 0
        now[0] = 100.0
        wait_until(lambda: reported, WAIT, "the on_page_stuck listener")
        p = run.progress
        assert (p.pages_stuck, p.pages_running, p.pages_done) == (1, 1, 3)
        assert p.slowest == (0, 100.0)
        assert reported == [(0, 100.0)]
        release.set()
        assert list(run) == [0]
        assert reported == [(0, 100.0)]  # once per page
        assert run.progress.pages_stuck == 0
    finally:
        release.set()
        big.shutdown(wait=True)


def test_ordered_stuck_page_holds_output_and_fetching_waits(single: BatchPoolExecutor) -> None:
    release = threading.Event()
    calls: list[int] = []

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        calls.append(cursor)
        return [cursor], (cursor + 1 if cursor < 9 else None)

    def slow_zero(x: int) -> int:
        if x == 0:
            assert release.wait(WAIT)
        return x

    with single.map_pages(fetch, slow_zero, 0, prefetch=3, ordered=True) as run:
        wait_until(lambda: run.progress.pages_done == 2, WAIT, "pages 1 and 2")
        assert calls == [0, 1, 2]  # prefetch pages ahead, then it waits for page 0
        release.set()
        assert list(run) == list(range(10))


# -- failures ---------------------------------------------------------------------------


def fail_on(*bad: int) -> Callable[[int], int]:
    def process(x: int) -> int:
        if x in bad:
            raise ValueError(f"bad item {x}")
        return x

    return process


def test_first_failure_raises_and_stops_the_run(ex: BatchPoolExecutor) -> None:
    calls: list[int] = []

    def endless(cursor: int) -> tuple[list[int], int]:
        calls.append(cursor)
        return list(range(cursor * 4, cursor * 4 + 4)), cursor + 1

    run = ex.map_pages(endless, fail_on(5), 0)
    with pytest.raises(ValueError, match="bad item 5"):
        list(run)
    assert run.progress.finished and run.progress.items_failed == 1
    assert not run_threads(run)
    assert len(calls) <= 4  # page 1 holds item 5; at most prefetch pages beyond it
    with pytest.raises(StopIteration):
        next(run)


def test_ordered_first_failure_raises_at_its_place(ex: BatchPoolExecutor) -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 2"):
        for x in ex.map_pages(pages_of(3, 4), fail_on(2), 0, ordered=True):
            got.append(x)
    assert got == [0, 1]


def test_a_count_budget_leaves_failures_out(ex: BatchPoolExecutor) -> None:
    with ex.map_pages(pages_of(4, 5), fail_on(3, 17), 0, tolerated_failure=2) as run:
        assert sorted(run) == [x for x in range(20) if x not in (3, 17)]
    assert sorted(item for item, _ in run.failures) == [3, 17]
    assert all(isinstance(exc, ValueError) for _, exc in run.failures)
    assert (run.progress.items_failed, run.progress.pages_failed) == (2, 2)


def test_past_a_count_budget_the_run_fails(ex: BatchPoolExecutor) -> None:
    run = ex.map_pages(pages_of(4, 5), fail_on(3, 9, 17), 0, tolerated_failure=2, run_id="budget")
    with pytest.raises(RunFailedError, match=r"run 'budget': 3 of \d+ completed items failed") as info:
        list(run)
    assert info.value.count == 3
    assert isinstance(info.value.__cause__, ValueError)
    assert len(info.value.failures) == 3


def test_a_share_budget_is_judged_from_twenty_items(ex: BatchPoolExecutor) -> None:
    # The first item fails: 100 % of one item, but the share is judged from 20 items on.
    with ex.map_pages(pages_of(4, 10), fail_on(0, 25), 0, tolerated_failure=0.1, ordered=True) as run:
        assert list(run) == [x for x in range(40) if x not in (0, 25)]
    bad = set(range(0, 40, 3))  # 14 of 40 fail
    with pytest.raises(RunFailedError):
        list(ex.map_pages(pages_of(4, 10), fail_on(*bad), 0, tolerated_failure=0.1))


def test_fetch_is_retried_then_fails_the_run_with_its_cursor(ex: BatchPoolExecutor) -> None:
    calls: list[int] = []

    def fetch(cursor: int) -> tuple[list[int], int]:
        calls.append(cursor)
        if cursor == 2:
            raise ConnectionError("source down")
        return [cursor], cursor + 1

    run = ex.map_pages(fetch, double, 0, fetch_retry=FAST_RETRY)
    with pytest.raises(ConnectionError, match="source down") as info:
        list(run)
    assert getattr(info.value, "cursor", None) == 2
    assert calls.count(2) == 3
    assert run.progress.pages_failed == 1


def test_a_flaky_fetch_recovers(ex: BatchPoolExecutor) -> None:
    failures = iter([True, True])

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        if cursor == 1 and next(failures, False):
            raise TimeoutError("slow source")
        return [cursor], (cursor + 1 if cursor < 2 else None)

    assert sorted(ex.map_pages(fetch, double, 0, fetch_retry=FAST_RETRY)) == [0, 2, 4]


def test_a_bad_page_shape_fails_the_run(ex: BatchPoolExecutor) -> None:
    with pytest.raises(TypeError, match=r"fetch_page must return a tuple \(items, next_cursor\)"):
        list(ex.map_pages(lambda c: [1, 2], double, fetch_retry=None))


# -- arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"fetch_page": 3}, TypeError, "fetch_page"),
        ({"process_item": None}, TypeError, "process_item"),
        ({"prefetch": 0}, ValueError, "prefetch"),
        ({"prefetch": 1.5}, TypeError, "prefetch"),
        ({"prefetch": True}, TypeError, "prefetch"),
        ({"run_id": 7}, TypeError, "run_id"),
        ({"run_id": ""}, ValueError, "run_id"),
        ({"stuck_after": 0}, ValueError, "stuck_after"),
        ({"stuck_after": "1"}, TypeError, "stuck_after"),
        ({"tolerated_failure": 1.0}, ValueError, "tolerated_failure"),
        ({"tolerated_failure": -1}, ValueError, "tolerated_failure"),
        ({"tolerated_failure": "5%"}, TypeError, "tolerated_failure"),
        ({"ordered": 1}, TypeError, "ordered"),
        ({"fetch_retry": 3}, TypeError, "fetch_retry"),
        ({"store": 3}, TypeError, "store"),
        ({"keep_results": None}, TypeError, "keep_results"),
        ({"clock": 0.0}, TypeError, "clock"),
    ],
)
def test_arguments_are_checked(ex: BatchPoolExecutor, kwargs: dict[str, Any], error: type, name: str) -> None:
    args: dict[str, Any] = {"fetch_page": pages_of(1, 1), "process_item": double, "run_id": "args"}
    args.update(kwargs)
    with pytest.raises(error, match=name):
        ex.map_pages(args.pop("fetch_page"), args.pop("process_item"), 0, **args)
    assert live_runs(ex) == []


def test_a_cursor_that_cannot_pickle_is_refused_with_a_store(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"first_cursor .* cannot be pickled"):
        ex.map_pages(pages_of(1, 1), double, threading.Lock(), run_id="lock", store=tmp_path / "r.db")


def test_on_page_stuck_needs_stuck_after(ex: BatchPoolExecutor) -> None:
    with ex.map_pages(pages_of(1, 1), double, 0) as run:
        with pytest.raises(ValueError, match="stuck_after"):
            run.add_listener(on_page_stuck=print)
        list(run)


# -- resumable runs ---------------------------------------------------------------------


def refuse(*_: Any) -> Any:
    raise AssertionError("a finished run must run nothing")


def test_a_finished_run_yields_its_recorded_results(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = list(ex.map_pages(pages_of(3, 4), double, 0, run_id="done", store=db, ordered=True))
    with ex.map_pages(refuse, refuse, 0, run_id="done", store=db, ordered=True) as replay:
        assert list(replay) == first == [2 * x for x in range(12)]
        assert (replay.progress.pages_done, replay.progress.items_done, replay.progress.finished) == (3, 12, True)
    with RunStore(db) as store:
        assert store.runs() == [("done", "finished")]


def test_a_finished_run_without_results_raises(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert len(list(ex.map_pages(pages_of(2, 2), double, 0, run_id="nores", store=db, keep_results=False))) == 4
    with pytest.raises(RunFinishedError, match="nores"):
        ex.map_pages(refuse, refuse, 0, run_id="nores", store=db)


def test_a_live_run_id_is_refused(ex: BatchPoolExecutor) -> None:
    gate = threading.Event()

    def fetch(cursor: int) -> tuple[list[int], None]:
        assert gate.wait(WAIT)
        return [1], None

    with ex.map_pages(fetch, double, run_id="busy") as run:
        assert live_runs(ex) == [run]
        assert live_runs(ex.options(priority=Priority.BULK)) == [run]
        with pytest.raises(ValueError, match="'busy' names a run of this pool that is still live"):
            ex.map_pages(fetch, double, run_id="busy")
        gate.set()
        assert list(run) == [2]
    assert live_runs(ex) == []
    assert list(ex.map_pages(fetch, double, run_id="busy")) == [2]  # ended: the id is free again


def test_a_closed_run_resumes_where_it_stopped(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    processed: list[int] = []
    lock = threading.Lock()

    def record(x: int) -> int:
        with lock:
            processed.append(x)
        return x

    with ex.map_pages(pages_of(6, 3), record, 0, run_id="resume", store=db, prefetch=2) as run:
        first = list(itertools.islice(run, 7))
    with RunStore(db) as store:
        done = store.pages_done("resume")
        assert store.runs() == [("resume", "closed")]
    assert done  # at least the first pages were recorded finished
    before = list(processed)
    with ex.map_pages(pages_of(6, 3), record, 0, run_id="resume", store=db, ordered=True) as again:
        assert list(again) == list(range(18))  # recorded results included
    rerun = processed[len(before) :]
    finished_items = {x for seq in done for x in range(seq * 3, seq * 3 + 3)}
    assert not finished_items & set(rerun)
    assert set(before) | set(rerun) == set(range(18))
    assert len(first) == 7


def test_the_store_shares_its_file_with_other_tables(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
    other.execute("INSERT INTO jobs (state) VALUES ('queued')")
    other.commit()
    with RunStore(db) as store:
        store.start("r", keep_results=True)
        assert store.runs() == [("r", "running")]
    tables = {name for (name,) in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"jobs", "bp_runs", "bp_run_pages", "bp_run_items"}
    assert other.execute("SELECT state FROM jobs").fetchall() == [("queued",)]
    other.close()


def test_the_pools_journal_is_the_default_store(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.db")
    with BatchPoolExecutor(max_workers=2, backend="thread", journal=path) as pool:
        assert len(list(pool.map_pages(pages_of(2, 2), double, 0, run_id="j"))) == 4
    with RunStore(path) as store:
        assert store.pages_done("j") == [0, 1]


def test_a_next_cursor_that_cannot_pickle_fails_the_run(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"next_cursor .* cannot be pickled"):
        list(ex.map_pages(lambda c: ([1], lock), double, 0, run_id="badnext", store=tmp_path / "r.db"))


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), max_size=6),
    prefetch=st.integers(1, 3),
    ordered=st.booleans(),
)
def test_every_item_comes_out_once(sizes: list[int], prefetch: int, ordered: bool) -> None:
    starts = list(itertools.accumulate([0, *sizes]))

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        items = list(range(starts[cursor], starts[cursor + 1])) if sizes else []
        return items, (cursor + 1 if cursor + 1 < len(sizes) else None)

    with BatchPoolExecutor(max_workers=2, backend="thread") as pool:
        with pool.map_pages(fetch, double, 0, prefetch=prefetch, ordered=ordered) as run:
            out = list(run)
    expected = [2 * x for x in range(sum(sizes))]
    assert (out if ordered else sorted(out)) == expected
    assert run.progress.pages_done == max(1, len(sizes))


def test_a_replay_restores_the_tolerated_failures(ex: BatchPoolExecutor, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = ex.map_pages(pages_of(2, 3), fail_on(4), 0, run_id="tol", store=db, tolerated_failure=1, ordered=True)
    assert list(first) == [0, 1, 2, 3, 5]
    with ex.map_pages(refuse, refuse, 0, run_id="tol", store=db, ordered=True) as replay:
        assert list(replay) == [0, 1, 2, 3, 5]
        assert [(item, str(exc)) for item, exc in replay.failures] == [(4, "bad item 4")]
        assert (replay.progress.items_done, replay.progress.items_failed) == (5, 1)


def test_stats_and_the_dashboard_show_a_run_in_progress() -> None:
    import threading

    from rich.console import Console

    from batchpool.dashboard import render

    release = threading.Event()

    def fetch(cursor: int) -> tuple[list[int], int | None]:
        return [cursor], (cursor + 1 if cursor < 3 else None)

    def item(x: int) -> int:
        release.wait(10)
        return x

    with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        run = ex.map_pages(fetch, item, 0, run_id="backfill")
        try:
            stats = ex.stats()
            assert set(stats.runs) == {"backfill"}
            assert stats.runs["backfill"].items_done == 0
            console = Console(width=80, height=40, record=True)
            console.print(render(stats, width=80, height=40))
            assert "backfill" in console.export_text()
        finally:
            release.set()
            assert sorted(run) == [0, 1, 2, 3]
        assert ex.stats().runs == {} or ex.stats().runs["backfill"].finished


def test_a_page_whose_items_the_stop_cancelled_is_not_recorded_done(tmp_path: Path) -> None:
    # The pool's one thread is held by another job, so the page's items wait
    # in the queue when the run is closed, and the close cancels them: the
    # page settles with no item run. It must not be recorded done, or a
    # resumed run would skip items that never ran.
    db = tmp_path / "runs.db"
    release = threading.Event()
    ran: list[int] = []

    def record(x: int) -> int:
        ran.append(x)
        return x

    with BatchPoolExecutor(max_workers=1, backend="thread") as pool:
        blocker = pool.submit(release.wait, 30)
        wait_until(blocker.running, what="the blocker to run")
        with pool.map_pages(pages_of(1, 3), record, 0, run_id="r", store=db):
            wait_until(lambda: pool.stats().queued == 3, what="the page's items to queue")
        release.set()
    assert ran == []
    with RunStore(db) as store:
        assert store.pages_done("r") == []
    with BatchPoolExecutor(max_workers=1, backend="thread") as pool:
        with pool.map_pages(pages_of(1, 3), record, 0, run_id="r", store=db, ordered=True) as again:
            assert list(again) == [0, 1, 2]
    assert ran == [0, 1, 2]
