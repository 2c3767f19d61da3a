"""``map``: items cut into chunks (invisible to the caller), submitted lazily when bounded, results in order.

Imports ``jobs`` and ``options``; the executor passes itself in as a
``Submitter``. Lifetime: the result iterator holds the pool only weakly, so a
pending iterator never keeps a pool alive; and no local variable holds a
yielded result while the generator is suspended, so the caller can free each.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol

from .jobs import CALLS, CHUNKS, CHUNKS1, ChunkResult
from .options import JobOptions

__all__ = ["map_jobs"]

#: Chunks ``map`` cuts a long input into, per worker, when no chunksize is given.
_MAP_CHUNKS_PER_WORKER = 16
_MAP_MAX_CHUNK = 1024


class Submitter(Protocol):
    """What ``map`` needs of the pool."""

    def _submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, kind: int, opts: JobOptions | None = None
    ) -> Future[Any]: ...


def map_jobs(
    pool: Submitter,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    workers: int,
    max_pending: int | None,
    opts: JobOptions | None,
    per_item: bool = False,
) -> Iterator[Any]:
    """Submit the calls of ``map(fn, *iterables)`` and return the ordered result iterator."""
    end_time = None if timeout is None else timeout + time.monotonic()
    zipped = zip(*iterables)  # noqa: B905 - map() stops at the shortest, as builtins.map
    if buffersize is None and max_pending is not None:
        # A bounded pool reads its input only as fast as it can hold it.
        buffersize = max(1, max_pending // max(1, chunksize) // 2)
    if buffersize is None:
        # One iterable: chunks carry the bare items (no 1-tuple per item).
        single = len(iterables) == 1
        items = list(iterables[0]) if single else list(zipped)
        # Timeouts and retries are per job: items that need them travel one per job.
        size = chunksize if chunksize > 1 or per_item else _auto_chunksize(len(items), workers)
        if size > 1:
            kind = CHUNKS1 if single else CHUNKS
            fs = deque(pool._submit(fn, (group,), None, kind, opts) for group in _chunked(items, size))
            return _map_results(fs, end_time, True, None)
        calls = ((item,) for item in items) if single else iter(items)
        fs = deque(pool._submit(fn, args, None, CALLS, opts) for args in calls)
        return _map_results(fs, end_time, False, None)
    groups = _chunked(zipped, chunksize) if chunksize > 1 else zipped
    first = itertools.islice(groups, buffersize)
    fs = deque(_submit_group(pool, fn, group, chunksize > 1, opts) for group in first)
    refill = _Refill(weakref.ref(pool), fn, groups, chunksize > 1, opts)
    return _map_results(fs, end_time, chunksize > 1, refill)


def _submit_group(
    pool: Submitter, fn: Callable[..., Any], group: Any, chunked: bool, opts: JobOptions | None
) -> Future[Any]:
    if chunked:
        return pool._submit(fn, (group,), None, CHUNKS, opts)
    return pool._submit(fn, group, None, CALLS, opts)


def _auto_chunksize(n: int, workers: int) -> int:
    per_chunk = n // (_MAP_CHUNKS_PER_WORKER * workers)
    return max(1, min(_MAP_MAX_CHUNK, per_chunk))


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _Refill:
    """Submits the next group of a buffered ``map`` (holds the pool weakly)."""

    def __init__(
        self,
        pool: weakref.ref[Any],
        fn: Callable[..., Any],
        groups: Iterator[Any],
        chunked: bool,
        opts: JobOptions | None,
    ) -> None:
        self.pool = pool
        self.fn = fn
        self.groups = groups
        self.chunked = chunked
        self.opts = opts

    def __call__(self, fs: deque[Future[Any]]) -> None:
        pool = self.pool()
        if pool is None:
            return
        group = next(self.groups, None)
        if group is not None:
            fs.append(_submit_group(pool, self.fn, group, self.chunked, self.opts))


def _result_or_cancel(future: Future[Any], timeout: float | None) -> Any:
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # no-op unless we gave up waiting for it


def _map_results(
    fs: deque[Future[Any]], end_time: float | None, chunked: bool, refill: _Refill | None
) -> Iterator[Any]:
    try:
        while fs:
            if refill is not None:
                refill(fs)
            remaining = None if end_time is None else end_time - time.monotonic()
            if not chunked:
                yield _result_or_cancel(fs.popleft(), remaining)
                continue
            chunk: ChunkResult = _result_or_cancel(fs.popleft(), remaining)
            values, errors = chunk
            del chunk
            values.reverse()
            if not errors:  # the common case, without a lookup per item
                while values:
                    yield values.pop()
                continue
            for i in range(len(values)):
                if i in errors:
                    raise errors[i]
                yield values.pop()
    finally:
        for future in fs:
            future.cancel()
