from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool.metrics import Histogram, Metrics

BUCKET_ERROR = 2 ** (1 / 4)  # one bucket: a factor of about 1.19


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-5, max_value=100.0), min_size=1, max_size=500), st.sampled_from([50, 95, 99]))
def test_percentiles_match_a_reference_within_one_bucket(values: list[float], q: int) -> None:
    h = Histogram()
    for v in values:
        h.add(v)
    ordered = sorted(values)
    reference = ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
    got = h.percentile(q)
    assert reference / BUCKET_ERROR <= got <= reference * BUCKET_ERROR
    assert h.max == max(values) and h.count == len(values)


def test_weighted_adds_count_every_job() -> None:
    h = Histogram()
    h.add(0.001, weight=99)
    h.add(1.0, weight=1)
    assert h.count == 100
    assert h.percentile(50) < 0.0013
    assert h.percentile(100) >= 0.8


def test_counters_and_throughput_windows() -> None:
    now = [1000.0]
    m = Metrics(clock=lambda: now[0])
    m.batch_sent(10, "size", 0.002)
    m.results(10)
    m.batch_done(10, 0.01, 0.02)
    m.job_failed(1, ValueError("x"), final=False)
    m.job_failed(1, ValueError("x"), final=True, timed_out=False)
    m.jobs_cancelled(3)
    now[0] += 1.0
    s = m.snapshot(submitted=14, queued=0)
    assert (s.completed, s.failed, s.retried, s.cancelled, s.batches) == (10, 1, 1, 3, 1)
    assert s.throughput_1s == 11 and s.history[-1] == 11
    assert s.flush_reasons == {"size": 1} and s.batch_sizes == {16: 1}
    assert "ValueError: x" in s.recent_errors[-1]


def test_prometheus_text_parses() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    m.batch_sent(4, "free worker", 0.001)
    m.results(4)
    m.batch_done(4, 0.004, 0.005)
    text = m.snapshot(submitted=4, lanes={'NORMAL/f"q': 2}).to_prometheus()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert set(types.values()) == {"counter", "gauge", "histogram"}
    assert 'batchpool_completed_total{pool="default"} 4' in text
    assert 'batchpool_lane_depth{pool="default",lane="NORMAL/f\\"q"} 2' in text


def test_windows_divide_by_the_pool_age_while_it_is_younger_than_the_window() -> None:
    now = [1000.5]
    m = Metrics(clock=lambda: now[0])
    now[0] += 0.5
    m.results(10)  # 10 jobs in the first half second
    s = m.snapshot()
    assert s.throughput_1s == 20 and s.throughput_10s == 20 and s.throughput_total == 20
    for _ in range(3):  # then 100 jobs in each of three whole seconds
        now[0] += 1
        m.results(100)
    now[0] += 0.25  # 3.75 s old: every job so far is inside the 10 s window
    s = m.snapshot()
    assert s.throughput_10s == pytest.approx(310 / 3.75)
    assert s.throughput_1s == 100  # the last whole second
    for _ in range(20):
        now[0] += 1
        m.results(50)
    s = m.snapshot()
    assert s.throughput_10s == 50 and s.throughput_1s == 50


def test_recent_errors_say_which_were_retried_and_which_final() -> None:
    m = Metrics()
    m.job_failed(1, ConnectionError("hiccup"), final=False)
    m.job_failed(1, ConnectionError("hiccup"), final=True)
    m.jobs_failed(3, RuntimeError("pool broken"))
    s = m.snapshot()
    assert s.recent_errors_final == [False, True, True]
    assert "job 1: ConnectionError: hiccup" in s.recent_errors[0]


def test_queued_figures_fold_in_order_with_failures_counted_at_once() -> None:
    # Results are queued and folded by the snapshot; a failure is counted at
    # once. A result from an earlier second folded after a later failure still
    # lands in its own second, and the window never holds one second twice.
    now = [1000.5]
    m = Metrics(clock=lambda: now[0])
    m.results(3)  # second 1000, queued
    now[0] = 1002.5
    m.job_failed(1, ValueError("x"), final=True)  # second 1002, counted at once
    now[0] = 1001.5
    m.results(2)  # second 1001 (a clock read before the failure's), queued
    m.batch_sent(5, "size", 0.001)
    m.batch_done(5, 0.005, 0.002)
    now[0] = 1003.0
    s = m.snapshot()
    assert (s.completed, s.failed, s.batches) == (5, 1, 1)
    assert s.history[-3:] == [3, 2, 1]
    assert s.run_time.count == 5 and s.queue_wait.count == 5


def test_the_recording_thread_folds_once_enough_figures_wait() -> None:
    m = Metrics()
    for _ in range(2000):
        m.results(1)
    assert len(m._figures) < 600  # bounded without any snapshot
    assert m.snapshot().completed == 2000
