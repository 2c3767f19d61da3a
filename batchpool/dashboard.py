"""Live views of a pool: the rich dashboard, its logging bridge, and progress bars.

``Dashboard`` shows a pool in the terminal while a block runs: a rich
``Live`` that pulls a fresh ``render`` of an ``ex.stats()`` snapshot each
refresh (so watching a pool costs one snapshot per refresh), or one log line a
second when the output is not a terminal. While it is live, ``batchpool`` log
records are printed above it through rich instead of through it. ``track``
and ``progress`` are progress bars over an iterable and over Futures.

How a snapshot becomes panels, and their layout at a given size, is
``dashboard_render``'s (``render``, ``one_line`` and ``duration`` are
re-exported here). These two modules are the only core modules that import
rich, lazily, so workers never do. (The Prometheus endpoint,
``serve_metrics``, lives in ``batchpool.prometheus`` and is re-exported here.)
Imports ``dashboard_render``, ``metrics`` and ``prometheus``; the executor
only for types.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from .dashboard_render import duration as duration
from .dashboard_render import one_line as one_line
from .dashboard_render import render as render
from .metrics import Stats
from .prometheus import MetricsServer as MetricsServer
from .prometheus import serve_metrics as serve_metrics

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .executor import BatchPoolExecutor

__all__ = ["Dashboard", "MetricsServer", "progress", "render", "serve_metrics", "track"]

logger = logging.getLogger("batchpool")
T = TypeVar("T")


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
