"""The exception tree of batchpool. Imports nothing from batchpool.

Every error a user can catch from this library is defined here, so the shape of
the failure model is visible in one place::

    Exception
    ├── BatchPoolError                      base of everything batchpool raises itself
    │   ├── RemoteError                     a worker exception that could not travel as itself
    │   ├── BatchResultError                a @batched function returned the wrong shape
    │   ├── QueueFullError                  max_pending reached with on_full="raise"
    │   ├── ShutdownError                   shutdown's deadline passed before the job ended
    │   ├── JobTimeoutError                 the job ran past its time limit (also a TimeoutError)
    │   ├── ProtocolMismatchError           a Dask worker runs another batchpool version
    │   ├── RunFailedError                  map_pages: more items failed than tolerated
    │   ├── RunFinishedError                map_pages: the run_id finished, results not kept
    │   ├── CircuitOpenError (retry.py)     the job's key failed too often; failing fast
    │   ├── DuplicateJobError (ValueError)  a job id reused with a different callable or arguments
    │   ├── ResultNotKeptError (LookupError) the job already ran; its result was not kept
    │   ├── PoisonJobError                  the job was running at every one of several crashes
    │   └── JournalError                    the journal file cannot be used (names the file)
    │       ├── JournalLockedError          a live process owns the journal
    │       ├── NotAJournalError            the file is not a batchpool journal
    │       ├── JournalCorruptError         SQLite found the file damaged
    │       ├── JournalFullError            the disk (or the database's size limit) is full
    │       └── JournalReadOnlyError        the file or its directory cannot be written
    └── concurrent.futures.BrokenExecutor
        ├── concurrent.futures.process.BrokenProcessPool
        │   ├── WorkerCrashedError          a worker died with the job unfinished
        │   └── TransportError              a job or result could not be unpickled
        │                                   on the far side; only that job fails
        └── concurrent.futures.thread.BrokenThreadPool

``WorkerCrashedError`` and ``TransportError`` subclass ``BrokenProcessPool`` so
that code written for ``ProcessPoolExecutor`` (``except BrokenProcessPool``)
keeps working, although with batchpool only the affected jobs fail and the pool
itself goes on. A pool that cannot start workers at all (a failing
``initializer``) raises plain ``BrokenProcessPool`` / ``BrokenThreadPool``, as
the standard library does.
"""

from __future__ import annotations

import signal
from concurrent import futures
from concurrent.futures import process as _process
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BatchPoolError",
    "BatchResultError",
    "JobTimeoutError",
    "ProtocolMismatchError",
    "DuplicateJobError",
    "JournalCorruptError",
    "JournalError",
    "JournalFullError",
    "JournalLockedError",
    "JournalReadOnlyError",
    "NotAJournalError",
    "PoisonJobError",
    "QueueFullError",
    "ShutdownError",
    "RemoteError",
    "RemoteTraceback",
    "ResultNotKeptError",
    "TransportError",
    "WorkerCrashedError",
    "RunFailedError",
    "RunFinishedError",
]


class BatchPoolError(Exception):
    """Base class of the errors batchpool raises itself.

    Example:
        >>> issubclass(WorkerCrashedError, BatchPoolError)
        True
    """


#: The formatted traceback of an exception raised in a worker, attached as
#: ``__cause__`` of the re-raised exception so the worker's frames print under
#: the parent's traceback. It *is* the standard library's own class (its
#: ``tb`` attribute holds the text), so code and tests written for
#: ``ProcessPoolExecutor`` that look for it find it.
RemoteTraceback = _process._RemoteTraceback


