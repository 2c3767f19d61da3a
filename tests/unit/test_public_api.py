"""The public surface is deliberate: pinned names, docstrings, types shipped."""

from __future__ import annotations

import inspect
from pathlib import Path

import batchpool

PUBLIC = [
    "BatchPoolError",
    "BatchPoolExecutor",
    "BatchResultError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DuplicateJobError",
    "ExecutorView",
    "JobInfo",
    "JobTimeoutError",
    "Journal",
    "JournalCorruptError",
    "JournalError",
    "JournalFullError",
    "JournalLockedError",
    "JournalReadOnlyError",
    "NotAJournalError",
    "PoisonJobError",
    "Priority",
    "ProcessPoolExecutor",
    "QueueFullError",
    "RemoteError",
    "RemoteTraceback",
    "ResultNotKeptError",
    "RetryPolicy",
    "Run",
    "RunFailedError",
    "RunFinishedError",
    "RunProgress",
    "RunStore",
    "ShutdownError",
    "Stats",
    "ThreadPoolExecutor",
    "TransportError",
    "UNLIMITED",
    "WorkerCrashedError",
    "Dashboard",
    "batched",
    "job_info",
    "live_runs",
    "progress",
    "serve_metrics",
]


def test_all_is_pinned() -> None:
    assert sorted(batchpool.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(batchpool, name)


def test_every_public_name_has_a_docstring() -> None:
    for name in PUBLIC:
        obj = getattr(batchpool, name)
        assert inspect.getdoc(obj), name
    for name, member in inspect.getmembers(batchpool.BatchPoolExecutor):
        if not name.startswith("_") and callable(member):
            assert inspect.getdoc(member), name


def test_py_typed_is_shipped() -> None:
    assert (Path(batchpool.__file__).parent / "py.typed").exists()


def test_importing_batchpool_does_not_import_rich() -> None:
    import subprocess
    import sys

    code = "import sys, batchpool; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
