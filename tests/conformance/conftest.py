"""The executors the contract suite runs against: batchpool's two backends,
and the standard pools as a control (a test the control fails is wrong)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from batchpool import BatchPoolExecutor


def _process(method: str, transport: str = "shm") -> Callable[..., Executor]:
    context = multiprocessing.get_context(method)
    return lambda **kw: BatchPoolExecutor(backend="process", mp_context=context, transport=transport, **kw)


# The axis of CPython's create_executor_tests: each backend, each start method
# (forkserver is the default, so "batchpool-process" covers it) and each transport.
FACTORIES: dict[str, Callable[..., Executor]] = {
    "batchpool-process": lambda **kw: BatchPoolExecutor(backend="process", **kw),
    "batchpool-process-fork": _process("fork"),
    "batchpool-process-spawn": _process("spawn"),
    "batchpool-process-pipe": _process("forkserver", "pipe"),
    "batchpool-thread": lambda **kw: BatchPoolExecutor(backend="thread", **kw),
    "stdlib-process": lambda **kw: ProcessPoolExecutor(mp_context=multiprocessing.get_context("forkserver"), **kw),
    "stdlib-thread": lambda **kw: ThreadPoolExecutor(**kw),
}


@pytest.fixture(params=sorted(FACTORIES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Callable[..., Executor]]:
    """Build executors of this kind; every one is shut down after the test."""
    made: list[Executor] = []

    def factory(**kwargs: Any) -> Executor:
        executor = FACTORIES[kind](**kwargs)
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(kind: str) -> Iterator[Any]:
    """An Event the jobs of this kind of executor can wait on."""
    if kind.endswith("thread"):
        yield threading.Event()
        return
    manager = multiprocessing.get_context("spawn").Manager()
    try:
        yield manager.Event()
    finally:
        manager.shutdown()
