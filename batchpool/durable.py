"""Durable jobs: what a pool does with its journal (ids, idempotent submits, recovery).

One responsibility: wiring a ``journal.JournalWriter`` into one pool. The
executor holds one ``Durable`` and calls it from ``submit`` (``admit``), from
``recover``, ``journal_flush``, ``stats`` and shutdown; the ledger tells it
every job's fate through a ``JournalObserver``. The executor is never held
here (a pool collected unreferenced must still close its journal). Imports
from batchpool ``errors``, ``jobs``, ``options``, ``serialization`` and the
journal modules. Data flow::

    submit(fn, *args) ─> Job ─> Durable.admit(job, job_id)
        id queued or running in this pool ......... that job's Future
        id done / failed in the journal ........... a Future settled with the stored outcome
        otherwise: JournalWriter.accept ─────────── pickles the call now (unpicklable: the
        (a new uuid4 id when none was given)        Future fails at once), then the lanes
    Ledger ─> JournalObserver ─> JournalWriter.running / done / failed / retrying / cancelled
    recover() ─> JournalWriter.unfinished() ─> each job submitted again with its id,
        options and attempt count (no new record: the journal has it)

Final states are ``done``, ``failed`` and ``cancelled`` (by ``future.cancel()``).
What shutdown cuts off (``cancel_futures``, a deadline, a signal) is not a
fate of the job: it stays queued in the journal, for ``recover()``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .errors import DuplicateJobError, JournalError, RemoteError, ResultNotKeptError, ShutdownError
from .jobs import CALLS, CHUNK_KINDS, Job
from .options import JobOptions, Priority, check_timeout
from .serialization import dumps, dumps_callable

if TYPE_CHECKING:
    from .backends.base import Backend
    from .journal import JournalWriter
    from .journal_recover import RecoveredJob
    from .journal_store import StoredJob
    from .ledger import Ledger
    from .metrics import Stats

__all__ = ["ChunkCall", "Durable", "JournalObserver", "check_job_id"]

log = logging.getLogger("batchpool")

Submit = Callable[..., "Future[Any]"]  # the executor's _submit(fn, args, kwargs, kind, opts, job_id)


def check_job_id(job_id: object) -> str | None:
    """Validate ``options(job_id=...)``: None or a non-empty str.

    Example:
        >>> check_job_id("order-42")
        'order-42'
        >>> check_job_id(42)
        Traceback (most recent call last):
        TypeError: job_id must be a str or None, got 42
    """
    if job_id is None:
        return None
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str or None, got {job_id!r}")
    if not job_id:
        raise ValueError("job_id must not be empty")
    return job_id


class ChunkCall:
    """How a ``map`` chunk is journaled: its callable and kind, so ``recover`` runs it as a chunk.

    Only the parent sees it (recovery unwraps it before submitting), so
    workers never import this module. Calling it runs the chunk here.

    Example:
        >>> from batchpool.jobs import CHUNKS
        >>> ChunkCall(pow, CHUNKS)([(2, 3), (2, 4)]).values
        [8, 16]
    """

    __slots__ = ("fn", "kind")

    def __init__(self, fn: Callable[..., Any], kind: int) -> None:
        self.fn = fn
        self.kind = kind

    def __call__(self, items: list[Any]) -> Any:
        from .jobs import CHUNKS
        from .runner import identity, run_chunk

        return run_chunk(self.fn, items, identity, self.kind == CHUNKS)

    def __reduce__(self) -> tuple[Any, ...]:
        return ChunkCall, (self.fn, self.kind)


def _call_key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> object:
    """What tells two calls apart when there is no journal: a hash of their pickles, or the objects."""
    try:
        return hashlib.blake2b(dumps_callable(fn) + dumps((args, kwargs or None)), digest_size=16).digest()
    except Exception:  # noqa: BLE001 - unpicklable (thread backend): compared by identity
        return (fn, args, dict(kwargs or {}))


def _same_call(a: object, b: object) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return a == b
    assert isinstance(a, tuple) and isinstance(b, tuple)
    (fn_a, args_a, kw_a), (fn_b, args_b, kw_b) = a, b
    return (
        fn_a is fn_b
        and len(args_a) == len(args_b)
        and all(x is y for x, y in zip(args_a, args_b, strict=True))
        and kw_a.keys() == kw_b.keys()
        and all(kw_a[k] is kw_b[k] for k in kw_a)
    )


def _settled(job_id: str, stored: StoredJob) -> Future[Any]:
    """A Future holding a finished job's stored outcome (a job done or failed earlier)."""
    future: Future[Any] = Future()
    if stored.state == "done":
        try:
            future.set_result(stored.result())
        except Exception as exc:  # noqa: BLE001 - not kept (ResultNotKeptError), or no longer unpickles
            future.set_exception(exc)
        return future
    error = stored.exception()
    if error is None:  # journal_results=False, or it did not pickle: type and message are kept
        error = ResultNotKeptError(job_id)
        error.__cause__ = RemoteError(stored.error_type or "?", stored.error_message or "")
    future.set_exception(error)
    return future


