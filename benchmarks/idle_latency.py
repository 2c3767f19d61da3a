"""Idle round trips, batchpool against the standard pool of its kind, interleaved, with the CPU each costs.

Run: ``python benchmarks/idle_latency.py [--pairs N] [--probes N]``.

One ``submit(probe).result()`` at a time on an idle pool (2 workers, warmed up
with overlapping jobs so that both are running), alternating pools pair by pair
so that the machine's drift hits both alike. Per pool and pair: the p50 round
trip and the parent's CPU time per round trip (``time.process_time``, every
thread of this process: where a pool's own Python work shows). ``batchpool
bench``'s latency workload reports the same p50 beside its flood figures; this
script isolates it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from batchpool import BatchPoolExecutor
from batchpool.bench import workloads as w

PAIRS: dict[str, tuple[Callable[[], Executor], Callable[[], Executor]]] = {
    "process": (lambda: ProcessPoolExecutor(2), lambda: BatchPoolExecutor(2)),
    "thread": (lambda: ThreadPoolExecutor(2), lambda: BatchPoolExecutor(2, backend="thread")),
}


def measure(make: Callable[[], Executor], probes: int) -> tuple[float, float]:
    """(p50 round trip, parent CPU per round trip), in microseconds."""
    with make() as ex:
        for f in [ex.submit(w.warm_up, 0.05, ()) for _ in range(4)]:
            f.result(60)
        for _ in range(50):
            ex.submit(w.probe, 0.0).result(60)
        trips = []
        cpu = time.process_time()
        for _ in range(probes):
            sent = time.perf_counter()
            ex.submit(w.probe, sent).result(60)
            trips.append(time.perf_counter() - sent)
        cpu = time.process_time() - cpu
    trips.sort()
    return trips[len(trips) // 2] * 1e6, cpu / probes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=1000)
    args = parser.parse_args()
    for kind, (stdlib, ours) in PAIRS.items():
        ratios = []
        for _ in range(args.pairs):
            (s_p50, s_cpu), (b_p50, b_cpu) = measure(stdlib, args.probes), measure(ours, args.probes)
            ratios.append(b_p50 / s_p50)
            print(
                f"{kind:7}  stdlib p50 {s_p50:6.0f} us (cpu {s_cpu:5.0f})   "
                f"batchpool p50 {b_p50:6.0f} us (cpu {b_cpu:5.0f})   ratio {b_p50 / s_p50:.2f}"
            )
        print(f"{kind:7}  median ratio {sorted(ratios)[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
