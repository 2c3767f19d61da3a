"""The bench's tables, left-out lines and advice from synthetic results (no pools run), and the pages hook."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator

import pytest
from rich.console import Console

from batchpool.bench import measures, runner
from batchpool.bench.report import choose, left_out, quick_note, tables
from batchpool.bench.runner import WORKLOADS, Result

pytestmark = pytest.mark.timeout(30)


def _results(repeat: int = 1) -> list[Result]:
    rates = {
        "batchpool-process": 60_000.0,
        "batchpool+journal-full": 30_000.0,
        "ThreadPoolExecutor": 45_000.0,
        "ProcessPoolExecutor": 7_800.0,
        "multiprocessing.Pool": 20_000.0,
    }
    out = [Result("submit", name, "jobs/s", [v * (1 + i / 100) for i in range(repeat)]) for name, v in rates.items()]
    out[1].extra["share_of_plain"] = 0.5
    out += [
        Result("cpu", "batchpool-process", "jobs/s", [150.0] * repeat, extra={"speedup_vs_serial": 1.5}),
        Result("cpu", "ProcessPoolExecutor", "jobs/s", [180.0] * repeat, extra={"speedup_vs_serial": 1.9}),
        Result("cpu", "ThreadPoolExecutor", "jobs/s", [90.0] * repeat, extra={"speedup_vs_serial": 0.98}),
        Result(
            "latency",
            "batchpool-process",
            "ms p99",
            [4.37],
            lower_is_better=True,
            extra={"idle_p50_ms": 0.2, "idle_p99_ms": 0.5},
        ),
        Result("latency", "ProcessPoolExecutor", "ms p99", [240.0], lower_is_better=True),
        Result("submit", "mpire", "jobs/s", skipped="not installed"),
        Result("submit", "loky", "jobs/s", skipped="not installed"),
        Result("submit", "batchpool+journal", "jobs/s", skipped="no journal in this build"),
        Result("dask", "batchpool-dask", "jobs/s", skipped="no Dask backend in this build"),
        Result("dask", "get_executor", "jobs/s", skipped="no Dask backend in this build"),
    ]
    return out


def _render(results: list[Result], width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    for table in tables(results, width):
        console.print(table)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 120])
def test_tables_fit_the_width_and_leave_skipped_rows_out(width: int) -> None:
    text = _render(_results(), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "mpire" not in text and "skipped" not in text
    assert "50% of plain" in text and "1.5x serial" in text and "idle 0.2 / 0.5" in text
    assert ("vs Pool" in text) == (width >= 100)
    assert "spread" not in text  # one repetition


def test_spreads_with_repetitions() -> None:
    text = _render(_results(repeat=3), 80)
    assert "spread" in text and "±1%" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_left_out_is_one_line_per_reason() -> None:
    lines = left_out(_results())
    assert lines[0] == "not installed: loky, mpire — pip install batchpool[peers]"
    assert "left out: batchpool+journal: no journal in this build" in lines
    assert "left out: dask: no Dask backend in this build" in lines
    assert len(lines) == 3


def test_what_to_choose_comes_from_the_numbers() -> None:
    advice = dict(choose(_results()))
    assert advice["tiny jobs"].startswith("batchpool-process (60,000 jobs/s")
    assert "7.7x ProcessPoolExecutor" in advice["tiny jobs"]
    assert advice["CPU-bound jobs"].startswith("ProcessPoolExecutor (1.9x a serial loop); batchpool-process 1.5x")
    assert "batchpool-process (p99 4.4 ms, ProcessPoolExecutor 240 ms)" in advice["I/O"]
    assert "large arrays" not in advice  # not measured, not advised


def test_quick_note() -> None:
    assert "too short to trust" in quick_note(True, 1) and quick_note(False, 3) == ""
    assert "too short to trust" in quick_note(False, 1)


@pytest.fixture
def fake_pages() -> Iterator[None]:
    module = types.ModuleType("batchpool.bench.pages")

    def measure(workers: int = 2, quick: bool = False) -> dict[str, float]:
        return {"pipelined_items_per_s": 900.0, "serial_items_per_s": 500.0, "ratio": 1.8}

    module.measure = measure  # type: ignore[attr-defined]
    sys.modules["batchpool.bench.pages"] = module
    import batchpool.bench as package

    package.pages = module  # type: ignore[attr-defined]
    yield
    del sys.modules["batchpool.bench.pages"]
    del package.pages  # type: ignore[attr-defined]


def test_pages_rows_come_from_bench_pages(fake_pages: None) -> None:
    rows = runner.run(["pages"], [], quick=True)
    by = {r.executor: r for r in rows}
    assert by["map_pages"].median == 900 and by["serial loop"].median == 500
    assert by["map_pages"].extra["ratio"] == 1.8
    assert "1.8x serial" in _render(rows, 80)


def test_every_workload_is_described() -> None:
    for workload in WORKLOADS.values():
        assert workload.title and workload.unit
        assert workload.standalone is not None or workload.pools
    assert measures.QUICK.map < measures.FULL.map
