"""stats(), listeners, the dashboard, progress bars and the metrics endpoint."""

from __future__ import annotations

import io
import logging
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import CancelledError

import pytest
from rich.console import Console

import batchpool
from batchpool import BatchPoolExecutor, RetryPolicy
from batchpool.dashboard import Dashboard, render
from tests import helpers

TIMEOUT = 30


def test_stats_counts_are_exact_after_a_known_workload(pool: Callable[..., BatchPoolExecutor], tmp_path) -> None:  # type: ignore[no-untyped-def]
    ex = pool(max_workers=1, retry=RetryPolicy(max_attempts=3, backoff=0.001, retry_on=(ConnectionError,)))
    ok = [ex.submit(helpers.add_one, i) for i in range(100)]
    bad = [ex.submit(helpers.raise_value_error, "no") for _ in range(5)]
    flaky = ex.submit(helpers.flaky, str(tmp_path / "n"), 2)  # fails twice, then succeeds
    for f in [*ok, flaky]:
        f.result(TIMEOUT)
    for f in bad:
        with pytest.raises(ValueError):
            f.result(TIMEOUT)
    gate = str(tmp_path / "gate")
    blocker = ex.submit(helpers.wait_for_path, gate)
    queued = [ex.submit(helpers.add_one, i) for i in range(10)]
    cancelled = sum(f.cancel() for f in queued)
    (tmp_path / "gate").touch()
    blocker.result(TIMEOUT)
    for f in queued:
        try:
            f.result(TIMEOUT)
        except CancelledError:
            pass
    ex.shutdown(wait=True)
    s = ex.stats()
    assert s.submitted == 100 + 5 + 1 + 1 + 10
    assert s.completed == 100 + 1 + 1 + (10 - cancelled)
    assert s.failed == 5
    assert s.retried == 2
    assert s.cancelled == cancelled
    assert s.in_flight == 0 and s.queued == 0
    assert s.batches >= 1 and sum(s.flush_reasons.values()) == s.batches
    assert s.queue_wait.count >= s.completed and s.end_to_end.count >= s.completed
    assert s.to_dict()["completed"] == s.completed


def test_worker_stats_show_process_resources() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(100)]]
        s = ex.stats()
    assert s.workers and all(w.rss and w.rss > 0 for w in s.workers)
    assert sum(w.jobs for w in s.workers) == 100


def test_snapshots_while_jobs_run_from_several_threads_never_raise() -> None:
    with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        stop = threading.Event()
        errors: list[BaseException] = []

        def submitter() -> None:
            while not stop.is_set():
                ex.submit(helpers.add_one, 1)

        def reader() -> None:
            try:
                while not stop.is_set():
                    render(ex.stats())
                    ex.stats().to_prometheus()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=submitter) for _ in range(3)] + [
            threading.Thread(target=reader) for _ in range(2)
        ]
        for t in threads:
            t.start()
        stop.wait(1.0)
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert not errors


def test_dashboard_renders_every_panel_under_load() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(1000)]]
        with pytest.raises(ValueError):
            ex.submit(helpers.raise_value_error, "shown").result(TIMEOUT)
        console = Console(record=True, width=120, file=io.StringIO())
        console.print(render(ex.stats()))
    text = console.export_text()
    for panel in ("batchpool", "jobs/s now", "Latency", "Batches", "Lanes", "Workers", "Recent errors"):
        assert panel in text
    assert "completed 1,000" in text and "ValueError: shown" in text


def test_dashboard_logs_one_line_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    import io

    caplog.set_level(logging.INFO, logger="batchpool")
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        with Dashboard(ex, console=Console(file=io.StringIO()), log_interval=0.05):
            [f.result(TIMEOUT) for f in [ex.submit(helpers.sleep_and_return, 0.01, i) for i in range(20)]]
    assert any("jobs/s" in r.getMessage() for r in caplog.records)


def test_progress_bar_and_map_progress(capsys: pytest.CaptureFixture[str]) -> None:
    with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
        done = batchpool.progress([ex.submit(helpers.add_one, i) for i in range(50)])
        assert [f.result() for f in done] == list(range(1, 51))
        assert list(ex.map(helpers.add_one, range(50), progress=True)) == list(range(1, 51))
    out = capsys.readouterr().out
    assert "50/50" in out


def test_metrics_server_answers_locally_and_stops_with_the_pool() -> None:
    ex = BatchPoolExecutor(max_workers=1, backend="thread")
    server = batchpool.serve_metrics(ex, port=0)
    try:
        ex.submit(helpers.add_one, 1).result(TIMEOUT)
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=TIMEOUT) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
        assert 'batchpool_completed_total{pool="default"} 1' in body
    finally:
        ex.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_a_raising_listener_does_not_break_jobs(
    pool: Callable[..., BatchPoolExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    ex = pool()
    seen: list[int] = []

    def bad(*_: object) -> None:
        raise RuntimeError("listener bug")

    ex.add_listener(on_batch_done=bad, on_job_failed=bad)
    ex.add_listener(on_batch_done=lambda info: seen.append(info.size))
    assert [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(20)]] == list(range(1, 21))
    with pytest.raises(ValueError):
        ex.submit(helpers.raise_value_error, "x").result(TIMEOUT)
    ex.shutdown()
    assert sum(seen) == 21
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_worker_death_listener(tmp_path) -> None:  # type: ignore[no-untyped-def]
    died: list[tuple[object, object]] = []
    with BatchPoolExecutor(max_workers=1) as ex:
        ex.add_listener(on_worker_died=lambda pid, code: died.append((pid, code)))
        with pytest.raises(batchpool.WorkerCrashedError):
            ex.submit(helpers.exit_now, 3).result(TIMEOUT)
        assert ex.submit(helpers.add_one, 1).result(TIMEOUT) == 2
    assert died and died[0][1] == 3
    assert ex.stats().worker_restarts == 1


def test_prometheus_histograms_count_every_completed_job(pool: Callable[..., BatchPoolExecutor]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from batchpool.prometheus import BatchPoolCollector

    ex = pool()
    [f.result(TIMEOUT) for f in [ex.submit(helpers.add_one, i) for i in range(500)]]
    registry = CollectorRegistry()
    registry.register(BatchPoolCollector(ex, pool="jobs"))
    ex.shutdown(wait=True)
    for text in (ex.stats().to_prometheus(pool="jobs"), generate_latest(registry).decode()):
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("queue_wait", "end_to_end"):
            samples = fams[f"batchpool_{name}_seconds"].samples
            count = next(s.value for s in samples if s.name.endswith("_count"))
            buckets = [s.value for s in samples if s.name.endswith("_bucket")]
            assert count == 500 and buckets[-1] == 500 and buckets == sorted(buckets)
            assert all(s.labels["pool"] == "jobs" for s in samples)
