"""The ``batchpool`` command line: ``batchpool demo`` (and, later, ``bench``).

The only module allowed to print. Imports the executor, nothing below it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from .executor import BatchPoolExecutor


def _tiny(x: int) -> int:
    return x + 1


def _time_submit(make: Callable[[], Executor], jobs: int) -> float:
    with make() as ex:
        ex.submit(_tiny, 0).result()  # workers up before the clock starts
        start = time.perf_counter()
        futures = [ex.submit(_tiny, i) for i in range(jobs)]
        for future in futures:
            future.result()
        return time.perf_counter() - start


def demo(jobs: int, workers: int, baseline_fraction: float = 0.1) -> None:
    """Submit ``jobs`` tiny jobs one by one to each pool and print the rates."""
    pools: list[tuple[str, Callable[[], Executor], int]] = [
        ("BatchPoolExecutor(process)", lambda: BatchPoolExecutor(workers), jobs),
        ("BatchPoolExecutor(thread)", lambda: BatchPoolExecutor(workers, backend="thread"), jobs),
        ("ThreadPoolExecutor", lambda: ThreadPoolExecutor(workers), jobs),
        # ProcessPoolExecutor pays a round trip per job; by default a tenth of
        # the jobs measures its rate without a minute's wait.
        ("ProcessPoolExecutor", lambda: ProcessPoolExecutor(workers), max(1, int(jobs * baseline_fraction))),
    ]
    print(f"{jobs:,} tiny jobs, one submit() each, {workers} workers")
    rates: dict[str, float] = {}
    for name, make, n in pools:
        seconds = _time_submit(make, n)
        rates[name] = n / seconds
        print(f"  {name:<28} {rates[name]:>12,.0f} jobs/s")
    base = rates["BatchPoolExecutor(process)"]
    print(
        f"BatchPoolExecutor(process) is {base / rates['ProcessPoolExecutor']:.1f}x ProcessPoolExecutor"
        f" and {base / rates['ThreadPoolExecutor']:.1f}x ThreadPoolExecutor"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchpool`` console script."""
    parser = argparse.ArgumentParser(prog="batchpool", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="show batching at work against the stdlib pools")
    demo_parser.add_argument("--jobs", type=int, default=200_000)
    demo_parser.add_argument("--workers", type=int, default=2)
    demo_parser.add_argument(
        "--baseline-fraction",
        type=float,
        default=0.1,
        help="share of the jobs given to ProcessPoolExecutor (1.0: all of them)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.jobs, args.workers, args.baseline_fraction)
    return 0
