"""Rendering one ``Stats`` snapshot: the dashboard's panels and their layout at a given size.

``render`` turns a snapshot into rich panels fitting a width and height: on
80x24 the overview, latencies, workers and recent errors; the other panels
(batches, lanes, and the journal, runs and per-key limits when the snapshot
has them) when there is room. ``one_line`` is the same view in one log line,
``duration`` the latency format both use. Pure functions of the snapshot: no
threads, no terminal, no logging (the live part is ``dashboard``).

With ``dashboard``, the only core module that imports rich, and lazily
(inside the functions, so importing this module does not load rich and
workers never do). Imports ``metrics`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .metrics import LatencyStats, Stats

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["duration", "one_line", "render"]

_SPARK = " ▁▂▃▄▅▆▇█"
#: Panels' border lines (top and bottom).
_BORDER = 2
#: The panels shown first, and on any terminal of 24 lines: overview, latency, workers, errors.
_CORE = 4


def duration(seconds: float) -> str:
    """A latency with the precision a log-bucket histogram has: two significant figures.

    Example:
        >>> duration(0.0018837), duration(0.02125), duration(0.18084), duration(3.5e-05), duration(12.3)
        ('1.9 ms', '21 ms', '180 ms', '35 µs', '12 s')
    """
    if seconds <= 0:
        return "0"
    for unit, scale in (("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        value = seconds / scale
        if value < 1000 or unit == "s":
            return f"{float(f'{value:.2g}'):g} {unit}"
    raise AssertionError("unreachable")


def _sparkline(values: list[int]) -> str:
    top = max(values) if values else 0
    if not top:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(8, round(v / top * 8))] for v in values)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.0f} MiB"


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name`` (None if neither): optional Stats parts may be records or dicts."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


@dataclass
class _Panel:
    """A panel to place: its title, how to build it with n body lines, and how many lines it wants."""

    title: str
    build: Callable[[int], RenderableType]
    least: int
    most: int
    lines: int = 0  # body lines granted


def _overview(s: Stats, width: int) -> RenderableType:
    from rich.text import Text

    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"up {s.uptime:,.1f} s   submitted {s.submitted:,}   completed {s.completed:,}   ")
    text.append(f"failed {s.failed:,}", style="bold red" if s.failed else "")
    text.append(f"   cancelled {s.cancelled:,}\n")
    text.append(f"retried {s.retried:,}   timed out {s.timed_out:,}   ")
    text.append(f"in flight {s.in_flight:,}   queued {s.queued:,}\n")
    text.append(f"{s.throughput_1s:,.0f} jobs/s now", style="bold green")
    text.append(f"   {s.throughput_10s:,.0f}/s over 10 s   {s.throughput_total:,.0f}/s since start\n")
    history = s.history[-max(10, min(len(s.history), width - 16)) :]
    text.append(_sparkline(history), style="green")
    text.append(f"  last {len(history)} s", style="dim")
    return text


def _latency(s: Stats) -> RenderableType:
    from rich.table import Table

    table = Table(box=None, expand=True, pad_edge=False)
    table.add_column("", style="dim", no_wrap=True)
    for column in ("p50", "p95", "p99", "max"):
        table.add_column(column, justify="right", no_wrap=True)
    rows: tuple[tuple[str, LatencyStats], ...] = (
        ("queue wait", s.queue_wait),
        ("run (per job)", s.run_time),
        ("end to end", s.end_to_end),
    )
    for name, lat in rows:
        if lat.count:
            table.add_row(name, duration(lat.p50), duration(lat.p95), duration(lat.p99), duration(lat.max))
        else:
            table.add_row(name, "-", "-", "-", "-")
    return table


def _workers(s: Stats, lines: int) -> RenderableType:
    from rich.table import Table

    table = Table(box=None, expand=True, pad_edge=False)
    for column in ("worker", "pid", "state", "jobs", "cpu %", "rss"):
        table.add_column(column, justify="left" if column in ("worker", "state") else "right", no_wrap=True)
    shown = s.workers if len(s.workers) <= lines - 1 else s.workers[: max(0, lines - 2)]
    for w in shown:
        cpu = "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}"
        style = "red" if w.state == "dead" else ""
        table.add_row(str(w.id), str(w.pid), w.state, f"{w.jobs:,}", cpu, _bytes(w.rss), style=style)
    if len(shown) < len(s.workers):
        table.add_row(f"… {len(s.workers) - len(shown)} more", "", "", "", "", "", style="dim")
    if not s.workers:
        table.add_row("(none)", "", "", "", "", "", style="dim")
    return table


def _errors(s: Stats, lines: int) -> RenderableType:
    from rich.text import Text

    if not s.recent_errors:
        return Text("none", style="dim")
    finals: list[bool] | None = getattr(s, "recent_errors_final", None)
    if finals is None or len(finals) != len(s.recent_errors):
        finals = None
    text = Text(no_wrap=True, overflow="ellipsis")
    start = max(0, len(s.recent_errors) - lines)
    for i in range(start, len(s.recent_errors)):
        if i > start:
            text.append("\n")
        if finals is None:
            text.append(s.recent_errors[i], style="red")
        elif finals[i]:
            text.append("FAILED  ", style="bold red")
            text.append(s.recent_errors[i], style="red")
        else:
            text.append("retried ", style="yellow")
            text.append(s.recent_errors[i], style="dim")
    return text


def _batches(s: Stats) -> RenderableType:
    from rich.text import Text

    return Text(
        f"{s.batches:,} batches, {s.batch_size_mean:,.1f} jobs each on average\n"
        + "sizes: "
        + "  ".join(f"≤{size}: {n:,}" for size, n in s.batch_sizes.items())
        + "\nflushed on: "
        + "  ".join(f"{reason}: {n:,}" for reason, n in sorted(s.flush_reasons.items())),
        no_wrap=True,
        overflow="ellipsis",
    )


def _table(rows: Sequence[Sequence[str]], columns: Sequence[str], lines: int) -> RenderableType:
    from rich.table import Table

    table = Table(box=None, expand=True, pad_edge=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    shown = rows if len(rows) <= lines - 1 else rows[: max(0, lines - 2)]
    for row in shown:
        table.add_row(*row)
    if len(shown) < len(rows):
        table.add_row(f"… {len(rows) - len(shown)} more", *[""] * (len(columns) - 1), style="dim")
    return table


def _table_panel(title: str, rows: list[list[str]], columns: Sequence[str]) -> _Panel:
    def build(lines: int) -> RenderableType:
        return _table(rows, columns, lines)

    return _Panel(title, build, 2, 1 + max(1, len(rows)))


def _entries(parts: Any, key: str) -> Iterable[tuple[Any, Any]]:
    return parts.items() if isinstance(parts, Mapping) else ((_field(x, key), x) for x in parts)


def _first(obj: Any, *names: str, default: Any = 0) -> str:
    for name in names:
        value = _field(obj, name)
        if value is not None:
            return _number(value)
    return _number(default)


def _run_state(progress: Any) -> str:
    """A run's state in a word, from a ``RunProgress``."""
    if getattr(progress, "finished", False):
        return "finished"
    stuck = getattr(progress, "pages_stuck", 0)
    return f"{stuck} stuck" if stuck else "running"


