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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .jobs import CALLS, CHUNKS, CHUNKS1, ChunkResult
from .options import JobOptions

if TYPE_CHECKING:
    from .options import PoolConfig
    from .runs import Run
    from .state import PoolState

R = TypeVar("R")

__all__ = ["MapMixin", "map_jobs"]

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


class MapMixin:
    """``map`` and ``map_pages`` of the executor (mixed into ``BatchPoolExecutor``)."""

    if TYPE_CHECKING:
        _default_opts: JobOptions
        _state: PoolState
        _max_pending: int | None
        _config: PoolConfig

        def _submit(
            self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, kind: int, opts: JobOptions | None = None
        ) -> Future[Any]: ...

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Like ``map(fn, *iterables)``, run in the pool; results in order.

        Without ``buffersize`` every item is submitted before this returns, as
        with the standard pools. With it, at most ``buffersize`` submitted jobs
        (items, or chunks of ``chunksize`` items) wait to be consumed, so an
        endless iterable works in constant memory. When ``chunksize`` is left
        at 1 and the input is long, items travel in chunks anyway (results and
        exceptions are still per item): chunks are invisible but much cheaper.
        With ``progress``, a rich progress bar advances as results are consumed
        (with a total when the input has a length).

        Raises:
            TimeoutError: from the iterator, when the results are not all in
                ``timeout`` seconds after the call.
            Exception: from the iterator, what ``fn`` raised for an item.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, progress, None)

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        progress: bool,
        opts: JobOptions | None,
    ) -> Iterator[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, got {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError(f"buffersize must be an int or None, got {type(buffersize).__name__}")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if progress:
            from .dashboard import track

            lengths = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
            total = min(lengths) if len(lengths) == len(iterables) and lengths else None
            inner = self._map(fn, iterables, timeout, chunksize, buffersize, False, opts)
            return track(inner, total, getattr(fn, "__name__", "jobs"))
        effective = self._default_opts if opts is None else opts
        return map_jobs(
            self,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            workers=self._state.target_workers,
            max_pending=self._max_pending,
            opts=opts,
            # Retries work item by item inside chunks, and worker processes stop
            # an item past its time limit themselves; a thread (or a Dask task)
            # cannot be stopped, so there an item with a time limit travels alone.
            per_item=effective.timeout is not None and self._config.backend != "process",
        )

    def map_pages(
        self,
        fetch_page: Callable[[Any], Any],
        process_item: Callable[[Any], Any],
        first_cursor: Any = None,
        **options: Any,
    ) -> Run:
        """Pipelined pagination through this pool: see ``batchpool.runs.map_pages`` for ``options``.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     sorted(ex.map_pages(lambda c: ([c, c + 1], c + 2 if c < 2 else None), abs, 0))
            [0, 1, 2, 3]
        """
        from .runs import map_pages

        return map_pages(self, fetch_page, process_item, first_cursor, **options)

    # -- durable jobs (batchpool.durable) --------------------------------------------
