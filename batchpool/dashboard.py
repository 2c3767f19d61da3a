"""Live views of a pool: the rich dashboard and progress bars.

The only core module that imports rich (lazily, so workers never do). It
reads ``Stats`` snapshots and nothing else, so watching a pool costs one
snapshot per refresh. The layout fits the terminal: on 80x24 the overview,
latencies, workers and recent errors; the other panels (batches, lanes, and
the journal, runs and per-key limits when the snapshot has them) when there is
room. While the dashboard is live, ``batchpool`` log records are printed above
it through rich instead of through it. (The Prometheus endpoint,
``serve_metrics``, lives in ``batchpool.prometheus`` and is re-exported here.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .metrics import LatencyStats, Stats
from .prometheus import MetricsServer as MetricsServer
from .prometheus import serve_metrics as serve_metrics

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .executor import BatchPoolExecutor

__all__ = ["Dashboard", "MetricsServer", "progress", "render", "serve_metrics", "track"]

logger = logging.getLogger("batchpool")
T = TypeVar("T")
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


class _ToLive(logging.Handler):
    """Prints ``batchpool`` log records through the Live console: above the live view, never through it."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        try:
            style = "red" if record.levelno >= logging.ERROR else "yellow" if record.levelno >= logging.WARNING else ""
            line = Text(f"{record.levelname.lower()}: ", style=style)
            line.append(self.format(record))
            self._console.print(line)
        except Exception:  # noqa: BLE001 - logging's own rule: a handler never raises
            self.handleError(record)


class _NotBatchpool(logging.Filter):
    """Keeps ``batchpool`` records off a terminal stream handler while the dashboard shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "batchpool" or record.name.startswith("batchpool."))


def _terminal_handlers() -> list[logging.Handler]:
    """Stream handlers on the ``batchpool`` logger's path that write to a terminal."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            stream = getattr(handler, "stream", None)
            isatty = getattr(stream, "isatty", None)
            try:
                if isinstance(handler, logging.StreamHandler) and callable(isatty) and isatty():
                    found.append(handler)
            except ValueError:  # a closed stream
                pass
        current = current.parent if current.propagate else None
    return found


class Dashboard:
    """Show a pool live in the terminal while the block runs.

    Refreshes ``refresh_per_second`` times a second from ``ex.stats()``
    snapshots, sized to the terminal. While live, records of the
    ``batchpool`` logger (a worker that exited, say) are printed above the
    view through rich, and kept off stream handlers that write to the
    terminal (handlers to files still get them). When the console is not a
    terminal, logs one line a second instead (``logging.getLogger("batchpool")``).

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex, Dashboard(ex, log_interval=60):
        ...     _ = ex.submit(abs, -1).result(timeout=10)
    """

    def __init__(
        self,
        executor: BatchPoolExecutor,
        *,
        refresh_per_second: float = 4,
        console: Console | None = None,
        log_interval: float = 1.0,
        title: str = "batchpool",
    ) -> None:
        self._stats: Callable[[], Stats] = executor.stats
        self._refresh = refresh_per_second
        self._console = console
        self._log_interval = log_interval
        self._title = title
        self._live: Any = None
        self._handler: _ToLive | None = None
        self._filtered: list[logging.Handler] = []
        self._filter = _NotBatchpool()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _view(self, console: Console) -> RenderableType:
        size = console.size
        return render(self._stats(), self._title, width=size.width, height=size.height)

    def start(self) -> None:
        """Begin showing (idempotent)."""
        if self._live is not None or self._thread is not None:
            return
        from rich.console import Console
        from rich.live import Live

        console = self._console or Console()
        if console.is_terminal:
            self._live = Live(
                get_renderable=lambda: self._view(console),
                console=console,
                refresh_per_second=self._refresh,
                transient=False,
            )
            self._live.start()
            # Installed after the Live starts and removed before it stops, so
            # a record is printed above the view or, before and after, as usual.
            self._handler = _ToLive(console)
            logger.addHandler(self._handler)
            self._filtered = _terminal_handlers()
            for handler in self._filtered:
                handler.addFilter(self._filter)
        else:
            self._thread = threading.Thread(target=self._log_loop, name="batchpool-dashboard", daemon=True)
            self._thread.start()

    def _log_loop(self) -> None:
        while not self._stop.wait(self._log_interval):
            logger.info(one_line(self._stats()))

    def stop(self) -> None:
        """Stop showing (idempotent); the last frame stays on screen."""
        if self._handler is not None:
            logger.removeHandler(self._handler)
            for handler in self._filtered:
                handler.removeFilter(self._filter)
            self._handler, self._filtered = None, []
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


def track(iterable: Iterable[T], total: int | None, description: str = "jobs") -> Iterator[T]:
    """Yield from ``iterable`` with a rich progress bar (count, rate and ETA)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")
        for n, item in enumerate(iterable, 1):
            # Refreshing the text per item is cheap next to a job's round trip.
            bar.update(task, advance=1, rate=f"{n / max(time.monotonic() - start, 1e-9):,.0f}/s")
            yield item


def progress(futures: Iterable[Future[T]], description: str = "jobs") -> list[Future[T]]:
    """Show a progress bar until every Future is done; return them (in order).

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     done = progress([ex.submit(abs, -i) for i in range(3)])  # doctest: +ELLIPSIS
        jobs ...
        >>> [f.result() for f in done]
        [0, 1, 2]
    """
    fs = list(futures)
    for _ in track(as_completed(fs), total=len(fs), description=description):
        pass
    return fs
