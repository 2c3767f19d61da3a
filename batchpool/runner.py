"""Run jobs here: a call, a ``map`` chunk, a ``@batched`` call; one outcome per job.

Imports ``batchpool.jobs`` and ``batchpool.errors`` only. The same code runs a
job in a worker process (``worker``), on a thread of the thread backend, in
the caller's thread (``on_full="caller_runs"``), and on a Dask worker, so a
job means the same thing wherever it runs. What differs between those places
(how outcomes travel, how a time limit is enforced) is the caller's business;
``wrap`` says how an exception is kept (as itself in this process, with its
traceback text for the trip to another one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import BatchResultError
from .jobs import BATCHED_BISECT, BATCHED_KINDS, CALLS, CHUNKS, ChunkResult

__all__ = ["Wrap", "identity", "run_batch", "run_batched", "run_chunk", "run_one"]

Wrap = Callable[[BaseException], Any]
Outcome = tuple[bool, Any]


def identity(exc: BaseException) -> BaseException:
    """The ``wrap`` for jobs that run in this process: an exception stays itself."""
    return exc


def run_one(fn: Callable[..., Any], kind: int, args: tuple[Any, ...], kwargs: Any, wrap: Wrap) -> Outcome:
    """Run one job that is a call or a ``map`` chunk; ``(True, value)`` or ``(False, wrapped)``.

    Example:
        >>> run_one(divmod, CALLS, (7, 2), None, identity)
        (True, (3, 1))
        >>> ok, exc = run_one(divmod, CALLS, (1, 0), None, identity); ok, type(exc).__name__
        (False, 'ZeroDivisionError')
    """
    try:
        if kind == CALLS:
            return True, (fn(*args, **kwargs) if kwargs else fn(*args))
        return True, run_chunk(fn, args[0], wrap, kind == CHUNKS)
    except BaseException as exc:  # noqa: BLE001 - SystemExit included, as in the stdlib pools
        return False, wrap(exc)


def run_batch(
    fn: Callable[..., Any], kind: int, calls: Sequence[tuple[tuple[Any, ...], Any]], wrap: Wrap
) -> list[Outcome]:
    """Run a whole batch of ``(args, kwargs)`` calls; one outcome per call, in order.

    Example:
        >>> run_batch(abs, CALLS, [((-1,), None), ((2,), None)], identity)
        [(True, 1), (True, 2)]
    """
    if kind in BATCHED_KINDS:
        out = run_batched(fn, [args[0] for args, _ in calls], wrap, kind == BATCHED_BISECT)
        return [(False, out.errors[i]) if i in out.errors else (True, v) for i, v in enumerate(out.values)]
    return [run_one(fn, kind, args, kwargs, wrap) for args, kwargs in calls]


def run_chunk(fn: Callable[..., Any], items: list[Any], wrap: Wrap, star: bool = True) -> ChunkResult:
    """Run ``fn(*item)`` (or ``fn(item)`` without ``star``) for each item of a ``map`` chunk.

    Each item runs exactly once; one that raises fails alone.

    Example:
        >>> run_chunk(pow, [(2, 3), (2, 4)], identity)
        ChunkResult(values=[8, 16], errors={})
    """
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for i, item in enumerate(items):
        try:
            values.append(fn(*item) if star else fn(item))
        except BaseException as exc:  # noqa: BLE001 - reported on that item
            values.append(None)
            errors[i] = wrap(exc)
    return ChunkResult(values, errors)


def run_batched(fn: Callable[..., Any], items: list[Any], wrap: Wrap, bisect: bool) -> ChunkResult:
    """Call a ``@batched`` function once for ``items``; one outcome per item.

    With ``bisect``, a call that raises is repeated on each half of the items,
    down to single items, so that only the item(s) that make it fail fail
    (O(log n) extra calls per bad item).

    Example:
        >>> def halve(xs):
        ...     if 0 in xs:
        ...         raise ZeroDivisionError("0 in the batch")
        ...     return [1 / x for x in xs]
        >>> out = run_batched(halve, [1, 0, 2], identity, bisect=True)
        >>> out.values, sorted(out.errors)
        ([1.0, None, 0.5], [1])
    """
    try:
        out = fn(items)
    except BaseException as exc:  # noqa: BLE001 - reported on the items
        if bisect and len(items) > 1:
            mid = len(items) // 2
            left = run_batched(fn, items[:mid], wrap, bisect)
            right = run_batched(fn, items[mid:], wrap, bisect)
            merged = dict(left.errors)
            merged.update((mid + i, e) for i, e in right.errors.items())
            return ChunkResult(left.values + right.values, merged)
        error = wrap(exc)
        return ChunkResult([None] * len(items), dict.fromkeys(range(len(items)), error))
    if not isinstance(out, list) or len(out) != len(items):
        got = f"list of {len(out)}" if isinstance(out, list) else type(out).__name__
        name = getattr(fn, "__qualname__", repr(fn))
        error = wrap(BatchResultError(name, len(items), got))
        return ChunkResult([None] * len(items), dict.fromkeys(range(len(items)), error))
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for i, value in enumerate(out):
        if isinstance(value, BaseException):
            errors[i] = wrap(value)
            values.append(None)
        else:
            values.append(value)
    return ChunkResult(values, errors)
