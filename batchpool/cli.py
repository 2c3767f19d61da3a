"""The ``batchpool`` command line: ``bench`` and ``demo``.

The only module allowed to print. Imports the executor and the bench runner.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

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


def compare(jobs: int, workers: int, baseline_fraction: float = 0.1) -> None:
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


def demo(seconds: float, workers: int) -> int:
    """Run the demo workload with the dashboard, then print a summary."""
    from .bench.demo import run

    stats = run(seconds, workers)
    print(
        f"\n{seconds:g} s: {stats['completed']:,} jobs done, {stats['failed']:,} failed, "
        f"{stats['retried']:,} retries, {stats['worker_restarts']} workers replaced, "
        f"{stats['throughput_total']:,.0f} jobs/s on average, "
        f"p99 end to end {stats['end_to_end']['p99'] * 1000:.1f} ms"
    )
    return 0


def _format(value: float, unit: str) -> str:
    if unit == "GB/s":
        return f"{value:.2f} {unit}"
    if unit.endswith("ms"):
        return f"{value:.2f} ms"
    return f"{value:,.0f} {unit}"


def bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print (and optionally save) the table."""
    from rich.console import Console
    from rich.table import Table

    from .bench.runner import BASELINES, EXECUTORS, WORKLOADS, run, system_info

    console = Console(width=max(Console().width, 150))
    workloads = args.workload or list(WORKLOADS)
    executors = args.executor or list(EXECUTORS)
    for name in workloads:
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    for name in executors:
        if name not in EXECUTORS:
            raise SystemExit(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    repeat = args.repeat or (1 if args.quick else 3)
    info = system_info(args.workers)
    with console.status("benchmarking") as status:
        results = run(
            workloads,
            executors,
            workers=args.workers,
            repeat=repeat,
            quick=args.quick,
            progress=lambda text: status.update(f"benchmarking: {text}"),
        )
    table = Table(
        title=f"batchpool bench ({'quick, ' if args.quick else ''}{args.workers} workers, "
        f"median of {repeat}; Python {info['python']}, {info['cpus']} CPUs)"
    )
    for column in ("workload", "executor", "result", "spread", *[f"vs {b}" for b in BASELINES], "notes"):
        table.add_column(column, justify="left" if column in ("workload", "executor", "notes") else "right")
    by_key = {(r.workload, r.executor): r for r in results}
    for r in results:
        if r.skipped:
            table.add_row(r.workload, r.executor, "-", "", *[""] * len(BASELINES), f"skipped: {r.skipped}")
            continue
        lower_is_better = r.unit.endswith("ms")
        ratios = []
        for base in BASELINES:
            other = by_key.get((r.workload, base))
            if other is None or other.skipped or not other.samples or base == r.executor:
                ratios.append("")
            else:
                ratio = other.median / r.median if lower_is_better else r.median / other.median
                ratios.append(f"{ratio:.2f}x")
        low, high = min(r.samples), max(r.samples)
        spread = f"{low:.2f}-{high:.2f}" if high < 100 else f"{low:,.0f}-{high:,.0f}"
        notes = ", ".join(f"{k}={v:.2f}" for k, v in r.extra.items())
        table.add_row(r.workload, r.executor, _format(r.median, r.unit), spread, *ratios, notes)
    console.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": info, "quick": args.quick, "results": [r.to_dict() for r in results]}, f, indent=2)
        console.print(f"wrote {args.json}")
    return 0


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"expected module:name, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def bench_fn(args: argparse.Namespace) -> int:
    """Try the user's function on each pool and batch setting; print the best."""
    from rich.console import Console
    from rich.table import Table

    fn = _load(args.fn)
    inputs = list(_load(args.inputs)) if args.inputs else list(range(10_000))
    items = inputs() if callable(inputs) else inputs
    console = Console()
    configs: list[tuple[str, Callable[[], Any]]] = [
        ("ThreadPoolExecutor", lambda: ThreadPoolExecutor(args.workers)),
        ("ProcessPoolExecutor", lambda: ProcessPoolExecutor(args.workers)),
    ]
    for backend in ("thread", "process"):
        for size in (64, 512, "auto"):
            configs.append((f"batchpool backend={backend} max_batch_size={size}", _maker(args.workers, backend, size)))
    table = Table(title=f"{args.fn} over {len(items):,} inputs, {args.workers} workers")
    table.add_column("configuration")
    table.add_column("items/s", justify="right")
    best: tuple[float, str] = (0.0, "")
    for name, make in configs:
        with make() as ex:
            start = time.perf_counter()
            futures = [ex.submit(fn, item) for item in items]
            for f in futures:
                f.result()
            rate = len(items) / (time.perf_counter() - start)
        table.add_row(name, f"{rate:,.0f}")
        best = max(best, (rate, name))
    console.print(table)
    console.print(f"best: {best[1]} ({best[0]:,.0f} items/s)")
    return 0


def _maker(workers: int, backend: str, size: int | str) -> Callable[[], Any]:
    return lambda: BatchPoolExecutor(workers, backend=backend, max_batch_size=size)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchpool`` console script."""
    parser = argparse.ArgumentParser(prog="batchpool", description="batchpool: a micro-batching executor")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="a mixed workload with the live dashboard")
    demo_parser.add_argument("--seconds", type=float, default=15.0)
    demo_parser.add_argument("--workers", type=int, default=2)
    compare_parser = commands.add_parser("compare", help="tiny jobs, one submit each, against the stdlib pools")
    compare_parser.add_argument("--jobs", type=int, default=200_000)
    compare_parser.add_argument("--workers", type=int, default=2)
    compare_parser.add_argument(
        "--baseline-fraction",
        type=float,
        default=0.1,
        help="share of the jobs given to ProcessPoolExecutor (1.0: all of them)",
    )
    bench_parser = commands.add_parser("bench", help="measure batchpool against the pools you use")
    bench_parser.add_argument("--workload", action="append", help="repeatable; default: all")
    bench_parser.add_argument("--executor", action="append", help="repeatable; default: all")
    bench_parser.add_argument("--workers", type=int, default=2)
    bench_parser.add_argument("--repeat", type=int, default=0, help="repetitions (default 3, 1 with --quick)")
    bench_parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (under 30 s)")
    bench_parser.add_argument("--json", metavar="FILE", help="also write machine-readable results")
    bench_parser.add_argument("--fn", metavar="MODULE:FUNCTION", help="benchmark your own function instead")
    bench_parser.add_argument("--inputs", metavar="MODULE:ITERABLE", help="inputs for --fn (default: range(10000))")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seconds, args.workers)
    if args.command == "compare":
        compare(args.jobs, args.workers, args.baseline_fraction)
        return 0
    if args.fn:
        return bench_fn(args)
    return bench(args)
