"""A REALTIME job overtakes a BULK backlog; BULK work still finishes."""

from __future__ import annotations

import time

from batchpool import BatchPoolExecutor, Priority


def work(x: int) -> int:
    time.sleep(0.0005)
    return x


def main() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        [f.result(timeout=30) for f in [ex.submit(work, i) for i in range(4)]]  # both workers up
        bulk = ex.options(priority=Priority.BULK)
        backlog = [bulk.submit(work, i) for i in range(5_000)]
        start = time.perf_counter()
        urgent = ex.options(priority=Priority.REALTIME).submit(work, -1)
        urgent.result(timeout=30)
        waited = (time.perf_counter() - start) * 1000
        done = sum(f.done() for f in backlog)
        print(f"REALTIME answered in {waited:.1f} ms with {len(backlog) - done:,} BULK jobs still queued")
        assert sum(f.result(timeout=60) for f in backlog) == sum(range(5_000))
        print("and the BULK backlog completed")


if __name__ == "__main__":
    main()
