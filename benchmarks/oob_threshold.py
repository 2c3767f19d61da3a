"""Where out of band starts to pay: float64 arrays of one size, in band vs out of band.

Run: ``python benchmarks/oob_threshold.py`` (2 workers; GB/s, best of 3 rounds).
This is how ``options.OOB_THRESHOLD`` was chosen.
"""

from __future__ import annotations

import time

import numpy as np

from batchpool import BatchPoolExecutor
from batchpool.backends import process
from batchpool.bench import workloads as w


def throughput(size: int, threshold: int, jobs: int) -> float:
    """GB/s for ``jobs`` arrays of ``size`` bytes with this out-of-band threshold."""
    setattr(process, "OOB_THRESHOLD", threshold)  # noqa: B010 - read by the parent at each batch
    with BatchPoolExecutor(max_workers=2) as ex:
        for warm in [ex.submit(w.warm_up, 0.05, ("numpy",)) for _ in range(4)]:
            warm.result(60)
        distinct = [np.random.default_rng(i).random(size // 8) for i in range(16)]
        best = 0.0
        for _ in range(3):
            arrays = [distinct[i % 16][:] for i in range(jobs)]
            start = time.perf_counter()
            for f in [ex.submit(w.array_sum, a) for a in arrays]:
                f.result(600)
            best = max(best, jobs * size / (time.perf_counter() - start) / 1e9)
        return best


def main() -> None:
    """Print both rates for sizes around the threshold."""
    for kib in (16, 32, 64, 128, 256):
        size = kib * 1024
        jobs = 4000 if kib < 256 else 2000
        oob = throughput(size, size, jobs)
        in_band = throughput(size, size + 1, jobs)
        print(f"{kib:4d} KiB: out of band {oob:.2f} GB/s, in band {in_band:.2f} GB/s")


if __name__ == "__main__":
    main()
