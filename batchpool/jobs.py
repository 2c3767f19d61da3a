"""The records that flow through the pool.

Imports only ``batchpool.errors``, ``batchpool.options`` and ``batchpool.futures``.

Three kinds of record, kept apart on purpose (as in CPython's
``concurrent.futures.process``):

* ``Job`` stays in the parent and is the user's ``Future`` (a ``LightFuture``).
* A wire batch crosses to the worker (framed by ``batchpool.worker``): a batch
  id, the callable once, and the calls' arguments. It never holds a Future.
* An outcome comes back (framed by ``batchpool.worker``): per job either a
  value or an exception, and the batch's run time, possibly in several parts
  for a long batch.
"""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple, TypeVar

from .errors import RemoteError, RemoteTraceback
from .futures import LightFuture
from .options import JobOptions

__all__ = [
    "BATCHED",
    "BATCHED_BISECT",
    "CALLS",
    "BATCHED_KINDS",
    "CHUNKS",
    "CHUNKS1",
    "CHUNK_KINDS",
    "Batch",
    "ChunkResult",
    "ExceptionWithTraceback",
    "Job",
    "JobInfo",
    "batched",
    "is_batched",
    "items_of",
    "job_info",
    "rebuild_exception",
]

#: Batch kinds. A lane, and therefore a batch, holds jobs of one kind only.
CALLS = 0  # each job is one call fn(*args, **kwargs)
CHUNKS = 1  # each job is a run of map() items: fn(*item) for each item
BATCHED = 2  # each job is one item; the batch is one call fn([items])
BATCHED_BISECT = 3  # the same, and a failing call is split to find the bad item
CHUNKS1 = 4  # map() over one iterable: bare items, fn(item) (no 1-tuples to build and pickle)
CHUNK_KINDS = (CHUNKS, CHUNKS1)
BATCHED_KINDS = (BATCHED, BATCHED_BISECT)

_job_ids = itertools.count()
DEFAULT_OPTIONS = JobOptions()
_batch_ids = itertools.count()


class Job(LightFuture[Any]):
    """One submitted call, parent side; it is also the Future the user got back.

    Being its own Future saves an object per call: the cyclic GC walks every
    tracked object a submit leaves alive, and with a separate record (plus a
    tuple on the Future saying where it went) that walk cost a third of a tiny
    job's time. Slots only, no lock of its own. ``future`` is the job itself,
    so code that reads "the job's Future" says so.

    The call (``fn``, ``args``, ``kwargs``) is dropped (``release_call``) when
    the ledger settles the job for good or drops it cancelled: a Future the
    user keeps must not keep its arguments alive, as the stdlib's does not.

    Example:
        >>> job = Job(abs, (-2,), None)
        >>> job.future is job, job.done()
        (True, False)
    """

    __slots__ = (
        "args", "attempt", "breaker", "fn", "id", "job_id", "kind", "kwargs", "opts", "record", "started", "t_submit",
    )  # fmt: skip

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        kind: int = CALLS,
        opts: JobOptions = DEFAULT_OPTIONS,
    ) -> None:
        LightFuture.__init__(self)
        self.id = next(_job_ids)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs or None
        self.kind = kind
        self.opts = opts
        self.attempt = 1  # the run that comes next is this job's attempt-th
        self.started = False  # its Future is RUNNING (retries skip that step)
        self.breaker: Any = None  # the key's CircuitBreaker, told the final outcome
        self.t_submit = time.monotonic()
        self.job_id: str | None = None  # its journal / idempotency id (options(job_id=...), or generated)
        self.record: _BatchRecord | None = None  # the batch that carried it (job_info), once dispatched

    @property
    def future(self) -> Job:
        """The Future the user holds: the job itself."""
        return self

    def release_call(self) -> None:
        """Let go of the callable and arguments (the job is over: nothing runs it again)."""
        self.fn = _released
        self.args = ()
        self.kwargs = None


def _released(*args: Any, **kwargs: Any) -> Any:
    # Stands in for a finished job's callable; reaching it is a batchpool bug.
    raise RuntimeError("batchpool: a finished job was run again")


def items_of(job: Job) -> int:
    """How many of the user's items a job carries (a ``map`` chunk carries several).

    Example:
        >>> items_of(Job(abs, ([1, 2, 3],), None, CHUNKS1))
        3
    """
    return len(job.args[0]) if job.kind in CHUNK_KINDS else 1


