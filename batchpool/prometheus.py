"""The Prometheus export of ``Stats`` snapshots: the text format and a prometheus-client collector.

Imports ``batchpool.metrics`` only. prometheus-client is optional
(``pip install batchpool[prometheus]``) and imported by ``BatchPoolCollector``
alone; ``exposition`` (what ``Stats.to_prometheus`` returns) and
``serve_metrics`` (a small HTTP endpoint) need the standard library only.
(``batchpool.serve_metrics`` is this one, re-exported by the dashboard module.)

What is exported, every sample labelled with its ``pool`` so that several
pools (and processes) share one registry and aggregate::

    counters    <prefix>_{submitted,completed,failed,cancelled,retried,timed_out,
                batches,worker_restarts}_total, <prefix>_flushes_total{reason}
    gauges      <prefix>_{in_flight,queued,throughput,workers,target_workers,paused},
                <prefix>_lane_depth{lane}, <prefix>_worker_rss_bytes{worker,pid},
                <prefix>_key_{running,max_concurrency,rate_limit,rate}{key} (keys
                with a limit, by readable name, the MAX_KEYS busiest)
    histograms  <prefix>_{queue_wait,run_time,end_to_end}_seconds (le: 1 us to
                134 s, one bucket per doubling), <prefix>_batch_size (le: 1 to 65536)

Latencies are histograms, not in-process quantiles: a quantile of one process
cannot be combined with another's, bucket counts can
(``histogram_quantile(0.99, sum by (le) (rate(batchpool_end_to_end_seconds_bucket[5m])))``).
A batch's jobs enter the latency histograms with their batch's mean, so
``_count`` is exact and a bucket is right to within a batch's spread.
"""

from __future__ import annotations

import http.server
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .metrics import Stats

if TYPE_CHECKING:
    from .executor import BatchPoolExecutor

__all__ = ["BatchPoolCollector", "Family", "MetricsServer", "Series", "exposition", "families", "serve_metrics"]

logger = logging.getLogger("batchpool")

#: Upper bounds of the batch size histogram (a Stats keeps sizes per power of two).
_BATCH_BOUNDS = tuple(2**k for k in range(17))


class _HasStats(Protocol):
    def stats(self) -> Stats: ...


@dataclass(frozen=True)
class Series:
    """One labelled series of a family: a value, or a histogram's buckets and sum."""

    labels: tuple[tuple[str, str], ...]
    """(name, value) pairs, ``pool`` first."""
    value: float = 0.0
    """The counter's or gauge's value; a histogram's count."""
    buckets: tuple[tuple[float, float], ...] = ()
    """A histogram's cumulative (upper bound, count) pairs, ``+Inf`` last."""
    sum: float = 0.0
    """A histogram's sum."""


@dataclass(frozen=True)
class Family:
    """A metric family: its name (without ``_total``), kind, help and series."""

    name: str
    """The family's name; counters' samples add ``_total``."""
    kind: str
    """'counter', 'gauge' or 'histogram'."""
    help: str
    """One line saying what it counts."""
    series: tuple[Series, ...]
    """Its series, the pools' in the order given."""


#: Most keys exported per pool in the per-key families (the busiest first), so
#: that keys made from data (a user id) cannot blow up the number of series.
MAX_KEYS = 50


def _limited_keys(s: Stats) -> list[tuple[str, Any]]:
    limits = getattr(s, "key_limits", None) or {}
    busiest = sorted(limits.items(), key=lambda kv: (-kv[1].running, -kv[1].rate, kv[0]))
    return busiest[:MAX_KEYS]


