"""The live dashboard while work runs (a one-line log when not on a terminal)."""

from __future__ import annotations

import logging
import time

from batchpool import BatchPoolExecutor, Dashboard


def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with BatchPoolExecutor(max_workers=2) as ex, Dashboard(ex):
        futures = [ex.submit(work, 0.001) for _ in range(2_000)]
        total = sum(f.result(timeout=60) for f in futures)
    stats = ex.stats()
    print(f"done: {stats.completed:,} jobs, {total:.1f} s of work, p99 end to end {stats.end_to_end.p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