class Batch:
    """A group of jobs cut from one lane and sent to one worker, parent side."""

    __slots__ = (
        "blocks",
        "cancelled",
        "done",
        "fn",
        "fresh",
        "id",
        "jobs",
        "kind",
        "mean_submit",
        "reason",
        "record",
        "t_dispatch",
        "timing_key",
        "worker",
        "yield_asked",
    )

    def __init__(self, jobs: list[Job], reason: str, timing_key: object) -> None:
        self.id = next(_batch_ids)
        self.jobs = jobs
        self.fn = jobs[0].fn
        self.kind = jobs[0].kind
        self.reason = reason
        self.timing_key = timing_key
        self.done = 0  # jobs at the front whose outcome is already in
        self.worker: object = None
        self.t_dispatch = 0.0
        self.record: _BatchRecord | None = None
        self.blocks: list[Any] = []  # the arena blocks its large buffers are in (transport.shm.Block)
        self.cancelled = 0  # jobs found cancelled when it was claimed
        self.yield_asked = False  # its worker was asked to give the unstarted rest back
        self.fresh = False  # cut from the lanes (not a resend): its jobs count as dispatched once
        self.mean_submit = 0.0

    def mark_dispatched(self) -> None:
        """Stamp the dispatch time and let each job's Future say where it went."""
        self.t_dispatch = time.monotonic()
        record = self.record = _BatchRecord(self)
        total = 0.0
        for job in self.jobs:
            total += job.t_submit
            job.record = record  # for job_info: it lives exactly as long as the user's Future
        self.mean_submit = total / len(self.jobs) if self.jobs else self.t_dispatch

    def mark_done(self, run_time: float) -> None:
        """Record the measured run time of the whole batch."""
        if self.record is not None:
            self.record.run_time = run_time


class _BatchRecord:
    __slots__ = ("id", "reason", "run_time", "size", "t_dispatch")

    def __init__(self, batch: Batch) -> None:
        self.id = batch.id
        self.size = len(batch.jobs)
        self.reason = batch.reason
        self.t_dispatch = batch.t_dispatch
        self.run_time: float | None = None


class JobInfo(NamedTuple):
    """Where a job went (see ``job_info``)."""

    batch_id: int
    """Id of the batch that carried the job, unique within the process."""
    batch_size: int
    """Jobs in that batch."""
    flush_reason: str
    """Why the batch left its lane: 'size', 'delay', 'free worker' or 'shutdown'."""
    queue_wait: float
    """Seconds from submit() to dispatch."""
    batch_run_time: float | None
    """Seconds the whole batch ran in its worker (None until it finished)."""
    job_id: str | None = None
    """The job's id: ``options(job_id=...)``'s, or generated in a journaled pool; else None."""


def job_info(future: Future[Any]) -> JobInfo | None:
    """Tell which batch carried a job, why it was sent, and how long it waited.

    Returns None for a Future batchpool did not make or has not dispatched yet.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(backend="thread") as ex:
        ...     fut = ex.submit(abs, -1)
        ...     _ = fut.result(timeout=10)
        >>> job_info(fut).batch_size
        1
    """
    if not isinstance(future, Job) or future.record is None:
        return None
    record = future.record
    return JobInfo(
        record.id, record.size, record.reason, record.t_dispatch - future.t_submit, record.run_time, future.job_id
    )


class ChunkResult(NamedTuple):
    """The result of one ``CHUNKS`` job: one value or exception per item."""

    values: list[Any]
    errors: dict[int, Any]  # an exception, or its ExceptionWithTraceback while in transit


F = TypeVar("F", bound=Callable[..., Any])


def batched(fn: F) -> F:
    """Mark ``fn(items: list) -> list`` as a batch function.

    ``ex.submit(fn, item)`` then returns one Future per item, while the worker
    calls ``fn`` once per batch with the list of items. Result ``i`` resolves
    item ``i``'s Future; an exception *instance* returned at position ``i``
    fails only that item. A result of the wrong length or type fails the whole
    batch with ``BatchResultError``; an exception raised by ``fn`` fails every
    item of the batch (or, for jobs with a retry policy, the batch is split in
    halves until the item that makes it fail is found).

    The function itself is returned, marked, so it still pickles by reference
    and can still be called directly with a list.

    Example:
        >>> @batched
        ... def double_all(items):
        ...     return [2 * x for x in items]
        >>> double_all([1, 2])
        [2, 4]
        >>> is_batched(double_all)
        True
    """
    try:
        fn.__batchpool_batched__ = True  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        raise TypeError(f"@batched needs a function it can mark; got {type(fn).__name__} (wrap it in a def)") from None
    return fn


def is_batched(fn: object) -> bool:
    """True for a function marked with ``@batched``."""
    return getattr(fn, "__batchpool_batched__", False) is True


def rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    """Re-attach a worker's traceback text to its exception (unpickling hook)."""
    exc.__cause__ = RemoteTraceback(tb)  # type: ignore[arg-type]  # typeshed: it takes the text
    return exc


class ExceptionWithTraceback:
    """Carries an exception and its formatted traceback across a pickle.

    Unpickles as the original exception, with a ``RemoteTraceback`` as
    ``__cause__`` so the worker's frames show up in the parent's traceback.
    """

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        # Frames keep every local of the failed call alive; drop them now.
        exc.__traceback__ = None
        self.exc = exc
        self.tb = f'\n"""\n{text}"""'

    def __reduce__(self) -> tuple[Any, ...]:
        return rebuild_exception, (self.exc, self.tb)

    def as_remote_error(self) -> ExceptionWithTraceback:
        """A stand-in that always pickles, for an exception that does not."""
        kind = type(self.exc)
        stand_in = ExceptionWithTraceback.__new__(ExceptionWithTraceback)
        stand_in.exc = RemoteError(f"{kind.__module__}.{kind.__qualname__}", _safe_str(self.exc))
        stand_in.tb = self.tb
        return stand_in


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error
        return f"<{type(exc).__name__} with a failing __str__>"
