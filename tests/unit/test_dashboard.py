"""The dashboard's layout at 80x24 and larger, its optional panels, and log records while live."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from batchpool.dashboard import Dashboard, duration, render
from batchpool.metrics import Metrics, Stats

pytestmark = pytest.mark.timeout(30)


def _stats(workers: int = 2, **snapshot: Any) -> Stats:
    now = [1000.0]
    m = Metrics(clock=lambda: now[0])
    for _ in range(5):
        for n in (1, 4, 16):
            m.batch_sent(n, "free worker", 0.0021)
            m.results(n)
            m.batch_done(n, 0.0003 * n, 0.0187)
        now[0] += 1
    m.job_failed(41, ConnectionError("upstream hiccup"), final=False)
    m.job_failed(41, ConnectionError("upstream hiccup"), final=True)
    snapshot.setdefault("lanes", {"BULK/work": 20})
    return m.snapshot(
        submitted=200,
        in_flight=4,
        queued=20,
        workers=[(i, 100 + i, "busy", 10, False) for i in range(workers)],
        **snapshot,
    )


def _text(stats: Stats, width: int, height: int | None) -> str:
    console = Console(record=True, width=width, height=height or 25, file=io.StringIO())
    console.print(render(stats, width=width, height=height))
    return console.export_text()


def test_at_80x24_the_key_panels_fit() -> None:
    text = _text(_stats(), 80, 24)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 23 and max(len(line) for line in lines) <= 80
    for part in ("jobs/s now", "over 10 s", "Latency", "end to end", "Workers", "Recent errors", "busy"):
        assert part in text, part
    assert "FAILED  job 41: ConnectionError" in text and "retried job 41: ConnectionError" in text


def test_a_larger_terminal_shows_the_rest() -> None:
    small, large = _text(_stats(), 80, 24), _text(_stats(), 120, 40)
    assert "Batches" not in small and "Lanes" not in small
    assert "Batches" in large and "Lanes" in large and "BULK/work" in large
    assert max(len(line) for line in large.splitlines()) == 120  # panels use the full width


def test_many_workers_are_cut_with_a_count_of_the_rest() -> None:
    text = _text(_stats(workers=30), 80, 24)
    assert len(text.rstrip("\n").splitlines()) <= 23
    assert re.search(r"… \d+ more", text) and "Recent errors" in text


def test_latencies_have_two_significant_figures() -> None:
    text = _text(_stats(), 80, 24)
    row = next(line for line in text.splitlines() if "queue wait" in line)
    assert "2.1 ms" in row and not re.search(r"\d\.\d\d", row)
    assert duration(0.0187) == "19 ms" and duration(2.5e-4) == "250 µs" and duration(0) == "0"


@dataclass(frozen=True)
class _LaterStats(Stats):
    """A snapshot with the parts other features add (journal, runs, limits, control)."""

    journal_lag: float = 0.25
    journal_commits_per_s: float = 118.0
    runs: dict[str, Any] = field(default_factory=lambda: {"backfill": {"done": 4200, "pages": 42, "state": "running"}})
    key_limits: dict[str, Any] = field(default_factory=lambda: {"api": {"running": 3, "limit": 4, "rate": 200.0}})
    target_workers: int = 4
    paused: bool = True


def test_optional_panels_show_when_the_snapshot_has_their_fields() -> None:
    base = _stats()
    own = _LaterStats.__annotations__  # Stats may carry some of these fields already (journal_lag)
    later = _LaterStats(**{name: getattr(base, name) for name in base.__dataclass_fields__ if name not in own})
    text = _text(later, 100, None)
    for part in ("Journal", "118.0/s", "Runs", "backfill", "4,200", "Per-key limits", "3/4", "target 4", "PAUSED"):
        assert part in text, part
    assert "Journal" not in _text(base, 100, None)


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Pool:
    def stats(self) -> Stats:
        return _stats()


def test_log_records_while_live_print_above_the_view_not_through_it() -> None:
    out = _TTY()
    console = Console(file=out, force_terminal=True, width=80, height=24)
    terminal = _TTY()
    raw = logging.StreamHandler(terminal)  # an application's handler on the same terminal
    root = logging.getLogger()
    root.addHandler(raw)
    log = logging.getLogger("batchpool")
    handlers_before = list(log.handlers)
    try:
        with Dashboard(_Pool(), console=console, refresh_per_second=20):  # type: ignore[arg-type]
            log.warning("worker 7 exited (signal 9); replaced")
            logging.getLogger("batchpool.backends").warning("child logger record")
        log.warning("after the dashboard")
    finally:
        root.removeHandler(raw)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "warning: worker 7 exited (signal 9); replaced" in shown.splitlines()
    assert "warning: child logger record" in shown
    assert terminal.getvalue() == "after the dashboard\n"  # nothing raw while live; as usual after
    assert log.handlers == handlers_before and not raw.filters
