from __future__ import annotations

import math
import re

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


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def test_prometheus_text_parses() -> None:
    m = Metrics()
    m.batch_sent(4, "free worker", 0.001)
    m.results(4)
    m.batch_done(4, 0.004, 0.005)
    text = m.snapshot(submitted=4, lanes={'NORMAL/f"q': 2}).to_prometheus()
    types = {}
    for line in text.strip().splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name] = kind
            assert kind in ("counter", "gauge", "summary")
        elif line.startswith("# HELP"):
            continue
        else:
            assert PROM_LINE.match(line), line
            name = re.split(r"[{ ]", line)[0]
            base = re.sub(r"_(sum|count)$", "", name)
            assert name in types or base in types, line
    assert types["batchpool_completed_total"] == "counter"
    assert "batchpool_completed_total 4" in text
    assert 'batchpool_lane_depth{lane="NORMAL/f\\"q"} 2' in text
