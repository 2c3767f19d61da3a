"""The command line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchpool.bench.runner import EXECUTORS, WORKLOADS


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchpool", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.timeout(240)
def test_bench_quick_covers_every_workload_and_executor(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _run("bench", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["system"]["python"] and data["system"]["start_method"]
    seen = {(r["workload"], r["executor"]): r for r in data["results"]}
    assert set(seen) == {(w, e) for w in WORKLOADS for e in EXECUTORS}
    for r in seen.values():
        assert r["skipped"] or (r["samples"] and r["median"] > 0), r
    assert not seen["submit", "batchpool-process"]["skipped"]
    assert "batchpool bench" in result.stdout


def test_bench_fn_finds_a_best_configuration() -> None:
    result = _run("bench", "--fn", "tests.helpers:add_one", "--inputs", "tests.helpers:SMALL_INPUTS", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "best:" in result.stdout and "items/s" in result.stdout


def test_bench_rejects_an_unknown_workload() -> None:
    result = _run("bench", "--workload", "nope")
    assert result.returncode != 0 and "unknown workload" in result.stderr


def test_demo_runs_with_the_dashboard() -> None:
    result = _run("demo", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "jobs done" in result.stdout and "workers replaced" in result.stdout


def test_compare_runs() -> None:
    result = _run("compare", "--jobs", "2000")
    assert result.returncode == 0, result.stderr
    assert "x ProcessPoolExecutor" in result.stdout
