from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from batchpool import BatchPoolExecutor, Priority
from batchpool.options import DEFAULT_MAX_BATCH_SIZE


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": "2"}, TypeError, "max_workers"),
        ({"max_workers": True}, TypeError, "max_workers"),
        ({"backend": "gpu"}, ValueError, "backend"),
        ({"transport": "carrier-pigeon"}, ValueError, "transport"),
        ({"max_batch_size": 0}, ValueError, "max_batch_size"),
        ({"max_batch_size": 1.5}, TypeError, "max_batch_size"),
        ({"max_delay": -1}, ValueError, "max_delay"),
        ({"max_delay": float("nan")}, ValueError, "max_delay"),
        ({"max_delay": "soon"}, TypeError, "max_delay"),
        ({"initializer": 42}, TypeError, "initializer must be a callable"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"thread_name_prefix": 3, "backend": "thread"}, TypeError, "thread_name_prefix"),
        ({"mp_context": "spawn"}, TypeError, "mp_context"),
        ({"mp_context": object()}, TypeError, "mp_context"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], error: type, names: str) -> None:
    with pytest.raises(error, match=names):
        BatchPoolExecutor(**kwargs)


def test_defaults_follow_the_standard_pools() -> None:
    import os

    cpus = (getattr(os, "process_cpu_count", None) or os.cpu_count)() or 1
    assert BatchPoolExecutor()._max_workers == cpus
    assert BatchPoolExecutor(backend="thread")._max_workers == min(32, cpus + 4)
    assert BatchPoolExecutor()._config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert BatchPoolExecutor()._config.max_delay == 0.0


def test_max_tasks_per_child_defaults_to_spawn() -> None:
    ex = BatchPoolExecutor(1, max_tasks_per_child=3)
    assert ex._mp_context.get_start_method() == "spawn"


def test_thread_name_prefix_may_be_passed_positionally_as_for_thread_pools() -> None:
    ex = BatchPoolExecutor(2, "web", backend="thread")
    assert ex._config.thread_name_prefix == "web"


def test_an_explicit_context_is_kept() -> None:
    ctx = multiprocessing.get_context("spawn")
    assert BatchPoolExecutor(1, mp_context=ctx)._mp_context is ctx


def test_priorities_order() -> None:
    assert sorted([Priority.BULK, Priority.REALTIME, Priority.NORMAL]) == [
        Priority.REALTIME,
        Priority.NORMAL,
        Priority.BULK,
    ]
