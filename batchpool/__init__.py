"""batchpool: a micro-batching ``concurrent.futures`` executor.

Public names only; each is re-exported explicitly. Worker processes import this
package too, so nothing heavy (rich, the dashboard) is imported here.

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
from .executor import BatchPoolExecutor as BatchPoolExecutor
from .executor import ExecutorView as ExecutorView
from .jobs import JobInfo as JobInfo
from .jobs import batched as batched
from .jobs import job_info as job_info
from .metrics import Stats as Stats
from .options import Priority as Priority
from .retry import CircuitBreaker as CircuitBreaker
from .retry import CircuitOpenError as CircuitOpenError
from .retry import RetryPolicy as RetryPolicy

if TYPE_CHECKING:  # loaded on first use (see __getattr__); typed like any other name
    from .journal_report import Journal as Journal
    from .run_store import RunStore as RunStore
    from .runs import Run as Run
    from .runs import RunProgress as RunProgress
    from .runs import live_runs as live_runs

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


def __getattr__(name: str) -> object:
    # The dashboard imports rich; workers import this package and must not pay
    # for it, so these names load on first use.
    if name in ("Dashboard", "progress", "serve_metrics"):
        from . import dashboard

        return getattr(dashboard, name)
    if name == "Journal":
        # sqlite3 is only needed by journaled pools and readers: loaded on use.
        from .journal_report import Journal

        return Journal
    # Runs (and sqlite3, for their store) are parent-side only: workers never load them.
    if name in ("Run", "RunProgress", "live_runs"):
        from . import runs

        return getattr(runs, name)
    if name == "RunStore":
        from .run_store import RunStore

        return RunStore
    raise AttributeError(f"module 'batchpool' has no attribute {name!r}")