def families(pools: Mapping[str, Stats], prefix: str = "batchpool") -> list[Family]:
    """The metric families of one or several pools' snapshots (``{pool name: stats}``).

    Example:
        >>> from batchpool.metrics import Metrics
        >>> fams = {f.name: f for f in families({"api": Metrics().snapshot()})}
        >>> fams["batchpool_completed"].kind, fams["batchpool_end_to_end_seconds"].kind
        ('counter', 'histogram')
        >>> fams["batchpool_completed"].series[0].labels
        (('pool', 'api'),)
    """
    out: list[Family] = []

    def family(name: str, kind: str, help_text: str, series: list[Series]) -> None:
        out.append(Family(f"{prefix}_{name}", kind, help_text, tuple(series)))

    def each(value: Any) -> list[Series]:
        return [Series((("pool", pool),), float(value(s))) for pool, s in pools.items()]

    for name, help_text in (
        ("submitted", "Jobs accepted."),
        ("completed", "Jobs that returned a result."),
        ("failed", "Jobs that failed after all retries."),
        ("cancelled", "Jobs cancelled before they ran."),
        ("retried", "Retries scheduled."),
        ("timed_out", "Runs stopped by their timeout."),
        ("batches", "Batches sent to workers."),
        ("worker_restarts", "Workers replaced after dying."),
    ):
        family(name, "counter", help_text, each(lambda s, name=name: getattr(s, name)))
    family(
        "flushes",
        "counter",
        "Batches per reason they left their lane.",
        [
            Series((("pool", pool), ("reason", reason)), float(n))
            for pool, s in pools.items()
            for reason, n in sorted(s.flush_reasons.items())
        ],
    )
    family("in_flight", "gauge", "Jobs dispatched to workers and not settled.", each(lambda s: s.in_flight))
    family("queued", "gauge", "Jobs waiting in the pool's lanes.", each(lambda s: s.queued))
    family("throughput", "gauge", "Jobs settled per second over the last 10 s.", each(lambda s: s.throughput_10s))
    family("workers", "gauge", "Live workers.", each(lambda s: len(s.workers)))
    family(
        "target_workers",
        "gauge",
        "Workers the pool aims at (resize).",
        [
            Series((("pool", pool),), float(s.target_workers))
            for pool, s in pools.items()
            if s.target_workers is not None
        ],
    )
    family("paused", "gauge", "1 while the pool is paused.", each(lambda s: s.paused))
    for name, field_name, help_text in (
        ("key_running", "running", "Jobs of a limited key running."),
        ("key_max_concurrency", "limit", "A key's concurrency limit."),
        ("key_rate_limit", "rate_limit", "A key's rate limit now (starts/s)."),
        ("key_rate", "rate", "A key's starts in the last second."),
    ):
        family(
            name,
            "gauge",
            help_text,
            [
                Series((("pool", pool), ("key", key)), float(getattr(k, field_name)))
                for pool, s in pools.items()
                for key, k in _limited_keys(s)
                if getattr(k, field_name) is not None
            ],
        )
    family(
        "lane_depth",
        "gauge",
        "Jobs waiting per lane.",
        [
            Series((("pool", pool), ("lane", lane)), float(n))
            for pool, s in pools.items()
            for lane, n in s.lanes.items()
        ],
    )
    family(
        "worker_rss_bytes",
        "gauge",
        "Resident memory per worker process.",
        [
            Series((("pool", pool), ("worker", str(w.id)), ("pid", str(w.pid))), float(w.rss))
            for pool, s in pools.items()
            for w in s.workers
            if w.rss is not None
        ],
    )
    for name in ("queue_wait", "run_time", "end_to_end"):
        series = []
        for pool, s in pools.items():
            lat = getattr(s, name)
            bounds = lat.buckets or ()
            buckets = (*((b, float(n)) for b, n in bounds), (math.inf, float(lat.count)))
            series.append(Series((("pool", pool),), float(lat.count), buckets, lat.total or lat.mean * lat.count))
        family(f"{name}_seconds", "histogram", f"Job latency, {name.replace('_', ' ')} (seconds).", series)
    sizes = []
    for pool, s in pools.items():
        cumulative = [
            (float(b), float(sum(n for size, n in s.batch_sizes.items() if size <= b))) for b in _BATCH_BOUNDS
        ]
        buckets = (*cumulative, (math.inf, float(s.batches)))
        sizes.append(Series((("pool", pool),), float(s.batches), buckets, s.batch_size_mean * s.batches))
    family("batch_size", "histogram", "Jobs per batch.", sizes)
    return out


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}"


def exposition(stats: Stats, prefix: str = "batchpool", pool: str = "default") -> str:
    """``stats`` in the Prometheus text exposition format (version 0.0.4).

    Example:
        >>> from batchpool.metrics import Metrics
        >>> text = exposition(Metrics().snapshot(), pool="api")
        >>> 'batchpool_end_to_end_seconds_bucket{pool="api",le="+Inf"} 0' in text
        True
    """
    return _text(families({pool: stats}, prefix))


def _text(fams: list[Family]) -> str:
    lines: list[str] = []
    for fam in fams:
        # A counter's HELP and TYPE name its samples (``_total``), as
        # prometheus-client writes them; parsers take the bare name as unknown.
        shown = f"{fam.name}_total" if fam.kind == "counter" else fam.name
        lines.append(f"# HELP {shown} {fam.help}")
        lines.append(f"# TYPE {shown} {fam.kind}")
        for s in fam.series:
            if fam.kind == "counter":
                lines.append(f"{fam.name}_total{_labels(s.labels)} {_number(s.value)}")
            elif fam.kind == "gauge":
                lines.append(f"{fam.name}{_labels(s.labels)} {_number(s.value)}")
            else:
                for bound, n in s.buckets:
                    lines.append(f"{fam.name}_bucket{_labels((*s.labels, ('le', _bound(bound))))} {_number(n)}")
                lines.append(f"{fam.name}_sum{_labels(s.labels)} {_number(s.sum)}")
                lines.append(f"{fam.name}_count{_labels(s.labels)} {_number(s.value)}")
    return "\n".join(lines) + "\n"


