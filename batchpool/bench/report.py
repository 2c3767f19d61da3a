"""The bench results for people: tables that fit the terminal, and what to choose.

Reads ``Result`` lists (``bench.runner``) and returns rich renderables and
lines; the CLI prints them. One table per workload, one row per pool, the
columns that fit the width (ratios to ThreadPoolExecutor and
ProcessPoolExecutor, to multiprocessing.Pool from 100 columns, the spread
only when there are repetitions); pools that could not run are one line each
for "not installed" and "not in this build"; a closing summary says which
pool to choose for which work, from the numbers measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .executors import PEERS
from .runner import VARIANTS, WORKLOADS, Result

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["choose", "left_out", "pct", "quick_note", "sig2", "tables"]

_BASE_COLUMNS = (
    ("vs TPE", "ThreadPoolExecutor"),
    ("vs PPE", "ProcessPoolExecutor"),
    ("vs Pool", "multiprocessing.Pool"),
)


def sig2(value: float) -> str:
    """A number with two significant figures (no exponent).

    Example:
        >>> sig2(334.26), sig2(4.37), sig2(0.961)
        ('330', '4.4', '0.96')
    """
    if not math.isfinite(value):
        return "-"
    return f"{float(f'{value:.2g}'):g}"


def pct(share: float) -> str:
    """A share as a percentage, two significant figures below 100%.

    Example:
        >>> pct(0.0018), pct(0.62), pct(1.534)
        ('0.18%', '62%', '153%')
    """
    return f"{share:.0%}" if share >= 0.995 else f"{sig2(share * 100)}%"


def _value(r: Result) -> str:
    v = r.median
    if not math.isfinite(v):
        return "-"
    if r.unit == "GB/s":
        return f"{v:.2f}"
    if r.unit.startswith("ms"):
        return sig2(v)
    if r.unit == "objects":
        return f"{v:.1f}"
    return f"{v:,.0f}"


def _ratio(x: float) -> str:
    if not math.isfinite(x) or x <= 0:
        return ""
    return f"{x:.0f}x" if x >= 9.95 else f"{x:.1f}x" if x >= 0.995 else f"{x:.2f}x"


def _notes(r: Result, rows: dict[str, Result]) -> str:
    e = r.extra
    if "share_of_plain" in e:
        return f"{pct(e['share_of_plain'])} of plain"
    if r.workload == "cpu" and "speedup_vs_serial" in e:
        return f"{e['speedup_vs_serial']:.1f}x serial"
    if r.workload == "numpy" and "share_of_memcpy" in e:
        return f"{e['share_of_memcpy']:.0%} of memcpy"
    if r.workload == "latency" and "idle_p50_ms" in e:
        return f"idle {sig2(e['idle_p50_ms'])} / {sig2(e['idle_p99_ms'])}"
    if r.workload == "gc" and e.get("garbage_per_job", 0) >= 0.05:
        return f"{e['garbage_per_job']:.1f} cyclic garbage"
    if r.workload == "pages" and r.executor == "map_pages":
        serial = rows.get("serial loop")
        if serial is not None and serial.samples:
            return f"{r.median / serial.median:.1f}x serial"
    if r.workload == "dask" and r.executor == "batchpool-dask":
        other = rows.get("get_executor")
        if other is not None and other.samples:
            return f"{_ratio(r.median / other.median)} get_executor"
    return ""


def _spread(r: Result) -> str:
    if len(r.samples) < 2 or not r.median:
        return ""
    return f"±{(max(r.samples) - min(r.samples)) / 2 / r.median:.0%}"


def tables(results: list[Result], width: int) -> list[RenderableType]:
    """One table per workload, fitting ``width`` columns (80 at least)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    by_workload: dict[str, list[Result]] = {}
    for r in results:
        if not r.skipped:
            by_workload.setdefault(r.workload, []).append(r)
    out: list[RenderableType] = []
    for name, rows in by_workload.items():
        workload = WORKLOADS[name]
        named = {r.executor: r for r in rows}
        lower = workload.lower_is_better
        bases = [(h, b) for h, b in _BASE_COLUMNS[: 3 if width >= 100 else 2] if b in named and named[b].samples]
        if workload.standalone is not None:
            bases = []
        spreads = any(len(r.samples) > 1 for r in rows)
        better = "lower" if lower else "higher"
        # The title is a line of its own above the table: as a table's title it
        # would wrap to the table's width, and an expanded table pads every row.
        title = Text.from_markup(f"[bold]{name}[/]: {workload.title} ({better} is better)")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("pool", no_wrap=True)
        table.add_column(workload.unit, justify="right", no_wrap=True)
        if spreads:
            table.add_column("spread", justify="right", no_wrap=True)
        for header, _ in bases:
            table.add_column(header, justify="right", no_wrap=True)
        notes = {r.executor: _notes(r, named) for r in rows}
        if any(notes.values()):
            table.add_column("notes", overflow="fold")
        for r in rows:
            cells = [r.executor, _value(r)]
            if spreads:
                cells.append(_spread(r))
            for _, base in bases:
                other = named[base].median
                ratio = (other / r.median if lower else r.median / other) if base != r.executor else math.nan
                cells.append(_ratio(ratio))
            if any(notes.values()):
                cells.append(notes[r.executor])
            table.add_row(*cells, style="bold" if r.executor.startswith("batchpool-process") else "")
        out.append(Group(title, table))
    return out