class Durable:
    """A pool's journal and job ids. Build with ``Durable.open``; the executor holds one.

    Without a journal it only remembers ``job_id``s (in memory, for the
    pool's lifetime), so ``options(job_id=...)`` deduplicates there too.

    Example:
        >>> durable = Durable.open(None, None, None)
        >>> first = Job(abs, (-1,), None)
        >>> durable.admit(first, "a") is None  # new: the caller queues it
        True
        >>> durable.admit(Job(abs, (-1,), None), "a") is first.future
        True
    """

    def __init__(self, writer: JournalWriter | None) -> None:
        self.writer = writer
        # Makes "is this id known? if not, record it" one step, so that two
        # threads submitting one id make one job. Never held while waiting
        # for the pool; held while looking the id up in the journal (that
        # may wait for the writer's next commit: only for reused ids).
        self._lock = threading.Lock()
        # Journal: ids queued or running in this pool (user ids and recovered
        # ones; generated ids are never resubmitted). No journal: every id
        # this pool saw. Values: (its Future, the call's digest or None).
        self._live: dict[str, tuple[Future[Any], object]] = {}
        self._recovering: dict[str, RecoveredJob] = {}  # recover() is resubmitting these
        self._recovered = False
        self._backend: Backend | None = None
        # Generated ids: 32 hex digits like a uuid4's, unique across processes
        # and hosts by a random 64-bit prefix per pool, then a counter. Not
        # uuid4() per job: os.urandom releases the GIL at every submit, and
        # the journal's writer thread then holds it for a whole switch interval.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    @classmethod
    def open(cls, journal: str | os.PathLike[str] | None, sync: str | None, results: bool | None) -> Durable:
        """Check the constructor's journal arguments and open the journal (None: no journal).

        Raises:
            ValueError: ``journal_sync`` or ``journal_results`` without ``journal``, or a bad value.
            TypeError: ``journal`` is not a path.
            JournalError: the journal cannot be opened (see ``JournalWriter.open``).

        Example:
            >>> Durable.open(None, "full", None)
            Traceback (most recent call last):
            ValueError: journal_sync needs a journal: BatchPoolExecutor(journal="jobs.db", journal_sync=...)
        """
        if journal is None:
            for name, value in (("journal_sync", sync), ("journal_results", results)):
                if value is not None:
                    raise ValueError(f'{name} needs a journal: BatchPoolExecutor(journal="jobs.db", {name}=...)')
            return cls(None)
        if not isinstance(journal, (str, os.PathLike)):
            raise TypeError(f"journal must be a path (str or os.PathLike) or None, got {type(journal).__name__}")
        from .journal import JournalWriter

        writer = JournalWriter.open(journal, sync="normal" if sync is None else sync,
                                    results=True if results is None else results)  # fmt: skip
        return cls(writer)

    def attach(self, ledger: Ledger, backend: Backend) -> None:
        """Hear the ledger's transitions; ``backend`` is what ``close_later`` waits for."""
        self._backend = backend
        if self.writer is not None:
            ledger.observers.append(JournalObserver(self.writer, self._live))

    # -- submitting ----------------------------------------------------------

    def admit(self, job: Job, job_id: str | None) -> Future[Any] | None:
        """Journal a new job, or answer for a known id. None: queue ``job``; a Future: return that instead.

        Raises:
            DuplicateJobError: ``job_id`` is known with another callable or arguments.
            JournalError: the journal cannot take records any more.
        """
        writer = self.writer
        if writer is None:
            assert job_id is not None
            return self._admit_in_memory(job, job_id)
        if job_id is None:  # a fresh id: nothing to look up, no digest to keep
            return self._accept(writer, job, f"{self._id_prefix}{next(self._ids):016x}", None)
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                if not self._matches(writer, job, job_id, live[1]):
                    raise DuplicateJobError(job_id)
                return live[0]
            recovered = self._recovering.pop(job_id, None)
            if recovered is not None:  # recover() resubmitting: the journal has it already
                job.job_id = job_id
                job.attempt = recovered.attempts + 1
                self._live[job_id] = (job, None)
                return None
            stored = writer.lookup(job_id)
            if stored is not None:
                fn, args = _journaled_call(job)
                if writer.digest(fn, args, job.kwargs) != stored.digest:
                    raise DuplicateJobError(job_id)
                if stored.state in ("done", "failed"):
                    return _settled(job_id, stored)
                # Queued or running under a dead owner (not recovered yet), or
                # cancelled: run it now; the new row replaces the old.
            return self._accept(writer, job, job_id, self._live)

    def _accept(self, writer: JournalWriter, job: Job, job_id: str,
                live: dict[str, tuple[Future[Any], object]] | None) -> Future[Any] | None:  # fmt: skip
        fn, args = _journaled_call(job)
        opts = job.opts
        try:
            # A generated id needs no digest: no live entry compares with it.
            key = opts.key
            digest = writer.accept(job_id, fn, args, job.kwargs, key if key is None or isinstance(key, str) else None,
                                   opts.priority, opts.timeout, opts.retry, 0, live is not None)  # fmt: skip
        except JournalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the call does not pickle: its Future fails now, alone
            job.set_exception(exc)
            return job
        job.job_id = job_id
        if live is not None:
            live[job_id] = (job, digest)
        return None

    @staticmethod
    def _matches(writer: JournalWriter, job: Job, job_id: str, digest: object) -> bool:
        if digest is None:  # a recovered job: its digest is the journal's
            stored = writer.lookup(job_id)
            digest = None if stored is None else stored.digest
        fn, args = _journaled_call(job)
        return writer.digest(fn, args, job.kwargs) == digest

    def _admit_in_memory(self, job: Job, job_id: str) -> Future[Any] | None:
        key = _call_key(job.fn, job.args, job.kwargs)
        with self._lock:
            seen = self._live.get(job_id)
            if seen is not None:
                if not _same_call(seen[1], key):
                    raise DuplicateJobError(job_id)
                return seen[0]
            self._live[job_id] = (job, key)
        job.job_id = job_id
        return None

    def refused(self, job: Job) -> None:
        """The job was accepted here but not queued (``QueueFullError``): it will not run."""
        if self.writer is not None and job.job_id is not None:
            self.writer.cancelled(job.job_id)  # not final: the same id may be submitted again
        if job.job_id is not None:
            entry = self._live.get(job.job_id)
            if entry is not None and entry[0] is job:
                del self._live[job.job_id]

    # -- recovery, flushing, stats -------------------------------------------

    def recover(self, submit: Submit, failed: bool) -> dict[str, Future[Any]]:
        """Submit again what previous owners left unfinished (see ``BatchPoolExecutor.recover``)."""
        writer = self.writer
        if writer is None:
            raise ValueError('recover() needs a journal: BatchPoolExecutor(journal="jobs.db")')
        if not isinstance(failed, bool):
            raise TypeError(f"failed must be a bool, got {failed!r}")
        with self._lock:
            if self._recovered:
                return {}
            self._recovered = True
        futures: dict[str, Future[Any]] = {}
        for job in writer.unfinished(include_failed=failed):
            if job.error is not None or job.fn is None:
                future: Future[Any] = Future()
                error = job.error if job.error is not None else RuntimeError("no callable")
                future.set_exception(error)
                if not job.poison:  # poison is failed in the journal already
                    writer.failed(job.job_id, error, job.attempts)
                futures[job.job_id] = future
                continue
            fn, kind = job.fn, CALLS
            if isinstance(job.fn, ChunkCall):
                fn, kind = job.fn.fn, job.fn.kind
            opts = JobOptions(priority=Priority(job.priority), key=job.key, timeout=job.timeout, retry=job.retry)
            with self._lock:
                self._recovering[job.job_id] = job
            try:
                futures[job.job_id] = submit(fn, job.args or (), job.kwargs, kind, opts, job.job_id)
            finally:
                with self._lock:
                    self._recovering.pop(job.job_id, None)
        return futures

    def flush(self, timeout: float | None) -> None:
        """Wait until every record so far is committed (see ``BatchPoolExecutor.journal_flush``)."""
        if self.writer is None:
            raise ValueError('journal_flush() needs a journal: BatchPoolExecutor(journal="jobs.db")')
        self.writer.flush(timeout)

    def annotate(self, stats: Stats) -> Stats:
        """``stats`` with the journal's lag and commit rate (unchanged without a journal)."""
        writer = self.writer
        if writer is None:
            return stats
        lag, seconds = writer.lag
        return dataclasses.replace(
            stats, journal_lag=lag, journal_lag_seconds=seconds, journal_commits_per_s=writer.commits_per_second
        )

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued and release the journal (the pool has drained). Idempotent."""
        if self.writer is not None:
            self.writer.close()

    def close_later(self) -> None:
        """Close once the backend has stopped, from a thread of its own (never waits here).

        For ``shutdown(wait=False)`` and a pool collected unreferenced: its
        last jobs still report to the journal. Interpreter exit closes every
        journal anyway (after the pools drained).
        """
        if self.writer is None or self._backend is None:
            return
        backend, writer = self._backend, self.writer

        def close_when_drained() -> None:
            backend.join()
            writer.close()

        threading.Thread(target=close_when_drained, name="batchpool-journal-close", daemon=True).start()


def _journaled_call(job: Job) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The callable and arguments the journal keeps for ``job`` (a map chunk keeps its kind)."""
    if job.kind in CHUNK_KINDS:
        return ChunkCall(job.fn, job.kind), job.args
    return job.fn, job.args


