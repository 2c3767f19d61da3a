"""The synthetic workload behind ``batchpool demo``.

Mixed priorities, a few failures that retries absorb, a job now and then that
crashes its worker, and a rate-limited batch function, all on one pool, for a
set time. Midway the pool is controlled while it runs: it grows by two workers,
pauses for a moment (the dashboard says PAUSED; queues grow, nothing is lost),
resumes, and shrinks back.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

from ..executor import BatchPoolExecutor
from ..jobs import batched
from ..options import Priority
from ..retry import RetryPolicy


def work(seconds: float) -> float:
    """Busy work of about ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return seconds


def flaky(seconds: float, failure_rate: float) -> float:
    """Work that fails now and then (retries absorb it)."""
    if random.random() < failure_rate:
        raise ConnectionError("upstream hiccup")
    return work(seconds)


def crash() -> None:
    """A job that kills its worker (the pool replaces it)."""
    os._exit(1)


@batched
def bulk_insert(rows: list[int]) -> list[int]:
    """One round trip per batch, like a bulk INSERT."""
    time.sleep(0.001)
    return rows


logger = logging.getLogger("batchpool")


def _control_script(seconds: float, workers: int) -> list[tuple[float, str, Any]]:
    """When (seconds from the start) to resize, pause and resume the pool."""
    pause = min(1.0, seconds * 0.1)
    return [
        (seconds * 0.25, "resize", workers + 2),
        (seconds * 0.45, "pause", None),
        (seconds * 0.45 + pause, "resume", None),
        (seconds * 0.7, "resize", workers),
    ]


def run(seconds: float, workers: int, dashboard: bool = True) -> dict[str, Any]:
    """Drive the pool for ``seconds`` and return its final stats as a dict."""
    policy = RetryPolicy(max_attempts=4, backoff=0.01, retry_on=(ConnectionError,))
    ex = BatchPoolExecutor(workers, retry=policy, dashboard=dashboard)
    ex.set_policy(bulk_insert, rate_limit=2000, max_concurrency=2)  # a database that takes so much
    stop = threading.Event()
    rng = random.Random(7)

    def steady(view: Any, fn: Any, *args: Any, pause: float) -> None:
        while not stop.is_set():
            futures = [view.submit(fn, *args) for _ in range(50)]
            for f in futures:
                try:
                    f.result(60)
                except Exception:  # noqa: BLE001 - the dashboard shows it
                    pass
            stop.wait(pause)

    feeders = [
        threading.Thread(target=steady, args=(ex.options(priority=Priority.BULK), work, 0.0005), kwargs={"pause": 0.0}),
        threading.Thread(target=steady, args=(ex, flaky, 0.0002, 0.05), kwargs={"pause": 0.01}),
        threading.Thread(
            target=steady, args=(ex.options(priority=Priority.REALTIME), work, 0.0001), kwargs={"pause": 0.05}
        ),
        threading.Thread(target=steady, args=(ex, bulk_insert, 1), kwargs={"pause": 0.02}),
    ]
    for feeder in feeders:
        feeder.start()
    start = time.monotonic()
    end = start + seconds
    script = _control_script(seconds, workers)
    try:
        while not stop.wait(min(0.25, max(0.0, end - time.monotonic()))):
            now = time.monotonic()
            if now >= end:
                break
            while script and now - start >= script[0][0]:
                _, action, arg = script.pop(0)
                logger.info("demo: %s%s", action, "" if arg is None else f"({arg})")
                getattr(ex, action)(*(() if arg is None else (arg,)))
            if rng.random() < 0.05:  # now and then a worker dies mid-job
                ex.options(retry=RetryPolicy(max_attempts=1)).submit(crash)
    finally:
        ex.resume()  # should the time be up while paused
        stop.set()
        for feeder in feeders:
            feeder.join()
        ex.shutdown(wait=True)
    return ex.stats().to_dict()
