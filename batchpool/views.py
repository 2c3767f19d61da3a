"""ExecutorView: a pool seen through fixed job options (``BatchPoolExecutor.options``).

Imports ``options``, ``retry`` and ``jobs``; the executor is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from typing_extensions import ParamSpec

from .durable import check_job_id
from .jobs import CALLS
from .options import JobOptions, Priority, check_timeout
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .executor import BatchPoolExecutor
    from .runs import Run

__all__ = ["ExecutorView", "view_options"]

P = ParamSpec("P")
R = TypeVar("R")


def view_options(
    base: JobOptions,
    priority: Priority | int | None,
    key: Hashable | None,
    timeout: float | None,
    retry: RetryPolicy | Literal[False] | None,
) -> JobOptions:
    """Validate a view's options; the ones not given keep ``base``'s.

    Example:
        >>> view_options(JobOptions(), 0, None, 5, None).priority.name
        'REALTIME'
    """
    if priority is not None and not isinstance(priority, Priority):
        try:
            priority = Priority(priority)
        except ValueError:
            raise ValueError(f"priority must be a batchpool.Priority, got {priority!r}") from None
    if retry is not None and retry is not False and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a batchpool.RetryPolicy, False or None, got {type(retry).__name__}")
    if key is not None:
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
    return JobOptions(
        priority=base.priority if priority is None else Priority(priority),
        key=base.key if key is None else key,
        timeout=base.timeout if timeout is None else check_timeout("timeout", timeout),
        retry=base.retry if retry is None else (retry or None),
    )


class ExecutorView:
    """A pool seen through fixed job options (made by ``BatchPoolExecutor.options``)."""

    def __init__(self, executor: BatchPoolExecutor, opts: JobOptions, job_id: str | None = None) -> None:
        self._executor = executor
        self.opts = opts
        self.job_id = job_id  # every submit through this view is the one job with this id

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """``BatchPoolExecutor.submit`` with this view's options (and job id: the same job each time)."""
        return self._executor._submit(fn, args, kwargs, CALLS, self.opts, self.job_id)

    def _one_job(self, what: str) -> None:
        if self.job_id is not None:
            raise ValueError(f"{what} makes many jobs; a view with job_id={self.job_id!r} submits one: use submit")

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """``BatchPoolExecutor.map`` with this view's options (not on a view with a ``job_id``)."""
        self._one_job("map")
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, progress, self.opts)

    def map_pages(
        self,
        fetch_page: Callable[[Any], Any],
        process_item: Callable[[Any], Any],
        first_cursor: Any = None,
        **options: Any,
    ) -> Run:
        """``BatchPoolExecutor.map_pages`` with this view's options on the items (not with a ``job_id``)."""
        self._one_job("map_pages")
        from .runs import map_pages

        return map_pages(self, fetch_page, process_item, first_cursor, **options)


class OptionsMixin:
    """``options`` of the executor (mixed into ``BatchPoolExecutor``)."""

    if TYPE_CHECKING:
        _default_opts: JobOptions

    def options(
        self,
        *,
        priority: Priority | int | None = None,
        key: Hashable | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | Literal[False] | None = None,
        job_id: str | None = None,
    ) -> ExecutorView:
        """A light view of this pool whose ``submit``/``map`` apply these options.

        It shares the pool (it is not a new one); options not given keep the
        pool's defaults.

        Args:
            priority: ``Priority.REALTIME`` jobs never linger and go before any
                queued NORMAL or BULK work; BULK goes last (but never starves).
            key: the lane the jobs share (default: their callable); a key can
                have its own batching policy (``set_policy``).
            timeout: seconds each job may run; past that its Future fails with
                ``TimeoutError`` and its worker process is replaced (the thread
                backend abandons the thread and starts another).
            retry: a ``RetryPolicy`` for these jobs, or False for none (None
                keeps the pool's default).
            job_id: the view submits one job with this id, idempotently: the
                same id again returns that job's Future while it is queued or
                running, and (with a journal) its stored outcome once it is
                done or failed, without running it again. The same id with
                another callable or arguments raises ``DuplicateJobError``.
                Without a journal, ids are remembered for the pool's lifetime.

        Example:
            >>> from batchpool import BatchPoolExecutor, Priority
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     urgent = ex.options(priority=Priority.REALTIME, timeout=5)
            ...     urgent.submit(abs, -2).result(timeout=10)
            2
        """
        opts = view_options(self._default_opts, priority, key, timeout, retry)
        return ExecutorView(self, opts, check_job_id(job_id))  # type: ignore[arg-type]  # mixed into the executor
