"""The Prometheus export: text that prometheus-client parses, histograms, the collector."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchpool.metrics import Metrics, Stats
from batchpool.prometheus import BatchPoolCollector, exposition


def _busy_stats() -> Stats:
    now = [100.0]
    m = Metrics(clock=lambda: now[0])
    for size, wait, run, e2e in ((4, 0.0005, 0.002, 0.003), (16, 0.02, 0.1, 0.15), (1, 3.0, 0.5, 4.0)):
        m.batch_sent(size, "free worker", wait)
        m.results(size)
        m.batch_done(size, run, e2e)
    m.job_failed(7, ValueError("bad"), final=True)
    now[0] += 2
    return m.snapshot(submitted=22, queued=3, lanes={'NORMAL/f"q\\x': 3})


def _parsed(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_text_parses_and_latencies_are_cumulative_histograms_in_seconds() -> None:
    stats = _busy_stats()
    fams = _parsed(exposition(stats, pool="api"))
    assert fams["batchpool_completed"].type == "counter"  # type: ignore[attr-defined]
    for name in ("queue_wait", "run_time", "end_to_end"):
        fam = fams[f"batchpool_{name}_seconds"]
        assert fam.type == "histogram"  # type: ignore[attr-defined]
        samples = fam.samples  # type: ignore[attr-defined]
        assert all(s.labels["pool"] == "api" for s in samples)
        buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
        bounds = [b for b, _ in buckets]
        counts = [n for _, n in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert counts == sorted(counts), "cumulative buckets never go down"
        count = next(s.value for s in samples if s.name.endswith("_count"))
        assert counts[-1] == count == stats.completed
        total = next(s.value for s in samples if s.name.endswith("_sum"))
        assert total == pytest.approx(getattr(stats, name).mean * count)
    e2e = fams["batchpool_end_to_end_seconds"].samples  # type: ignore[attr-defined]
    at = {float(s.labels["le"]): s.value for s in e2e if s.name.endswith("_bucket")}
    assert at[0.004096] == 4 and at[0.262144] == 20 and at[8.388608] == 21  # 3 ms, 150 ms, 4 s


def test_no_in_process_quantiles_and_every_sample_has_a_pool_label() -> None:
    text = exposition(_busy_stats(), pool="p1")
    assert "quantile" not in text and "summary" not in text
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            assert sample.labels["pool"] == "p1", sample


def test_label_values_are_escaped() -> None:
    fams = _parsed(exposition(_busy_stats()))
    lanes = fams["batchpool_lane_depth"].samples  # type: ignore[attr-defined]
    assert [(s.labels["lane"], s.value) for s in lanes] == [('NORMAL/f"q\\x', 3)]


def test_batch_size_histogram() -> None:
    fam = _parsed(exposition(_busy_stats()))["batchpool_batch_size"]
    at = {s.labels.get("le"): s.value for s in fam.samples if s.name.endswith("_bucket")}  # type: ignore[attr-defined]
    assert at["1.0"] == 1 and at["4.0"] == 2 and at["16.0"] == 3 and at["+Inf"] == 3


class _Pool:
    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def stats(self) -> Stats:
        return self._stats


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted((k, str(float(v)) if k == "le" else v) for k, v in s.labels.items()))
            out[s.name, labels] = s.value
    return out


def test_the_collector_exports_the_same_families_in_a_fresh_registry() -> None:
    stats = _busy_stats()
    registry = CollectorRegistry()
    registry.register(BatchPoolCollector(_Pool(stats), pool="api"))
    ours = _series(exposition(stats, pool="api"))
    theirs = {k: v for k, v in _series(generate_latest(registry).decode()).items() if not k[0].endswith("_created")}
    assert theirs == ours


def test_several_pools_share_one_collector_and_a_second_collector_clashes() -> None:
    registry = CollectorRegistry()
    collector = BatchPoolCollector(_Pool(_busy_stats()), pool="a")
    collector.add(_Pool(Metrics().snapshot()), pool="b")
    registry.register(collector)
    completed = {
        s.labels["pool"]: s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
        if s.name == "batchpool_completed_total"
    }
    assert completed == {"a": 21, "b": 0}
    with pytest.raises(ValueError, match="already"):
        collector.add(_Pool(Metrics().snapshot()), pool="a")
    with pytest.raises(ValueError):
        registry.register(BatchPoolCollector(_Pool(Metrics().snapshot()), pool="c"))
    collector.remove("b")
    assert 'pool="b"' not in generate_latest(registry).decode()