class JournalObserver:
    """Tells the journal each job's fate (a ``ledger.LedgerObserver``).

    A ``ShutdownError`` (a drain deadline, a second signal) is a cut-off,
    not the job's fate: the job goes back to "queued" in the journal, with
    the interrupted attempt not charged, so ``recover()`` runs it again.
    """

    def __init__(self, writer: JournalWriter, live: dict[str, tuple[Future[Any], object]]) -> None:
        self._writer = writer
        self._live = live

    def _finished(self, job: Job) -> None:
        live = self._live
        if live:
            entry = live.get(job.job_id)  # type: ignore[arg-type]
            if entry is not None and entry[0] is job:
                live.pop(job.job_id, None)  # type: ignore[arg-type]

    def job_running(self, jobs: Sequence[Job]) -> None:
        ids = [job.job_id for job in jobs if job.job_id is not None]
        if ids:
            self._writer.running(ids)

    def job_done(self, job: Job, value: Any) -> None:
        if job.job_id is not None:
            self._writer.done(job.job_id, value)
            self._finished(job)

    def jobs_done(self, outcomes: Sequence[tuple[Job, Any]]) -> None:
        """``job_done`` for several jobs: one record list append under one lock."""
        ids = [job.job_id for job, _ in outcomes]
        values = [value for _, value in outcomes]
        if None in ids:  # an internal job (a map chunk's retry) is not journaled
            kept = [i for i, job_id in enumerate(ids) if job_id is not None]
            ids, values = [ids[i] for i in kept], [values[i] for i in kept]
        if ids:
            self._writer.done_many(ids, values)  # type: ignore[arg-type]
        if self._live:
            for job, _ in outcomes:
                if job.job_id is not None:
                    self._finished(job)

    def job_failed(self, job: Job, exc: BaseException) -> None:
        if job.job_id is None:
            return
        if isinstance(exc, ShutdownError):
            self._writer.retrying(job.job_id, job.attempt - 1)
        else:
            self._writer.failed(job.job_id, exc, job.attempt)
        self._finished(job)

    def job_retrying(self, job: Job, exc: BaseException) -> None:
        if job.job_id is not None:
            self._writer.retrying(job.job_id, job.attempt - 1)

    def job_cancelled(self, job: Job) -> None:
        if job.job_id is not None:
            self._writer.cancelled(job.job_id)
            self._finished(job)