class RemoteError(BatchPoolError):
    """A worker exception that could not be pickled back as itself.

    Attributes:
        type_name: qualified name of the original exception type.
        message: ``str()`` of the original exception.

    Example:
        >>> str(RemoteError("mod.Weird", "boom"))
        'mod.Weird: boom (the exception could not be pickled back from the worker)'
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message} (the exception could not be pickled back from the worker)"


class BatchResultError(BatchPoolError):
    """A ``@batched`` function did not return one result per item.

    Every item of that batch fails with it.

    Example:
        >>> str(BatchResultError("insert_rows", 3, "list of 2"))
        'insert_rows returned a list of 2 for a batch of 3 items; it must return a list of 3'
    """

    def __init__(self, name: str, items: int, got: str) -> None:
        super().__init__(name, items, got)
        self.name = name
        self.items = items
        self.got = got

    def __str__(self) -> str:
        return (
            f"{self.name} returned a {self.got} for a batch of {self.items} items; "
            f"it must return a list of {self.items}"
        )


class QueueFullError(BatchPoolError):
    """``max_pending`` jobs are queued and ``on_full="raise"``.

    Example:
        >>> str(QueueFullError(1000))
        'the pool already holds max_pending=1000 queued jobs'
    """

    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending)
        self.max_pending = max_pending

    def __str__(self) -> str:
        return f"the pool already holds max_pending={self.max_pending} queued jobs"


class ShutdownError(BatchPoolError):
    """The pool was stopped (shutdown's ``timeout`` passed) before this job finished.

    Example:
        >>> str(ShutdownError(2.0))
        'the pool was stopped 2.0 s into shutdown, before this job finished'
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        return f"the pool was stopped {self.timeout} s into shutdown, before this job finished"


# On 3.10 concurrent.futures.TimeoutError is its own class; from 3.11 it is the builtin.
_FUTURES_TIMEOUT: object = futures.TimeoutError
_TIMEOUT_BASES: tuple[type[BaseException], ...] = (
    (TimeoutError,) if _FUTURES_TIMEOUT is TimeoutError else (TimeoutError, futures.TimeoutError)
)


class JobTimeoutError(BatchPoolError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """The job ran longer than its ``timeout`` and was stopped.

    A subclass of the builtin ``TimeoutError`` and of
    ``concurrent.futures.TimeoutError`` (they differ on Python 3.10), so code
    catching either sees it. Retry policies always count it as retryable,
    unlike a ``TimeoutError`` the job raises itself (that one follows
    ``retry_on``).

    Attributes:
        timeout: the limit, in seconds.

    Example:
        >>> error = JobTimeoutError(2.5)
        >>> str(error), isinstance(error, TimeoutError)
        ('job ran longer than its timeout of 2.5 s', True)
    """

    def __init__(self, timeout: float | None) -> None:
        super().__init__(timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        return f"job ran longer than its timeout of {self.timeout} s"


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended and what probably caused it, for crash messages.

    Example:
        >>> describe_exit(-9)
        'killed by signal SIGKILL (out of memory, or killed from outside)'
    """
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = {
            "SIGKILL": "out of memory, or killed from outside",
            "SIGSEGV": "a crash in native code",
            "SIGBUS": "a crash in native code",
            "SIGABRT": "an abort in native code",
            "SIGTERM": "terminated from outside",
        }.get(name)
        return f"killed by signal {name}" + (f" ({cause})" if cause else "")
    return f"exited with code {exitcode}"


class WorkerCrashedError(BatchPoolError, BrokenProcessPool):
    """A worker process died while this job was unfinished.

    The pool replaces the worker and goes on; only the jobs that were running
    on it (and whose retry policy does not allow another attempt) fail.

    Attributes:
        pid: the dead worker's process id.
        exitcode: its exit code (negative: the signal that killed it).

    Example:
        >>> str(WorkerCrashedError(1234, -11))
        'worker pid 1234 killed by signal SIGSEGV (a crash in native code) while running this job'
    """

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        super().__init__(pid, exitcode)
        self.pid = pid
        self.exitcode = exitcode

    def __str__(self) -> str:
        return f"worker pid {self.pid} {describe_exit(self.exitcode)} while running this job"


class TransportError(BatchPoolError, BrokenProcessPool):
    """A job's call or its result could not be unpickled on the other side.

    The original error is the ``__cause__``. Only this job fails.

    Example:
        >>> str(TransportError("the call could not be unpickled in the worker"))
        'the call could not be unpickled in the worker'
    """


class DuplicateJobError(BatchPoolError, ValueError):
    """A job id was submitted again with a different callable or arguments.

    Ids make submits idempotent: the same id with the same call (compared by
    its pickled bytes) is the same job; a different call under a used id is a
    mistake the caller must hear about.

    Attributes:
        job_id: the reused id.

    Example:
        >>> str(DuplicateJobError("order-42"))
        "job id 'order-42' was already submitted with a different callable or arguments"
        >>> isinstance(DuplicateJobError("x"), ValueError)
        True
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job id {self.job_id!r} was already submitted with a different callable or arguments"


class ResultNotKeptError(BatchPoolError, LookupError):
    """The job already ran, but its result is not in the journal.

    Results are not kept with ``journal_results=False``, or when the result
    could not be pickled.

    Attributes:
        job_id: the job's id.

    Example:
        >>> str(ResultNotKeptError("order-42"))
        "job 'order-42' already ran and its result was not kept"
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id!r} already ran and its result was not kept"


class PoisonJobError(BatchPoolError):
    """The job was running each time its pool died; it is failed, not run again.

    Attributes:
        job_id: the job's id.
        crashes: pool deaths in a row with the job running.
        attempts: attempts charged to the job.

    Example:
        >>> str(PoisonJobError("order-42", crashes=3, attempts=3))
        "job 'order-42' was running when its pool died 3 times in a row (3 attempts); it is not run again"
    """

    def __init__(self, job_id: str, crashes: int, attempts: int) -> None:
        super().__init__(job_id, crashes, attempts)
        self.job_id = job_id
        self.crashes = crashes
        self.attempts = attempts

    def __str__(self) -> str:
        return (
            f"job {self.job_id!r} was running when its pool died {self.crashes} times in a row "
            f"({self.attempts} attempts); it is not run again"
        )


class JournalError(BatchPoolError):
    """A journal file cannot be opened, read or written.

    Attributes:
        path: the journal's path.
        reason: what is wrong, in words.

    Example:
        >>> str(JournalError("jobs.db", "the journal is closed"))
        'journal jobs.db: the journal is closed'
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"journal {self.path}: {self.reason}"


class JournalLockedError(JournalError):
    """Another live pool (in this process or another) owns the journal.

    The ownership lock dies with its owner, so a journal whose owner died is
    free again.

    Example:
        >>> str(JournalLockedError("jobs.db", "owned by a live process (pid 12)"))
        'journal jobs.db: owned by a live process (pid 12)'
    """


class NotAJournalError(JournalError):
    """The file exists but is not a batchpool journal (not SQLite, or another schema).

    Example:
        >>> issubclass(NotAJournalError, JournalError)
        True
    """


class JournalCorruptError(JournalError):
    """SQLite found the journal damaged.

    Example:
        >>> issubclass(JournalCorruptError, JournalError)
        True
    """


class JournalFullError(JournalError):
    """The disk, or the database's size limit, is full; the records of that commit were not written.

    Example:
        >>> issubclass(JournalFullError, JournalError)
        True
    """


class JournalReadOnlyError(JournalError):
    """The journal, its directory or its filesystem cannot be written.

    Example:
        >>> issubclass(JournalReadOnlyError, JournalError)
        True
    """


class RunFailedError(BatchPoolError):
    """A ``map_pages`` run failed more items than its ``tolerated_failure`` allows.

    The run stopped fetching and cancelled its queued items. The first
    failure is the ``__cause__``.

    Attributes:
        run_id: the run's id.
        count: how many items had failed.
        completed: how many items had completed (failed ones included).
        failures: the first failures, as (item, exception) pairs.

    Example:
        >>> str(RunFailedError("backfill", 3, 40, [(7, ValueError("bad row"))]))
        "run 'backfill': 3 of 40 completed items failed, more than tolerated; first: 7: ValueError('bad row')"
    """

    def __init__(
        self, run_id: str, count: int, completed: int, failures: list[tuple[object, BaseException]]
    ) -> None:
        super().__init__(run_id, count, completed, failures)
        self.run_id = run_id
        self.count = count
        self.completed = completed
        self.failures = failures

    def __str__(self) -> str:
        first = ", ".join(f"{item!r}: {exc!r}" for item, exc in self.failures[:3])
        return (
            f"run {self.run_id!r}: {self.count} of {self.completed} completed items failed, "
            f"more than tolerated; first: {first}"
        )


class RunFinishedError(BatchPoolError):
    """A ``map_pages`` run with this ``run_id`` already finished and kept no results.

    Start it under a new ``run_id`` to run it again.

    Example:
        >>> str(RunFinishedError("backfill"))
        "run 'backfill' already finished and its results were not kept (keep_results=False); use a new run_id"
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return (
            f"run {self.run_id!r} already finished and its results were not kept (keep_results=False); "
            "use a new run_id"
        )


class ProtocolMismatchError(BatchPoolError):
    """A Dask worker runs a batchpool that speaks another protocol version than this process.

    Example:
        >>> str(ProtocolMismatchError(1, 2))
        'the Dask worker runs batchpool protocol 1, this process speaks 2: install the same batchpool on both'
    """

    def __init__(self, worker: int, parent: int) -> None:
        super().__init__(worker, parent)
        self.worker = worker
        self.parent = parent

    def __str__(self) -> str:
        return (
            f"the Dask worker runs batchpool protocol {self.worker}, this process speaks "
            f"{self.parent}: install the same batchpool on both"
        )