def _optional_panels(s: Stats) -> list[_Panel]:
    """Panels for parts a snapshot may carry (journal, runs, per-key limits): shown when present.

    Read with ``getattr(stats, name, None)``: ``journal_lag`` and
    ``journal_commits_per_s``; ``runs`` (run id -> progress with ``done``,
    ``pages``, ``failed``, ``state``); ``key_limits`` (key -> ``running``,
    ``limit``, ``rate``, ``waiting``); and, in the overview's title,
    ``target_workers`` and ``paused``. Records or dicts both do.
    """
    panels: list[_Panel] = []
    lag = getattr(s, "journal_lag", None)
    commits = getattr(s, "journal_commits_per_s", None)
    if lag is not None or commits is not None:
        row = [_number("-" if lag is None else lag), f"{_number(commits or 0)}/s"]
        panels.append(_table_panel("Journal", [row], ("lag", "commits")))
    runs = getattr(s, "runs", None)
    if runs:
        rows = [
            [
                str(name),
                _first(r, "done", "items_done"),
                _first(r, "pages", "pages_done"),
                _first(r, "failed", "items_failed"),
                _first(r, "state", default="") or _run_state(r),
            ]
            for name, r in _entries(runs, "run_id")
        ]
        panels.append(_table_panel("Runs", rows, ("run", "items", "pages", "failed", "state")))
    limits = getattr(s, "key_limits", None)
    if limits:
        rows = [
            [
                str(key),
                f"{_first(v, 'running')}/{_first(v, 'limit', 'max_concurrency', default='-')}",
                _first(v, "rate", "rate_limit", default="-"),
                _first(v, "waiting"),
            ]
            for key, v in _entries(limits, "key")
        ]
        panels.append(_table_panel("Per-key limits", rows, ("key", "running/limit", "rate/s", "waiting")))
    return panels