class BatchPoolCollector:
    """A prometheus-client collector of one or several pools (``pip install batchpool[prometheus]``).

    Register it in your application's registry and serve that registry as you
    already do: the pools' figures join your own metrics. A registry takes
    one collector per prefix; to export several pools, ``add`` them to one
    collector (each gets its ``pool`` label).

    Args:
        executor: a pool (anything with a ``stats()`` returning ``Stats``), or
            None to ``add`` pools later.
        pool: the ``pool`` label of ``executor``'s samples.
        prefix: the metric names' prefix.

    Raises:
        ImportError: prometheus-client is not installed.

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> from batchpool import BatchPoolExecutor
        >>> registry = CollectorRegistry()
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     collector = BatchPoolCollector(ex, pool="api")
        ...     registry.register(collector)
        ...     _ = ex.submit(abs, -1).result(timeout=10)
        >>> 'batchpool_completed_total{pool="api"} 1.0' in generate_latest(registry).decode()
        True
    """

    def __init__(self, executor: _HasStats | None = None, pool: str = "default", prefix: str = "batchpool") -> None:
        try:
            import prometheus_client  # noqa: F401 - fail here, not at the first scrape
        except ImportError as exc:
            raise ImportError("BatchPoolCollector needs prometheus-client: pip install batchpool[prometheus]") from exc
        self._prefix = prefix
        # add()/remove() may run while the registry's thread collects.
        self._lock = threading.Lock()
        self._pools: dict[str, _HasStats] = {}
        if executor is not None:
            self.add(executor, pool)

    def add(self, executor: _HasStats, pool: str) -> None:
        """Export ``executor`` too, labelled ``pool`` (a name not in use).

        Raises:
            ValueError: ``pool`` is already exported by this collector.
        """
        with self._lock:
            if pool in self._pools:
                raise ValueError(f"pool {pool!r} is already exported by this collector")
            self._pools[pool] = executor

    def remove(self, pool: str) -> None:
        """Stop exporting the pool labelled ``pool`` (no error if it is not there)."""
        with self._lock:
            self._pools.pop(pool, None)

    def describe(self) -> list[Any]:
        """The families' names without samples (so the registry detects a clash at ``register``)."""
        return list(self._families({}))

    def collect(self) -> Iterator[Any]:
        """The families of a fresh snapshot of every pool (called by the registry at each scrape)."""
        with self._lock:
            pools = dict(self._pools)
        yield from self._families({name: ex.stats() for name, ex in pools.items()})

    def _families(self, snapshots: Mapping[str, Stats]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        if not snapshots:
            # Names only (describe): one empty snapshot lays them out.
            from .metrics import Metrics

            fams = [Family(f.name, f.kind, f.help, ()) for f in families({"": Metrics().snapshot()}, self._prefix)]
        else:
            fams = families(snapshots, self._prefix)
        for fam in fams:
            names = [k for k, _ in fam.series[0].labels] if fam.series else ["pool"]
            metric: Any
            if fam.kind == "counter":
                metric = CounterMetricFamily(fam.name, fam.help, labels=names)
                for s in fam.series:
                    metric.add_metric([v for _, v in s.labels], s.value)
            elif fam.kind == "gauge":
                metric = GaugeMetricFamily(fam.name, fam.help, labels=names)
                for s in fam.series:
                    metric.add_metric([v for _, v in s.labels], s.value)
            else:
                metric = HistogramMetricFamily(fam.name, fam.help, labels=names)
                for s in fam.series:
                    buckets = [(_bound(b), n) for b, n in s.buckets]
                    metric.add_metric([v for _, v in s.labels], buckets, s.sum)
            yield metric


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


def serve_metrics(
    executor: BatchPoolExecutor, port: int = 9464, host: str = "127.0.0.1", *, pool: str = "default"
) -> MetricsServer:
    """Serve ``executor.stats().to_prometheus(pool=pool)`` at ``http://host:port/metrics``.

    Standard library only (with prometheus-client, register a
    ``BatchPoolCollector`` in your own registry instead); bound to 127.0.0.1
    unless told otherwise; stops when the pool shuts down (or on ``close()``).
    ``port=0`` picks a free port.

    Example:
        >>> import urllib.request
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     server = serve_metrics(ex, port=0, pool="api")
        ...     body = urllib.request.urlopen(server.url, timeout=10).read().decode()
        >>> 'batchpool_submitted_total{pool="api"} 0' in body
        True
    """
    stats = executor.stats

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = stats().to_prometheus(pool=pool).encode()
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