def left_out(results: list[Result]) -> list[str]:
    """One line for the pools not installed, one per reason for what this build lacks."""
    missing = sorted({r.executor for r in results if r.skipped == "not installed" and r.executor in PEERS})
    lines = []
    if missing:
        lines.append(f"not installed: {', '.join(missing)} — pip install batchpool[peers]")
    if any(r.skipped == "not installed" and r.workload == "dask" for r in results):
        lines.append("not installed: distributed — pip install batchpool[dask]")
    reasons: dict[str, list[str]] = {}
    for r in results:
        if r.skipped and r.skipped != "not installed":
            label = r.workload if WORKLOADS[r.workload].standalone else r.executor
            if label not in reasons.setdefault(r.skipped, []):
                reasons[r.skipped].append(label)
    for reason, names in reasons.items():
        lines.append(f"left out: {', '.join(names)}: {reason}")
    return lines


def quick_note(quick: bool, repeat: int) -> str:
    """A warning when the run is too short to trust ('' otherwise)."""
    if repeat > 1 and not quick:
        return ""
    what = "A quick run (small sizes, one repetition)" if quick else "One repetition"
    return (
        f"{what} is too short to trust: figures move by up to 2x between runs, so read only large "
        "ratios. Run `batchpool bench` (full sizes, 3 repetitions) before you decide."
    )


def _best(
    results: Iterable[Result], workload: str, lower: bool = False, among: Iterable[str] | None = None
) -> Result | None:
    pool = set(among) if among is not None else None
    rows = [
        r
        for r in results
        if r.workload == workload
        and r.samples
        and math.isfinite(r.median)
        and r.executor not in VARIANTS
        and (pool is None or r.executor in pool)
    ]
    if not rows:
        return None
    return min(rows, key=lambda r: r.median) if lower else max(rows, key=lambda r: r.median)


def _get(results: list[Result], workload: str, executor: str) -> Result | None:
    return next((r for r in results if r.workload == workload and r.executor == executor and r.samples), None)


def choose(results: list[Result]) -> list[tuple[str, str]]:
    """What to choose: (kind of work, advice) pairs drawn from the measured numbers."""
    lines: list[tuple[str, str]] = []
    tpe = {wl: _get(results, wl, "ThreadPoolExecutor") for wl in WORKLOADS}
    ppe = {wl: _get(results, wl, "ProcessPoolExecutor") for wl in WORKLOADS}

    def times(r: Result, other: Result | None, label: str) -> str:
        return f", {_ratio(r.median / other.median)} {label}" if other is not None and other is not r else ""

    sub, mapped = _best(results, "submit"), _best(results, "map")
    if sub is not None:
        line = f"{sub.executor} ({sub.median:,.0f} jobs/s one submit() each"
        line += times(sub, ppe["submit"], "ProcessPoolExecutor") + times(sub, tpe["submit"], "ThreadPoolExecutor") + ")"
        if mapped is not None:
            line += f"; through map(): {mapped.executor} ({mapped.median:,.0f} items/s)"
        lines.append(("tiny jobs", line + "."))
    cpu = _best(results, "cpu")
    if cpu is not None:
        speed = cpu.extra.get("speedup_vs_serial", math.nan)
        line = f"{cpu.executor} ({speed:.1f}x a serial loop)"
        ours = _get(results, "cpu", "batchpool-process")
        if ours is not None and ours is not cpu:
            line += f"; batchpool-process {ours.extra.get('speedup_vs_serial', math.nan):.1f}x"
        threads = tpe["cpu"]
        if threads is not None and "thread" not in cpu.executor.lower():
            line += f"; threads {threads.extra.get('speedup_vs_serial', math.nan):.1f}x (the GIL)"
        lines.append(("CPU-bound jobs", line + "."))
    arrays = _best(results, "numpy")
    if arrays is not None:
        procs = _best(results, "numpy", among=("batchpool-process", "ProcessPoolExecutor", "loky", "batchpool-pipe"))
        line = f"{arrays.executor} ({arrays.median:.1f} GB/s)"
        if "thread" in arrays.executor.lower():
            line += " when the work releases the GIL (numpy does)"
        if procs is not None and procs is not arrays:
            vs = times(procs, ppe["numpy"], "ProcessPoolExecutor")
            line += f"; in processes {procs.executor} ({procs.median:.1f} GB/s{vs})"
        lines.append(("large arrays", line + "."))
    io_bound, urgent = _best(results, "batched"), _best(results, "latency", lower=True)
    if io_bound is not None or urgent is not None:
        parts = []
        if io_bound is not None:
            parts.append(
                f"a call with a fixed cost (a round trip): {io_bound.executor} with @batched "
                f"({io_bound.median:,.0f} items/s{times(io_bound, tpe['batched'], 'ThreadPoolExecutor')})"
            )
        if urgent is not None:
            worst = [r for r in (tpe["latency"], ppe["latency"]) if r is not None and r is not urgent]
            slow = "".join(f", {r.executor} {sig2(r.median)} ms" for r in worst)
            parts.append(f"urgent jobs under load: {urgent.executor} (p99 {sig2(urgent.median)} ms{slow})")
        lines.append(("I/O", "; ".join(parts) + "."))
    costs = []
    for workload, executor, label in (
        ("map", "batchpool+retry", "timeout + retry keeps"),
        ("submit", "batchpool+journal", "a journal keeps"),
        ("submit", "batchpool+journal-full", "with journal_sync='full'"),
        ("submit", "batchpool+dashboard", "the dashboard keeps"),
    ):
        r = _get(results, workload, executor)
        if r is not None and "share_of_plain" in r.extra:
            costs.append(f"{label} {pct(r.extra['share_of_plain'])}")
    if costs:
        lines.append(("features", ", ".join(costs) + " of the plain process pool's rate."))
    return lines
