"""batchpool: a micro-batching ``concurrent.futures`` executor.

Public names only; each is re-exported explicitly. Worker processes import this
package too, so only light modules load here: the executor (and with it the
batcher, the backends, metrics), the dashboard (rich), the journal and runs
(sqlite3) load on first use, through ``__getattr__`` (a worker never uses them).

Example:
    >>> from batchpool import BatchPoolExecutor
    >>> with BatchPoolExecutor(backend="thread") as ex:
    ...     list(ex.map(abs, [-1, -2]))
    [1, 2]
"""

from typing import TYPE_CHECKING

from .batching.limits import UNLIMITED as UNLIMITED
from .errors import BatchPoolError as BatchPoolError
from .errors import BatchResultError as BatchResultError
from .errors import DuplicateJobError as DuplicateJobError
from .errors import JobTimeoutError as JobTimeoutError
from .errors import JournalCorruptError as JournalCorruptError
from .errors import JournalError as JournalError
from .errors import JournalFullError as JournalFullError
from .errors import JournalLockedError as JournalLockedError
from .errors import JournalReadOnlyError as JournalReadOnlyError
from .errors import NotAJournalError as NotAJournalError
from .errors import PoisonJobError as PoisonJobError
from .errors import QueueFullError as QueueFullError
from .errors import RemoteError as RemoteError
from .errors import RemoteTraceback as RemoteTraceback
from .errors import ResultNotKeptError as ResultNotKeptError
from .errors import RunFailedError as RunFailedError
from .errors import RunFinishedError as RunFinishedError
from .errors import ShutdownError as ShutdownError
from .errors import TransportError as TransportError
from .errors import WorkerCrashedError as WorkerCrashedError
from .jobs import JobInfo as JobInfo
from .jobs import batched as batched
from .jobs import job_info as job_info
from .options import Priority as Priority
from .retry import CircuitBreaker as CircuitBreaker
from .retry import CircuitOpenError as CircuitOpenError
from .retry import RetryPolicy as RetryPolicy

if TYPE_CHECKING:  # loaded on first use (see __getattr__); typed like any other name
    from .dropin import ProcessPoolExecutor as ProcessPoolExecutor
    from .dropin import ThreadPoolExecutor as ThreadPoolExecutor
    from .executor import BatchPoolExecutor as BatchPoolExecutor
    from .journal_report import Journal as Journal
    from .metrics import Stats as Stats
    from .run_store import RunStore as RunStore
    from .runs import Run as Run
    from .runs import RunProgress as RunProgress
    from .runs import live_runs as live_runs
    from .views import ExecutorView as ExecutorView

__all__ = [
    "BatchPoolError",
    "BatchPoolExecutor",
    "BatchResultError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DuplicateJobError",
    "ExecutorView",
    "JobInfo",
    "JobTimeoutError",
    "Journal",
    "JournalCorruptError",
    "JournalError",
    "JournalFullError",
    "JournalLockedError",
    "JournalReadOnlyError",
    "NotAJournalError",
    "PoisonJobError",
    "Priority",
    "ProcessPoolExecutor",
    "QueueFullError",
    "RemoteError",
    "RemoteTraceback",
    "ResultNotKeptError",
    "RetryPolicy",
    "Run",
    "RunFailedError",
    "RunFinishedError",
    "RunProgress",
    "RunStore",
    "ShutdownError",
    "Stats",
    "ThreadPoolExecutor",
    "TransportError",
    "UNLIMITED",
    "WorkerCrashedError",
    "Dashboard",
    "batched",
    "job_info",
    "live_runs",
    "progress",
    "serve_metrics",
]

__version__ = "0.1.0"


_LAZY = {
    "BatchPoolExecutor": "executor",
    "ExecutorView": "views",
    "Stats": "metrics",
    "ThreadPoolExecutor": "dropin",
    "ProcessPoolExecutor": "dropin",
    "Journal": "journal_report",
    "Run": "runs",
    "RunProgress": "runs",
    "live_runs": "runs",
    "RunStore": "run_store",
}


def __getattr__(name: str) -> object:
    # Workers import this package and must not pay for the parent's machinery
    # (or rich, or sqlite3), so these names load on first use.
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)
    if name in ("Dashboard", "progress", "serve_metrics"):
        from . import dashboard

        return getattr(dashboard, name)
    raise AttributeError(f"module 'batchpool' has no attribute {name!r}")
