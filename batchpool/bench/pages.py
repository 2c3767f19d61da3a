"""Benchmark workload: pipelined pagination (``map_pages``) against serial pagination.

A synthetic source answers each page after a fixed latency (50 ms, as a remote
API would) with 20 items of 5 ms of work each. Serial pagination fetches a page,
processes its items with ``ex.map`` and only then fetches the next; ``map_pages``
fetches the next page while the pool works on the last. Both run on the same
pool, in the same process run, so the ratio is what counts. Imports the
executor (for the pool) and nothing that prints; the CLI renders the numbers.
"""

from __future__ import annotations

import time
from typing import Any

from ..executor import BatchPoolExecutor

__all__ = ["ITEMS_PER_PAGE", "ITEM_TIME", "PAGE_LATENCY", "SyntheticSource", "measure", "process_item"]

PAGE_LATENCY = 0.05
ITEMS_PER_PAGE = 20
ITEM_TIME = 0.005


class SyntheticSource:
    """``fetch_page`` of a paginated source: cursors 0, 1, ... ``pages - 1``.

    Example:
        >>> fetch = SyntheticSource(pages=2, latency=0.0, size=3)
        >>> fetch(0), fetch(1)
        (([0, 1, 2], 1), ([3, 4, 5], None))
    """

    def __init__(self, pages: int, latency: float = PAGE_LATENCY, size: int = ITEMS_PER_PAGE) -> None:
        self.pages = pages
        self.latency = latency
        self.size = size

    def __call__(self, cursor: int) -> tuple[list[int], int | None]:
        time.sleep(self.latency)  # the source's round trip
        items = list(range(cursor * self.size, (cursor + 1) * self.size))
        return items, (cursor + 1 if cursor + 1 < self.pages else None)


def process_item(item: int) -> int:
    """One item's work: ``ITEM_TIME`` seconds (I/O-like: it sleeps).

    Example:
        >>> process_item(4)
        4
    """
    time.sleep(ITEM_TIME)
    return item


def _serial(ex: BatchPoolExecutor, fetch: SyntheticSource) -> int:
    done = 0
    cursor: int | None = 0
    while cursor is not None:
        items, cursor = fetch(cursor)
        done += sum(1 for _ in ex.map(process_item, items))
    return done


def _pipelined(ex: BatchPoolExecutor, fetch: SyntheticSource, prefetch: int) -> int:
    with ex.map_pages(fetch, process_item, 0, prefetch=prefetch) as run:
        return sum(1 for _ in run)


def measure(workers: int = 2, quick: bool = False, *, backend: str = "process", prefetch: int = 2) -> dict[str, Any]:
    """Items per second of serial pagination and of ``map_pages`` on one pool.

    Args:
        workers: the pool's workers.
        quick: 8 pages instead of 40 (about 2 s instead of 7).
        backend: the pool's backend.
        prefetch: ``map_pages``'s prefetch.

    Returns:
        ``pages``, ``items``, ``serial_items_per_s``, ``pipelined_items_per_s``
        and ``ratio`` (pipelined / serial; the target is >= 1.5).

    Example:
        >>> sorted(measure.__annotations__)
        ['backend', 'prefetch', 'quick', 'return', 'workers']
    """
    pages = 8 if quick else 40
    fetch = SyntheticSource(pages)
    with BatchPoolExecutor(max_workers=workers, backend=backend) as ex:
        list(ex.map(process_item, range(4 * workers)))  # start every worker first
        start = time.perf_counter()
        serial_items = _serial(ex, fetch)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        pipelined_items = _pipelined(ex, fetch, prefetch)
        pipelined = time.perf_counter() - start
    assert serial_items == pipelined_items == pages * ITEMS_PER_PAGE
    return {
        "pages": pages,
        "items": serial_items,
        "serial_items_per_s": serial_items / serial,
        "pipelined_items_per_s": pipelined_items / pipelined,
        "ratio": serial / pipelined,
    }
