"""map_pages with real processes: pipelining pays on a slow source; a SIGKILLed run resumes.

The crash test kills a real parent process (its whole process group: the
parent, its forkserver and its workers) in the middle of a run and resumes the
run in a new process from the store file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from batchpool import BatchPoolExecutor, RunStore
from batchpool.bench.pages import SyntheticSource, measure, process_item
from tests.helpers import getpid, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_pipelined_pagination_is_well_below_serial() -> None:
    # 50 ms pages, 20 items of 5 ms, 2 process workers: serial pays fetch + work per
    # page, pipelined about max(fetch, work). Compared in one run, as a ratio.
    result = measure(workers=2, quick=True)
    assert result["items"] == 160
    assert result["ratio"] > 1 / 0.8, result  # pipelined wall time < 0.8x serial


def test_a_view_runs_the_items_in_worker_processes() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        pids = set(ex.options(key="pages").map_pages(SyntheticSource(3, latency=0.0, size=4), getpid, 0))
        assert os.getpid() not in pids
        # fetch_page ran in this process (a closure over a local list works on any backend)
        seen: list[int] = []

        def fetch(cursor: int) -> tuple[list[int], int | None]:
            seen.append(cursor)
            return [cursor], (cursor + 1 if cursor < 2 else None)

        assert sorted(ex.map_pages(fetch, process_item, 0)) == [0, 1, 2]
        assert seen == [0, 1, 2]


SIZE = 5
PAGES = 30
PREFETCH = 2

CHILD = textwrap.dedent(
    f"""
    import os, sys, time
    from batchpool import BatchPoolExecutor

    def fetch(cursor):
        time.sleep(0.02)
        items = list(range(cursor * {SIZE}, (cursor + 1) * {SIZE}))
        return items, (cursor + 1 if cursor + 1 < {PAGES} else None)

    def process(item):
        # One line per execution, appended atomically (O_APPEND), from the worker.
        fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{{item}}\\n".encode())
        finally:
            os.close(fd)
        time.sleep(0.03)
        return item

    if __name__ == "__main__":
        with BatchPoolExecutor(max_workers=2) as ex:
            with ex.map_pages(fetch, process, 0, run_id="crash", store=sys.argv[1], prefetch={PREFETCH}) as run:
                for _ in run:
                    pass
    """
)


def _start(script: Path, db: Path, log: Path, out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RUN_LOG=str(log))
    with open(out, "ab") as sink:
        return subprocess.Popen(
            [sys.executable, str(script), str(db)], env=env, stdout=sink, stderr=sink, start_new_session=True
        )


def _lines(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


@pytest.mark.timeout(120)
def test_a_killed_run_resumes_from_its_unfinished_pages(tmp_path: Path) -> None:
    script, db, log, out = tmp_path / "child.py", tmp_path / "runs.db", tmp_path / "items.log", tmp_path / "out.txt"
    script.write_text(CHILD)
    child = _start(script, db, log, out)
    try:
        with RunStore(db) as store:
            wait_until(lambda: len(store.pages_done("crash")) >= 4, 60, "four finished pages")
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL, out.read_text()
    with RunStore(db) as store:
        done = set(store.pages_done("crash"))
        assert store.runs() == [("crash", "running")]  # killed: it never recorded an end
    first = _lines(log)
    assert len(done) < PAGES, "the run finished before the kill; nothing to resume"

    again = _start(script, db, log, out)
    assert again.wait(90) == 0, out.read_text()
    second = _lines(log)[len(first) :]

    everything = set(range(SIZE * PAGES))
    assert set(first) | set(second) == everything  # every item processed at least once
    finished_items = {x for seq in done for x in range(seq * SIZE, (seq + 1) * SIZE)}
    assert not finished_items & set(second), "items of pages recorded finished ran again"
    rerun = set(first) & set(second)
    # Only pages in flight at the kill run again: the prefetch window, plus one page
    # whose completion had not been committed yet.
    assert len(rerun) <= (PREFETCH + 1) * SIZE, sorted(rerun)
    assert max(Counter(first + second).values()) <= 2
    with RunStore(db) as store:
        assert store.runs() == [("crash", "finished")]
        assert store.pages_done("crash") == list(range(PAGES))