def render(stats: Stats, title: str = "batchpool", *, width: int = 100, height: int | None = None) -> RenderableType:
    """Render one snapshot as rich panels (what the live dashboard shows), fitting ``height`` lines.

    The most useful panels come first and always show: the overview (counts,
    throughput), latencies, workers and recent errors; batches, lanes and the
    optional panels follow when there is room (``height=None``: all of them).

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> from batchpool.metrics import Metrics
        >>> console = Console(record=True, width=80, height=24, file=io.StringIO())
        >>> console.print(render(Metrics().snapshot(), width=80, height=24))
        >>> text = console.export_text()
        >>> "jobs/s now" in text and "Workers" in text and len(text.splitlines()) <= 24
        True
    """
    from rich.console import Group
    from rich.panel import Panel

    s = stats
    lanes = [[lane, f"{depth:,}"] for lane, depth in sorted(s.lanes.items())] or [["(empty)", "0"]]
    panels = [
        _Panel("overview", lambda _n: _overview(s, width), 4, 4),
        _Panel("Latency (2 significant figures)", lambda _n: _latency(s), 4, 4),
        _Panel("Workers", lambda n: _workers(s, n), 2, 1 + max(1, len(s.workers))),
        _Panel("Recent errors", lambda n: _errors(s, n), 1, max(1, min(5, len(s.recent_errors)))),
        *_optional_panels(s),
        _Panel("Batches", lambda _n: _batches(s), 3, 3),
        _table_panel("Lanes", lanes, ("lane", "waiting")),
    ]
    _allocate(panels, height)
    header = f"{title} · workers {len(s.workers)}"
    target = getattr(s, "target_workers", None)
    if target is not None and target != len(s.workers):
        header += f" (target {target})"
    header += f" · restarts {s.worker_restarts}"
    if getattr(s, "paused", False):
        header += " · [bold yellow]PAUSED[/]"
    shown = []
    for p in panels:
        if not p.lines:
            continue
        name = header if p.title == "overview" else p.title
        if p.title == "Recent errors" and getattr(s, "recent_errors_final", None):
            name = "Recent errors (newest last)"
        shown.append(Panel(p.build(p.lines), title=name, title_align="left"))
    return Group(*shown)


def _allocate(panels: list[_Panel], height: int | None) -> None:
    """Grant body lines: the core panels (the first four) theirs first, then the others in order."""
    if height is None:
        for p in panels:
            p.lines = p.most
        return
    # One line is left free: a Live display as tall as the terminal scrolls.
    room = height - 1
    core, rest = panels[:_CORE], panels[_CORE:]
    for p in core:
        if p.least + _BORDER > room:
            return  # what follows a missing core panel would mislead
        p.lines = p.least
        room -= p.least + _BORDER
    for p in core:
        extra = min(p.most - p.lines, room)
        p.lines += extra
        room -= extra
    for p in rest:
        if p.least + _BORDER <= room:
            p.lines = min(p.most, room - _BORDER)
            room -= p.lines + _BORDER


def one_line(stats: Stats) -> str:
    """The dashboard in one log line, for output that is not a terminal.

    Example:
        >>> from batchpool.metrics import Metrics
        >>> one_line(Metrics().snapshot()).startswith("batchpool: 0 jobs/s")
        True
    """
    s = stats
    target = getattr(s, "target_workers", None)
    aim = f", target {target}" if target is not None and target != len(s.workers) else ""
    return (
        f"batchpool: {s.throughput_1s:,.0f} jobs/s, done {s.completed:,}, failed {s.failed:,}, "
        f"in flight {s.in_flight:,}, queued {s.queued:,}, p99 end to end {duration(s.end_to_end.p99)}, "
        f"workers {len(s.workers)} (restarts {s.worker_restarts}{aim})"
        + (", PAUSED" if getattr(s, "paused", False) else "")
    )
