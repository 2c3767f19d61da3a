"""map_pages on a journaled pool: its runs are kept in the journal's file and resume by run_id."""

from __future__ import annotations

import threading
from pathlib import Path

from batchpool import BatchPoolExecutor

TIMEOUT = 30
_runs: list[int] = []
_lock = threading.Lock()


def fetch(cursor: int) -> tuple[list[int], int | None]:
    return list(range(cursor, cursor + 5)), (cursor + 5 if cursor < 15 else None)


def record(item: int) -> int:
    with _lock:
        _runs.append(item)
    return item * 2


def test_a_journaled_pool_keeps_its_runs_and_a_finished_run_replays_without_running(tmp_path: Path) -> None:
    journal = str(tmp_path / "jobs.db")
    _runs.clear()
    with BatchPoolExecutor(max_workers=2, backend="thread", journal=journal) as ex:
        assert sorted(ex.map_pages(fetch, record, 0, run_id="backfill")) == [2 * i for i in range(20)]
    assert sorted(_runs) == list(range(20))
    _runs.clear()
    with BatchPoolExecutor(max_workers=2, backend="thread", journal=journal) as ex:
        assert sorted(ex.map_pages(fetch, record, 0, run_id="backfill")) == [2 * i for i in range(20)]
    assert _runs == [], "a finished run yields its recorded results without running anything"
