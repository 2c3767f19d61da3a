"""Retries with backoff, per-job timeouts, and a worker crash the pool survives."""

from __future__ import annotations

import os
import random
import time

from batchpool import BatchPoolExecutor, RetryPolicy, WorkerCrashedError


def call_flaky_service(x: int) -> int:
    if random.random() < 0.3:
        raise ConnectionError("service unavailable")
    return x * 2


def sometimes_hangs(x: int) -> int:
    if x == 3:
        time.sleep(3600)  # stuck in a call that never returns
    return x


def segfaults() -> None:
    os._exit(139)  # stands in for a crash in native code


def main() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.01, retry_on=(ConnectionError,))
    with BatchPoolExecutor(max_workers=2, retry=policy) as ex:
        results = [f.result(timeout=30) for f in [ex.submit(call_flaky_service, i) for i in range(100)]]
        print(f"flaky service: 100/100 succeeded, {ex.stats().retried} retries on the way")

        limited = ex.options(timeout=0.5, retry=False)
        for i, fut in enumerate([limited.submit(sometimes_hangs, i) for i in range(5)]):
            try:
                fut.result(timeout=30)
            except TimeoutError:
                print(f"job {i} timed out; its worker was replaced")

        try:
            ex.options(retry=False).submit(segfaults).result(timeout=30)
        except WorkerCrashedError as exc:
            print(f"crash: {exc}")
        print("the pool goes on:", ex.submit(sum, results).result(timeout=30))


if __name__ == "__main__":
    main()
