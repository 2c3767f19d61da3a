"""The ``batchpool`` command line: ``bench``, ``demo``, ``compare`` and ``journal``.

The only module allowed to print. Imports the executor, the bench package and,
lazily, the journal's report. Every argument is checked by argparse: a wrong
value is a usage error (exit status 2, the usage line and one error line),
never a traceback. Output fits the terminal; when it is not a terminal, 100
columns (or ``COLUMNS``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .executor import BatchPoolExecutor

if TYPE_CHECKING:
    from rich.console import Console

#: Width of output that is not a terminal (a file, a pipe, CI logs).
FILE_WIDTH = 100


def _tiny(x: int) -> int:
    return x + 1


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("batchpool")
    except PackageNotFoundError:
        from . import __version__

        return str(__version__)


# -- argument types (each error becomes argparse's usage error) -----------------------


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _resolve(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE:NAME, got {spec!r}")
    # As `python -m` does: modules in the current directory can be named.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module)
    except ImportError as exc:
        raise argparse.ArgumentTypeError(f"cannot import module {module!r}: {exc}") from None
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise argparse.ArgumentTypeError(f"module {module!r} has no {name!r}") from None
    return target


def _function(spec: str) -> Callable[..., Any]:
    fn = _resolve(spec)
    if not callable(fn):
        raise argparse.ArgumentTypeError(f"{spec} is not callable (a {type(fn).__name__})")
    return fn  # type: ignore[no-any-return]


def _inputs(spec: str) -> list[Any]:
    """An iterable, or a zero-argument callable returning one, as a list."""
    value = _resolve(spec)
    if callable(value) and not isinstance(value, Iterable):
        try:
            value = value()
        except TypeError as exc:
            raise argparse.ArgumentTypeError(f"{spec} must take no arguments to give inputs: {exc}") from None
    if not isinstance(value, Iterable) or isinstance(value, (str, bytes)):
        raise argparse.ArgumentTypeError(
            f"{spec} must be an iterable or a zero-argument callable returning one, got {type(value).__name__}"
        )
    return list(value)


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


# -- commands ---------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=FILE_WIDTH)


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


def demo(seconds: float, workers: int, dashboard: bool = True) -> int:
    """Run the demo workload (with the dashboard), then print a summary."""
    from .bench.demo import run
    from .dashboard import duration

    stats = run(seconds, workers, dashboard=dashboard)
    # Two lines of under 80 columns: the summary stays readable in any terminal.
    print(
        f"\n{seconds:g} s: {stats['completed']:,} jobs done, {stats['failed']:,} failed, "
        f"{stats['retried']:,} retries, {stats['worker_restarts']} workers replaced"
    )
    print(f"{stats['throughput_total']:,.0f} jobs/s on average, p99 end to end {duration(stats['end_to_end']['p99'])}")
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print (and optionally save) the tables and what to choose."""
    from rich.table import Table
    from rich.text import Text

    from .bench.report import choose, left_out, quick_note, tables
    from .bench.runner import EXECUTORS, WORKLOADS, run, system_info

    console = _console()
    workloads = args.workload or list(WORKLOADS)
    executors = args.executor or list(EXECUTORS)
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
    sizes = "quick" if args.quick else "full sizes"
    console.print(
        f"[bold]batchpool bench[/] {info['batchpool']}: {args.workers} workers, {sizes}, median of {repeat} "
        f"(Python {info['python']}, {info['cpus']} CPUs)"
    )
    console.print("vs TPE, vs PPE, vs Pool: this row against ThreadPoolExecutor,", style="dim")
    console.print("ProcessPoolExecutor, multiprocessing.Pool (above 1x: this row is better).", style="dim")
    for table in tables(results, console.width):
        console.print()
        console.print(table)
    missing = left_out(results)
    if missing:
        console.print()
    for line in missing:
        console.print(line, style="dim", markup=False)
    summary = choose(results)
    if summary:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for kind, advice in summary:
            grid.add_row(f"{kind}:", Text(advice))
        console.print("\n[bold]What to choose[/]")
        console.print(grid)
    note = quick_note(args.quick, repeat)
    if note:
        console.print(Text(f"\n{note}", style="yellow"))
    if args.json:
        data = {
            "system": info,
            "quick": args.quick,
            "repeat": repeat,
            "results": [r.to_dict() for r in results],
            "left_out": left_out(results),
            "what_to_choose": dict(summary),
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
        console.print(f"wrote {args.json}")
    return 0


def bench_fn(args: argparse.Namespace) -> int:
    """Try the user's function on each pool and batch setting; print the best."""
    from rich.table import Table

    fn = args.fn
    items = args.inputs if args.inputs is not None else list(range(10_000))
    console = _console()
    configs: list[tuple[str, Callable[[], Any]]] = [
        ("ThreadPoolExecutor", lambda: ThreadPoolExecutor(args.workers)),
        ("ProcessPoolExecutor", lambda: ProcessPoolExecutor(args.workers)),
    ]
    for backend in ("thread", "process"):
        for size in (64, 512, "auto"):
            configs.append((f"batchpool {backend} max_batch_size={size}", _maker(args.workers, backend, size)))
    name = getattr(fn, "__qualname__", repr(fn))
    table = Table(title=f"{name} over {len(items):,} inputs, {args.workers} workers", title_justify="left")
    table.add_column("configuration")
    table.add_column("items/s", justify="right")
    best: tuple[float, str] = (0.0, "")
    for config, make in configs:
        with make() as ex:
            start = time.perf_counter()
            futures = [ex.submit(fn, item) for item in items]
            for f in futures:
                f.result()
            rate = len(items) / (time.perf_counter() - start)
        table.add_row(config, f"{rate:,.0f}")
        best = max(best, (rate, config))
    console.print(table)
    console.print(f"best: {best[1]} ({best[0]:,.0f} items/s)")
    return 0


def _maker(workers: int, backend: str, size: int | str) -> Callable[[], Any]:
    return lambda: BatchPoolExecutor(workers, backend=backend, max_batch_size=size)


def journal(args: argparse.Namespace) -> int:
    """Print a journal's report (``batchpool.journal_report.report_text``)."""
    from .journal_report import report_text

    width = max(40, shutil.get_terminal_size((FILE_WIDTH, 24)).columns)
    try:
        text = str(report_text(args.path, failed=args.failed, as_json=args.json, width=width))
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback: the file is the user's
        print(f"batchpool journal: error: {args.path}: {exc}", file=sys.stderr)
        return 1
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


class _Defaults(argparse.HelpFormatter):
    """Shows an argument's default when it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, True, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    from .bench.runner import EXECUTORS, WORKLOADS

    formatter = _Defaults
    parser = argparse.ArgumentParser(prog="batchpool", description="batchpool: a micro-batching executor")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    workers = {"type": _at_least(1), "default": 2, "metavar": "N", "help": "worker processes or threads (>= 1)"}

    demo_parser = commands.add_parser(
        "demo", help="a mixed workload under the live dashboard", formatter_class=formatter
    )
    demo_parser.add_argument("--seconds", type=_positive_float, default=15.0, help="how long it runs (> 0)")
    demo_parser.add_argument("--workers", **workers)  # type: ignore[arg-type]
    demo_parser.add_argument(
        "--no-dashboard", dest="dashboard", action="store_false", help="no live view: only the summary at the end"
    )

    compare_parser = commands.add_parser(
        "compare", help="tiny jobs, one submit each, against the stdlib pools", formatter_class=formatter
    )
    compare_parser.add_argument("--jobs", type=_at_least(1), default=200_000, metavar="N", help="jobs per pool")
    compare_parser.add_argument("--workers", **workers)  # type: ignore[arg-type]
    compare_parser.add_argument(
        "--baseline-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="share of the jobs given to ProcessPoolExecutor (1.0: all of them)",
    )

    bench_parser = commands.add_parser(
        "bench",
        help="measure batchpool against the pools you use",
        formatter_class=formatter,
        description="Every workload on every pool it applies to, interleaved; tables, then what to choose.",
    )
    bench_parser.add_argument(
        "--workload",
        action="append",
        choices=list(WORKLOADS),
        metavar="NAME",
        help=f"repeatable; default: all. Choices: {', '.join(WORKLOADS)}",
    )
    bench_parser.add_argument(
        "--executor",
        action="append",
        choices=list(EXECUTORS),
        metavar="NAME",
        help=f"repeatable; default: all. Choices: {', '.join(EXECUTORS)}",
    )
    bench_parser.add_argument("--workers", **workers)  # type: ignore[arg-type]
    bench_parser.add_argument(
        "--repeat", type=_at_least(0), default=0, metavar="N", help="repetitions (default: 3, or 1 with --quick)"
    )
    bench_parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (about 40 s)")
    bench_parser.add_argument("--json", metavar="FILE", help="also write every figure, machine-readable")
    bench_parser.add_argument(
        "--fn", metavar="MODULE:FUNCTION", type=_function, help="benchmark your own function instead"
    )
    bench_parser.add_argument(
        "--inputs",
        metavar="MODULE:NAME",
        type=_inputs,
        help="inputs for --fn: an iterable, or a zero-argument callable returning one (default: range(10000))",
    )

    bench_parser.set_defaults(subparser=bench_parser)

    journal_parser = commands.add_parser(
        "journal", help="what a journal holds: jobs by state, failures", formatter_class=formatter
    )
    journal_parser.add_argument("path", metavar="PATH", type=_existing_file, help="the journal's file")
    journal_parser.add_argument("--failed", action="store_true", help="list the failed jobs")
    journal_parser.add_argument("--json", action="store_true", help="machine-readable")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchpool`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seconds, args.workers, dashboard=args.dashboard)
    if args.command == "compare":
        compare(args.jobs, args.workers, args.baseline_fraction)
        return 0
    if args.command == "journal":
        return journal(args)
    if args.inputs is not None and args.fn is None:
        args.subparser.error("argument --inputs: only with --fn")
    if args.fn is not None:
        return bench_fn(args)
    return bench(args)