class DurableMixin:
    """``recover`` and ``journal_flush`` of the executor (mixed into ``BatchPoolExecutor``)."""

    if TYPE_CHECKING:
        _durable: Durable

        def _submit(
            self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, kind: int, opts: JobOptions | None = None
        ) -> Future[Any]: ...

    @property
    def _journal(self) -> Any:
        """The pool's ``JournalWriter`` or None: ``map_pages`` keeps its runs in the same file."""
        return self._durable.writer

    def recover(self, *, failed: bool = False) -> dict[str, Future[Any]]:
        """Run again every job a previous owner of the journal left unfinished.

        Each job comes back with its callable, arguments, options (key,
        priority, timeout, retry) and attempt count, under its id. Delivery is
        at least once: a job that was running when its owner died runs again.
        A job whose callable no longer unpickles, and a poison job (running
        at three deaths of its pool in a row, or out of attempts), is in the
        result as a failed Future (``PoisonJobError``), not run. Call it once,
        right after making the pool; a second call returns ``{}``.

        Args:
            failed: also run again the jobs that failed (a redrive, with a
                fresh attempt count).

        Returns:
            job id -> Future, for every job recovered.

        Raises:
            ValueError: the pool has no journal.

        Example:
            >>> import os, tempfile
            >>> from batchpool import BatchPoolExecutor
            >>> path = os.path.join(tempfile.mkdtemp(), "jobs.db")
            >>> with BatchPoolExecutor(backend="thread", journal=path) as ex:
            ...     ex.options(job_id="a").submit(abs, -1).result(timeout=10), ex.recover()
            (1, {})
        """
        return self._durable.recover(self._submit, failed)

    def journal_flush(self, timeout: float | None = None) -> None:
        """Return once every job accepted so far is committed to the journal.

        ``submit`` never waits for the disk; this is the durability point
        (a crash after it loses none of those jobs).

        Raises:
            TimeoutError: not committed within ``timeout`` seconds.
            ValueError: the pool has no journal.
            JournalError: some records could not be written (a full disk).

        Example:
            >>> import os, tempfile
            >>> from batchpool import BatchPoolExecutor
            >>> path = os.path.join(tempfile.mkdtemp(), "jobs.db")
            >>> with BatchPoolExecutor(backend="thread", journal=path) as ex:
            ...     fut = ex.submit(abs, -2)
            ...     ex.journal_flush(timeout=10)
            ...     fut.result(timeout=10)
            2
        """
        self._durable.flush(check_timeout("timeout", timeout))
