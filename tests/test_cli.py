"""The command line, end to end, in subprocesses: output that fits 80 columns, usage errors, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import batchpool
from batchpool.bench.runner import WORKLOADS

ROOT = Path(__file__).parent.parent


def _run(*args: str, timeout: float = 180, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "batchpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _fits(text: str, width: int = 80) -> None:
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} lines over {width} columns, e.g. {long[0]!r}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick_fits_80_columns_and_keeps_every_figure_in_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _run("bench", "--quick", "--json", str(out), timeout=280)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    data = json.loads(out.read_text())
    assert data["system"]["python"] and data["system"]["start_method"] and data["repeat"] == 1
    seen = {(r["workload"], r["executor"]): r for r in data["results"]}
    for name, workload in WORKLOADS.items():
        if workload.standalone is None:
            assert {(name, e) for e in workload.pools} <= set(seen), name
        else:
            assert any(w == name for w, _ in seen), name
    for r in seen.values():
        assert r["skipped"] or (r["samples"] and r["median"] > 0), r
    assert seen["latency", "batchpool-process"]["extra"]["idle_p50_ms"] > 0
    assert seen["gc", "ThreadPoolExecutor"]["median"] > 0
    assert "share_of_plain" in seen["map", "batchpool+retry"]["extra"]
    text = result.stdout
    assert "batchpool bench" in text and "What to choose" in text and "tiny jobs:" in text
    assert "too short to trust" in text and "spread" not in text  # one repetition: no spread
    assert "skipped" not in text
    missing = [line for line in text.splitlines() if line.startswith("not installed:")]
    assert len(missing) <= 2  # peers on one line (and distributed on another)
    assert data["what_to_choose"]


def test_bench_workload_subset_with_repetitions_shows_spreads() -> None:
    result = _run(
        "bench",
        "--workload",
        "submit",
        "--executor",
        "batchpool-thread",
        "--executor",
        "ThreadPoolExecutor",
        "--repeat",
        "2",
        "--quick",
        columns=100,
    )
    assert result.returncode == 0, result.stderr
    _fits(result.stdout, 100)
    assert "spread" in result.stdout and "±" in result.stdout
    assert "What to choose" in result.stdout


def test_bench_fn_takes_an_iterable_or_a_zero_argument_callable() -> None:
    for inputs in ("tests.helpers:SMALL_INPUTS", "tests.cli_inputs:small_inputs"):
        result = _run("bench", "--fn", "tests.helpers:add_one", "--inputs", inputs, "--workers", "2")
        assert result.returncode == 0, result.stderr
        assert "best:" in result.stdout and "items/s" in result.stdout
        _fits(result.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bench", "--workers", "0"), "argument --workers: must be >= 1, got 0"),
        (("bench", "--workload", "nope"), "argument --workload: invalid choice: 'nope'"),
        (("bench", "--executor", "nope"), "argument --executor: invalid choice: 'nope'"),
        (("bench", "--fn", "nosuch:fn"), "argument --fn: cannot import module 'nosuch'"),
        (("bench", "--fn", "os:nosuch"), "argument --fn: module 'os' has no 'nosuch'"),
        (("bench", "--fn", "os:sep"), "argument --fn: os:sep is not callable"),
        (("bench", "--fn", "os:getcwd", "--inputs", "nosuch:x"), "argument --inputs: cannot import"),
        (("bench", "--fn", "os:getcwd", "--inputs", "os:getpid"), "argument --inputs: os:getpid must be an iterable"),
        (("bench", "--inputs", "tests.helpers:SMALL_INPUTS"), "argument --inputs: only with --fn"),
        (("demo", "--seconds", "-1"), "argument --seconds: must be a number > 0"),
        (("demo", "--seconds", "nan"), "argument --seconds: must be a number > 0"),
        (("demo", "--workers", "0"), "argument --workers: must be >= 1"),
        (("compare", "--jobs", "0"), "argument --jobs: must be >= 1"),
        (("journal",), "the following arguments are required: PATH"),
        (("journal", "/no/such/journal.db"), "argument PATH: no such file"),
    ],
)
def test_invalid_values_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = _run(*args, timeout=60, columns=200)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: batchpool")
    assert lines[1].startswith("batchpool") and message in lines[1], lines[1]


def test_help_lists_choices_and_defaults() -> None:
    result = _run("bench", "--help", timeout=60)
    assert result.returncode == 0
    _fits(result.stdout)
    flat = " ".join(result.stdout.split())
    for name in (*WORKLOADS, "batchpool-process", "ProcessPoolExecutor", "(default: 2)"):
        assert name in flat, name


def test_version() -> None:
    result = _run("--version", timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"batchpool {batchpool.__version__}"


def test_journal_of_a_file_that_is_not_one_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"")
    result = _run("journal", str(path), "--failed", timeout=60)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert str(path) in result.stderr


def test_demo_runs_with_the_dashboard() -> None:
    result = _run("demo", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "jobs done" in result.stdout and "workers replaced" in result.stdout
    _fits(result.stdout.strip().splitlines()[-1])


def test_demo_without_the_dashboard() -> None:
    result = _run("demo", "--seconds", "1", "--no-dashboard")
    assert result.returncode == 0, result.stderr
    assert "jobs done" in result.stdout and "╭" not in result.stdout


def test_compare_runs() -> None:
    result = _run("compare", "--jobs", "2000")
    assert result.returncode == 0, result.stderr
    assert "x ProcessPoolExecutor" in result.stdout
