"""Live views of a pool: the rich dashboard, progress bars, a metrics endpoint.

The only core module that imports rich (lazily, so workers never do). It
reads ``Stats`` snapshots and nothing else, so watching a pool costs one
snapshot per refresh.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from .metrics import Stats

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from .executor import BatchPoolExecutor

__all__ = ["Dashboard", "MetricsServer", "progress", "render", "serve_metrics", "track"]

logger = logging.getLogger("batchpool")
T = TypeVar("T")
_SPARK = " ▁▂▃▄▅▆▇█"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def _sparkline(values: list[int]) -> str:
    top = max(values) if values else 0
    if not top:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(8, round(v / top * 8))] for v in values)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.0f} MiB"


def render(stats: Stats, title: str = "batchpool") -> RenderableType:
    """Render one snapshot as rich panels (what the live dashboard shows).

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> from batchpool.metrics import Metrics
        >>> console = Console(record=True, width=120, file=io.StringIO())
        >>> console.print(render(Metrics().snapshot()))
        >>> "Throughput" in console.export_text()
        True
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    s = stats
    header = Text.assemble(
        (f"{title}  ", "bold"),
        f"up {s.uptime:,.1f} s   submitted {s.submitted:,}   completed {s.completed:,}   ",
        (f"failed {s.failed:,}", "red" if s.failed else ""),
        f"   cancelled {s.cancelled:,}   retried {s.retried:,}   timed out {s.timed_out:,}   ",
        f"in flight {s.in_flight:,}   queued {s.queued:,}",
    )
    throughput = Text.assemble(
        (f"{s.throughput_1s:,.0f}", "bold green"),
        f" jobs/s now   {s.throughput_10s:,.0f} over 10 s   {s.throughput_total:,.0f} since start\n",
        (_sparkline(s.history), "green"),
        "  (last 60 s)",
    )
    latency = Table(box=None, expand=True)
    for column in ("ms", "p50", "p95", "p99", "max"):
        latency.add_column(column, justify="right" if column != "ms" else "left")
    for name, lat in (("queue wait", s.queue_wait), ("run (per job)", s.run_time), ("end to end", s.end_to_end)):
        latency.add_row(name, _ms(lat.p50), _ms(lat.p95), _ms(lat.p99), _ms(lat.max))
    batches = Text(
        f"{s.batches:,} batches, {s.batch_size_mean:,.1f} jobs each on average\n"
        + "sizes: "
        + "  ".join(f"<={size}: {n:,}" for size, n in s.batch_sizes.items())
        + "\nflushed on: "
        + "  ".join(f"{reason}: {n:,}" for reason, n in sorted(s.flush_reasons.items()))
    )
    lanes = Table(box=None, expand=True)
    lanes.add_column("lane")
    lanes.add_column("waiting", justify="right")
    for lane, depth in sorted(s.lanes.items()):
        lanes.add_row(lane, f"{depth:,}")
    if not s.lanes:
        lanes.add_row("(empty)", "0")
    workers = Table(box=None, expand=True)
    for column in ("worker", "pid", "state", "jobs", "cpu %", "rss"):
        workers.add_column(column, justify="left" if column in ("worker", "state") else "right")
    for w in s.workers:
        cpu = "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}"
        workers.add_row(str(w.id), str(w.pid), w.state, f"{w.jobs:,}", cpu, _bytes(w.rss))
    errors = Text("\n".join(s.recent_errors[-5:]) or "none", style="red" if s.recent_errors else "dim")
    return Group(
        Panel(header, title="Pool"),
        Panel(throughput, title="Throughput"),
        Panel(latency, title="Latency"),
        Panel(batches, title="Batches"),
        Panel(lanes, title="Lanes"),
        Panel(workers, title=f"Workers (restarts: {s.worker_restarts})"),
        Panel(errors, title="Recent errors"),
    )


def one_line(stats: Stats) -> str:
    """The dashboard in one log line, for output that is not a terminal."""
    s = stats
    return (
        f"batchpool: {s.throughput_1s:,.0f} jobs/s, done {s.completed:,}, failed {s.failed:,}, "
        f"in flight {s.in_flight:,}, queued {s.queued:,}, p99 end to end {_ms(s.end_to_end.p99)} ms, "
        f"workers {len(s.workers)} (restarts {s.worker_restarts})"
    )


class Dashboard:
    """Show a pool live in the terminal while the block runs.

    Refreshes ``refresh_per_second`` times a second from ``ex.stats()``
    snapshots. When the console is not a terminal, logs one line a second
    instead (``logging.getLogger("batchpool")``).

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
    ) -> None:
        self._stats: Callable[[], Stats] = executor.stats
        self._refresh = refresh_per_second
        self._console = console
        self._log_interval = log_interval
        self._live: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Begin showing (idempotent)."""
        if self._live is not None or self._thread is not None:
            return
        from rich.console import Console
        from rich.live import Live

        console = self._console or Console()
        if console.is_terminal:
            self._live = Live(
                get_renderable=lambda: render(self._stats()),
                console=console,
                refresh_per_second=self._refresh,
                transient=False,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log_loop, name="batchpool-dashboard", daemon=True)
            self._thread.start()

    def _log_loop(self) -> None:
        while not self._stop.wait(self._log_interval):
            logger.info(one_line(self._stats()))

    def stop(self) -> None:
        """Stop showing (idempotent); the last frame stays on screen."""
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


class MetricsServer:
    """A running Prometheus endpoint (see ``serve_metrics``)."""

    def __init__(self, server: http.server.ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape."""
        host = self._server.server_address[0]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(executor: BatchPoolExecutor, port: int = 9464, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``executor.stats().to_prometheus()`` at ``http://host:port/metrics``.

    Standard library only; bound to 127.0.0.1 unless told otherwise; stops
    when the pool shuts down (or on ``close()``). ``port=0`` picks a free port.
    """
    stats = executor.stats

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = stats().to_prometheus().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metrics: " + format, *args)

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="batchpool-metrics", daemon=True)
    thread.start()
    running = MetricsServer(server, thread)
    executor._add_shutdown_hook(running.close)
    return running
