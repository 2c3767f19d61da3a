"""The durable-jobs journal's writer: records every accepted job and its fate, durably.

One responsibility: getting records to disk without making anyone wait. The
executor (through the ledger) tells a ``JournalWriter`` what happened; one
writer thread makes it durable; after a crash, ``unfinished()`` hands back
what the dead owner left. The file format and its SQL are in
``journal_store``, the crash rule in ``journal_recover``, reading for people
(``Journal``, ``report_text``) in ``journal_report``. Imports from batchpool
only ``errors``, ``serialization``, ``journal_store`` and ``journal_recover``.
Data flow::

    submitting thread ── accept(): pickles the call here ──┐ one flat tuple per job
    manager thread ── running/done_many (one record per ───┤ one bounded list of
        batch), failed/retrying/cancelled (per job)        v records (backpressure)
    writer thread: takes EVERY record queued since its last commit, writes them
    in ONE transaction (group commit), commits, wakes flush() waiters; a job
    accepted and finished between two commits is written once, in its final state

One live owner: a POSIX record lock (``fcntl.lockf``) on ``PATH.owner``. The
kernel drops it when the owner dies, and fork()ed children do not inherit it,
so a worker outliving a SIGKILLed owner does not keep the journal. POSIX locks
are per process, so an in-process registry refuses a second writer here too.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from .errors import JournalCorruptError, JournalError, JournalLockedError
from .journal_recover import RecoveredJob, claim_unfinished
from .journal_store import (
    CALL,
    CANCELLED,
    DONE,
    FAILED,
    INSERT,
    JOB_COLUMNS,
    RETRYING,
    RUNNING,
    StoredJob,
    call_digest,
    connect,
    sqlite_error,
    upgrade,
    write_batch,
)
from .serialization import dumps, dumps_callable

__all__ = ["MAX_QUEUED", "JournalWriter", "RecoveredJob", "StoredJob", "new_job_id"]

log = logging.getLogger("batchpool")

#: Records waiting for the writer before ``accept`` blocks (backpressure).
MAX_QUEUED = 100_000
_CACHE_SIZE = 1024
# Owners in this process, by real path: POSIX locks do not conflict within one
# process, so this is what refuses a second writer here. Guarded by
# _REGISTRY_LOCK, held for the whole open so two threads cannot both pass.
_REGISTRY: dict[str, JournalWriter] = {}
_REGISTRY_LOCK = threading.Lock()


def new_job_id() -> str:
    """A job id for a job submitted without one: unique across processes and hosts (uuid4 hex).

    Example:
        >>> a, b = new_job_id(), new_job_id()
        >>> len(a), a != b
        (32, True)
    """
    return uuid.uuid4().hex


def _forget_after_fork() -> None:
    # A fork()ed child owns nothing: it has no writer thread and no lock.
    _REGISTRY.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _close_all() -> None:
    for writer in list(_REGISTRY.values()):
        writer.close()


atexit.register(_close_all)  # what was accepted is committed before the interpreter goes


def _take_lock(path: str) -> int:
    """Open and lock ``path``.owner; return its descriptor (the lock lives as long as it is open)."""
    lock_path = path + ".owner"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise sqlite_error(path, exc) from exc
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        # Closing any descriptor of a file drops this process's POSIX locks on
        # it; we hold none on this one, so closing is safe.
        os.close(fd)
        raise JournalLockedError(path, f"owned by a live process (pid {owner}); one pool at a time") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class JournalWriter:
    """The owner's side of a journal: records jobs through one group-committing thread.

    Every method is thread-safe and returns without waiting for the disk,
    except ``flush``/``close`` (they wait by design) and ``accept`` when
    ``MAX_QUEUED`` records are already waiting (backpressure: it blocks until
    the writer has taken them). Build with ``JournalWriter.open``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     writer = JournalWriter.open(os.path.join(d, "jobs.db"))
        ...     _ = writer.accept("job-1", abs, (-2,), None, key=None, priority=1, timeout=None, retry=None)
        ...     writer.running(["job-1"])
        ...     writer.done_many(["job-1"], [2])
        ...     writer.flush(timeout=10)
        ...     writer.lookup("job-1").result()
        ...     writer.close()
        2
    """

    def __init__(self, path: str, conn: sqlite3.Connection, lock_fd: int, *, results: bool, clock: Any) -> None:
        self.path = path
        self._conn = conn  # used by the writer thread only
        self._reader = connect(path, create=False)  # lookup / unfinished, under _read_lock
        self._read_lock = threading.Lock()
        self._lock_fd = lock_fd
        self._results = results
        self._clock: Callable[[], float] = clock
        try:
            self._session = self._new_session()
        except BaseException:
            self._reader.close()
            raise
        self._fn_cache: dict[Any, tuple[bytes, bytes]] = {}
        self._retry_cache: dict[Any, tuple[bytes, bytes]] = {}
        # One lock for the record list and the counters; three conditions on
        # it: the writer waits for work, accept for room, flush for commits.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._committed_cond = threading.Condition(self._lock)
        self._records: list[tuple[Any, ...]] = []  # (kind, ...): see journal_store.write_batch
        self._seq = 0  # records queued so far
        self._committed = 0  # records handled by the writer (committed, or lost to an error)
        # Monotonic times of the oldest record being written, and of the oldest still queued.
        self._inflight_since: float | None = None
        self._queued_since: float | None = None
        # Jobs with uncommitted records: id -> the seq of its last record, or
        # the INSERT record while that is the last one, so lookup sees them. Two
        # generations: records still queued, and those the writer is writing;
        # a commit drops the second whole (no per-record cleanup on the writer).
        self._pending: dict[str, int | tuple[Any, ...]] = {}
        self._writing: dict[str, int | tuple[Any, ...]] = {}
        self._error: tuple[int, JournalError] | None = None  # first unreported (batch's first seq, error)
        self._commits = 0
        self._rate = (time.monotonic(), 0, 0.0)  # bucket start, commits in it, last full bucket's rate
        self._closed = self._stopping = self._dead = self._recovered = False
        self._released = threading.Event()  # close() is over: last writes in, ownership released
        self._before_commit: Callable[[], None] | None = None  # test hook, run on the writer thread
        self._thread = threading.Thread(target=self._run, name="batchpool-journal", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, sync: str = "normal", results: bool = True,
             clock: Callable[[], float] = time.time) -> JournalWriter:  # fmt: skip
        """Open (or create) the journal at ``path`` and become its one owner.

        Args:
            path: the SQLite file; ``PATH.owner`` beside it holds the lock.
            sync: "normal" (a power loss may lose the last commits; a process
                crash loses nothing committed) or "full" (fsync at every commit).
            results: keep results and exceptions.
            clock: wall clock for the recorded times.

        Raises:
            ValueError: ``sync`` is not "normal" or "full" (named ``journal_sync``).
            JournalLockedError: a live pool, here or in another process, owns it.
            NotAJournalError, JournalCorruptError, JournalReadOnlyError, JournalError.

        Example:
            >>> JournalWriter.open("jobs.db", sync="fast")
            Traceback (most recent call last):
            ValueError: journal_sync must be 'normal' or 'full', got 'fast'
        """
        if sync not in ("normal", "full"):
            raise ValueError(f"journal_sync must be 'normal' or 'full', got {sync!r}")
        if not isinstance(results, bool):
            raise TypeError(f"journal_results must be a bool, got {results!r}")
        name = os.fspath(path)
        real = os.path.realpath(name)
        with _REGISTRY_LOCK:
            if real in _REGISTRY:
                raise JournalLockedError(name, "already open by a pool in this process; one pool at a time")
            fd = _take_lock(real)
            try:
                conn = connect(real, create=True)
                try:
                    conn.execute(f"PRAGMA synchronous = {sync.upper()}")
                    conn.execute("PRAGMA journal_size_limit = 16777216")  # the WAL shrinks back after a burst
                    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                        raise JournalCorruptError(name, "PRAGMA quick_check found damage")
                    upgrade(conn)  # a version 1 file becomes version 2
                    writer = cls(name, conn, fd, results=results, clock=clock)
                except BaseException:
                    conn.close()
                    raise
            except sqlite3.Error as exc:
                os.close(fd)  # drops the lock
                raise sqlite_error(name, exc) from exc
            except BaseException:
                os.close(fd)
                raise
            _REGISTRY[real] = writer
        return writer

    def _new_session(self) -> int:
        with self._read_lock:
            self._reader.execute("BEGIN IMMEDIATE")
            self._reader.execute("UPDATE bp_journal_meta SET value = value + 1 WHERE name = 'sessions'")
            (session,) = self._reader.execute("SELECT value FROM bp_journal_meta WHERE name = 'sessions'").fetchone()
            self._reader.execute("COMMIT")
        return int(session)

    # -- recording -----------------------------------------------------------

    def accept(self, job_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
               key: str | None = None, priority: int = 1, timeout: float | None = None, retry: object | None = None,
               attempts: int = 0, digest: bool = True) -> bytes | None:  # fmt: skip
        """Record a new job (state "queued"), pickling its call here, in the caller's thread.

        Arguments may be given by position (the executor does: a call with
        keywords costs more, once per submit). Blocks only while
        ``MAX_QUEUED`` records wait for the writer. Submitting
        an existing id again replaces its row (a redrive); the executor
        compares ``lookup(job_id).digest`` first.

        Returns:
            The digest of the pickled callable and arguments (None with
            ``digest=False``: a generated id, that nothing compares with).

        Raises:
            Exception: whatever pickling the callable or arguments raised, at once.
            JournalError: the writer is closed.
        """
        # Checked here, not found by SQLite: a record it cannot bind would
        # fail its whole batch, other jobs' records included.
        if job_id.__class__ is not str and not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        try:
            hit = self._fn_cache.get(fn)  # _pickle_callable's cache, read here first (once per submit)
        except TypeError:  # unhashable
            hit = None
        fn_bytes, fn_digest = self._pickle_callable(fn) if hit is None else hit
        call = dumps((args, kwargs or None))
        extra = retry_bytes = None
        if key is not None or timeout is not None or retry is not None:
            if key is not None and not isinstance(key, str):
                raise TypeError(f"key must be a str or None, got {key!r}")
            retry_bytes, retry_digest = (None, None) if retry is None else self._pickle_retry(retry)
            extra = (key, None if timeout is None else float(timeout), retry_digest)
        # One flat tuple of str, bytes and numbers: the garbage collector stops
        # tracking it, and the queue holds no other object per job (a queue of
        # 100,000 jobs would otherwise make every full collection slower).
        if priority.__class__ is not int:
            priority = int(priority)  # a Priority: an int the collector need not track
        record = (INSERT, job_id, "queued", fn_digest, call, priority, int(attempts), self._session,
                  self._clock(), None, None, None, 0, extra, fn_bytes, retry_bytes)  # fmt: skip
        with self._lock:
            if len(self._records) >= MAX_QUEUED or self._closed or self._dead:
                while len(self._records) >= MAX_QUEUED and not (self._closed or self._dead):
                    self._room.wait()
                self._check_open()
            self._seq += 1
            if not self._records:
                self._queued_since = time.monotonic()
                self._work.notify()
            self._records.append(record)
            self._pending[job_id] = record
        return call_digest(fn_digest, call) if digest else None

    def digest(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> bytes:
        """The digest ``accept`` would return for this call, without recording anything.

        For the duplicate-id check: ``lookup(job_id).digest != digest(...)``
        means the id was used for another call (``DuplicateJobError``).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, JournalWriter.open(os.path.join(d, "jobs.db")) as writer:
            ...     kept = writer.accept("a", abs, (-1,), None)
            ...     writer.digest(abs, (-1,)) == kept, writer.digest(abs, (-2,)) == kept
            (True, False)
        """
        _, fn_digest = self._pickle_callable(fn)
        return call_digest(fn_digest, dumps((args, kwargs or None)))

    def running(self, job_ids: list[str]) -> None:
        """Record that these jobs started (state "running", started time): one record for them all."""
        for job_id in job_ids:
            if job_id.__class__ is not str and not isinstance(job_id, str):
                raise TypeError(f"job_id must be a str, got {job_id!r}")
        # Not in _pending: lookup() may still answer "queued" from the insert
        # until the commit; a job that has not finished is not done either way.
        with self._lock:
            self._append((RUNNING, self._clock(), job_ids), None)

    def done(self, job_id: str, value: object) -> None:
        """Record success; ``value`` is pickled later, on the writer thread (unpicklable: result not kept)."""
        with self._lock:
            self._append((DONE, self._clock(), [job_id], [value]), job_id)

    def done_many(self, job_ids: list[str], values: list[object]) -> None:
        """Record the success of several jobs, ``values[i]`` the result of ``job_ids[i]`` (one record for all).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d, JournalWriter.open(os.path.join(d, "jobs.db")) as writer:
            ...     for job_id in ("a", "b"):
            ...         _ = writer.accept(job_id, abs, (-1,))
            ...     writer.done_many(["a", "b"], [1, None])
            ...     writer.flush(timeout=10)
            ...     writer.lookup("a").result(), writer.lookup("b").result()
            (1, None)
        """
        if len(job_ids) != len(values):
            raise ValueError(f"{len(job_ids)} job ids for {len(values)} values")
        # Two lists, not a tuple per job: fewer objects for the collector.
        record = (DONE, self._clock(), job_ids, values)
        with self._lock:
            self._append(record, None)
            self._pending.update(dict.fromkeys(job_ids, self._seq))  # lookup waits for this record

    def failed(self, job_id: str, exc: BaseException, attempts: int) -> None:
        """Record a final failure: type, message, remote traceback text, the pickled exception if kept."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception, got {exc!r}")
        with self._lock:
            self._append((FAILED, job_id, exc, int(attempts), self._clock()), job_id)

    def retrying(self, job_id: str, attempts: int) -> None:
        """Record that a failed attempt will be retried: back to "queued" with ``attempts``."""
        with self._lock:
            self._append((RETRYING, job_id, int(attempts)), job_id)

    def cancelled(self, job_id: str) -> None:
        """Record a cancel by the user (``future.cancel()``); shutdown's cut-offs are not recorded."""
        with self._lock:
            self._append((CANCELLED, job_id, self._clock()), job_id)

    def _check_open(self) -> None:
        # Called with self._lock held.
        if self._closed:
            raise JournalError(self.path, "the journal is closed")
        if self._dead:
            raise JournalError(self.path, "the journal's writer thread has stopped; see the log")

    def _append(self, record: tuple[Any, ...], job_id: str | None) -> None:
        # Called with self._lock held.
        if job_id is not None and not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {job_id!r}")
        self._check_open()
        self._seq += 1
        if not self._records:
            self._queued_since = time.monotonic()
            self._work.notify()
        self._records.append(record)
        if job_id is not None:
            self._pending[job_id] = self._seq

    def _pickle_callable(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        # Functions, builtins and classes are pickled once while cached: they
        # go by reference (or, from __main__, by value as the transport sends
        # them once per worker). Other callables (partials, instances) may
        # change between submits, so each submit pickles its own.
        try:
            hit = self._fn_cache.get(fn)  # only cacheable kinds are ever stored
        except TypeError:  # unhashable
            hit = None
        if hit is not None:
            return hit
        cacheable = isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type))
        data = dumps_callable(fn)
        entry = (data, hashlib.blake2b(data, digest_size=16).digest())
        if cacheable:
            if len(self._fn_cache) >= _CACHE_SIZE:
                self._fn_cache.clear()  # races with another thread's get are harmless: a miss
            self._fn_cache[fn] = entry
        return entry

    def _pickle_retry(self, retry: object) -> tuple[bytes, bytes]:
        # Stored once per file, by digest, like callables: a RetryPolicy
        # pickles to about 4 KB (its random source comes along).
        try:
            hit = self._retry_cache.get(retry)  # RetryPolicy is frozen: safe to cache
        except TypeError:  # unhashable
            data = dumps(retry)
            return data, hashlib.blake2b(data, digest_size=16).digest()
        if hit is None:
            data = dumps(retry)
            hit = (data, hashlib.blake2b(data, digest_size=16).digest())
            if len(self._retry_cache) >= _CACHE_SIZE:
                self._retry_cache.clear()
            self._retry_cache[retry] = hit
        return hit

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._records and not self._stopping:
                        self._work.wait()
                    if not self._records:
                        return  # stopping, and everything queued is written
                    # Take everything: the records that queued during the last
                    # commit share the next one (group commit).
                    records, self._records = self._records, []
                    self._writing, self._pending = self._pending, {}
                    upto = self._seq
                    self._inflight_since, self._queued_since = self._queued_since, None
                    self._room.notify_all()
                error = self._write(records)
                taken = len(records)
                with self._lock:
                    self._committed = upto
                    self._inflight_since = None
                    if error is not None and self._error is None:
                        self._error = (upto - taken + 1, error)
                    written, self._writing = self._writing, {}  # every record in it is committed (or lost)
                    self._committed_cond.notify_all()
                # Freed here, not under the lock: a batch is up to MAX_QUEUED
                # records, and freeing them takes milliseconds that submit
                # would otherwise spend waiting for the lock.
                del records, written
        finally:
            with self._lock:
                self._dead = True
                self._committed_cond.notify_all()
                self._room.notify_all()

    def _write(self, records: list[tuple[Any, ...]]) -> JournalError | None:
        """Write ``records`` in one transaction; on failure roll back, log, and return the error."""
        if self._before_commit is not None:
            self._before_commit()
        conn = self._conn
        try:
            # IMMEDIATE: take the write lock first (waiting out a reader's
            # prune through busy_timeout) rather than upgrade a read snapshot
            # that a commit elsewhere may have made stale.
            conn.execute("BEGIN IMMEDIATE")
            write_batch(conn, records, keep=self._results)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.debug("journal %s: rollback failed", self.path, exc_info=True)
            error = sqlite_error(self.path, exc)
            log.error("journal %s: %d records were not written: %s", self.path, len(records), error)
            return error
        self._count_commit()
        return None

    def _count_commit(self) -> None:
        now = time.monotonic()
        start, count, rate = self._rate
        if now - start >= 1.0:
            self._rate = (now, 1, count / (now - start))
        else:
            self._rate = (start, count + 1, rate)
        self._commits += 1

    def _run_on_writer(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn(connection)`` on the writer thread, inside its next transaction (tests)."""
        with self._lock:
            self._append((CALL, fn), None)

    # -- waiting and reading -------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record queued before the call is committed: the durability point.

        Raises:
            TimeoutError: not committed within ``timeout`` seconds.
            JournalError: some of those records could not be written (for
                example ``JournalFullError``); reported once, and logged when it
                happened. Records committed earlier are not affected.
        """
        with self._lock:
            target = self._seq
            ok = self._committed_cond.wait_for(lambda: self._committed >= target or self._dead, timeout)
            if not ok:
                raise TimeoutError(
                    f"journal {self.path}: {target - self._committed} records not committed after {timeout} s"
                )
            if self._committed < target:
                raise JournalError(self.path, "the writer thread has stopped")
            if self._error is not None and self._error[0] <= target:
                error, self._error = self._error[1], None
                raise error

    def lookup(self, job_id: str) -> StoredJob | None:
        """The job as recorded, including records this writer has not committed yet; None if unknown."""
        with self._lock:
            entry = self._pending.get(job_id) or self._writing.get(job_id)
        if isinstance(entry, tuple):  # inserted, not committed, not finished yet
            key = None if entry[13] is None else entry[13][0]
            return StoredJob(job_id, "queued", call_digest(entry[3], entry[4]), entry[6], 0, key, entry[5],
                             entry[8], None, None, None, None, None, False)  # fmt: skip
        if entry is not None:
            seq = entry
            with self._lock:
                self._committed_cond.wait_for(lambda: self._committed >= seq or self._dead)
        with self._read_lock:
            row = self._reader.execute(f"SELECT {JOB_COLUMNS} FROM bp_jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else StoredJob.from_row(row)

    @property
    def lag(self) -> tuple[int, float]:
        """(records queued but not committed, seconds since the oldest of them was queued)."""
        with self._lock:
            oldest = self._queued_since if self._inflight_since is None else self._inflight_since
            return self._seq - self._committed, 0.0 if oldest is None else time.monotonic() - oldest

    @property
    def commits(self) -> int:
        """Transactions committed since open."""
        return self._commits

    @property
    def commits_per_second(self) -> float:
        """Commits in the last full second (the current one if the writer was idle since)."""
        start, count, rate = self._rate
        elapsed = time.monotonic() - start
        return count / elapsed if elapsed >= 1.0 else rate

    # -- recovery and closing ------------------------------------------------

    def unfinished(self, *, include_failed: bool = False) -> list[RecoveredJob]:
        """Claim the jobs previous owners left unfinished; call once, right after ``open``.

        Queued jobs come back as they were. A job found "running" was cut off
        by its owner's death: it is charged an attempt and a crash; at
        ``POISON_CRASHES`` crashes in a row, or with no attempts left under its
        retry policy's ``max_attempts``, it is failed in the journal with a
        ``PoisonJobError`` and returned with ``poison=True``. With
        ``include_failed``, failed jobs are requeued too, with a fresh attempt
        count (a redrive). Jobs accepted by this writer are never returned.
        Delivery is at least once: a job that was running may run again.

        Returns:
            The jobs in dispatch order (priority, then age), each now owned
            by this writer: the executor runs them (or fails those with an
            ``error``) and reports their transitions, without ``accept``.
        """
        with self._lock:
            if self._recovered:
                raise RuntimeError("unfinished() may be called only once per open journal")
            self._recovered = True
        with self._read_lock:
            return claim_unfinished(
                self._reader, self._session, include_failed=include_failed, now=self._clock(), path=self.path
            )

    def close(self) -> None:
        """Write everything queued, stop the writer thread, release ownership. Idempotent.

        Errors of the last writes are logged, not raised: call ``flush`` first to hear them.
        """
        with self._lock:
            if self._closed:
                closing = self._thread
            else:
                closing = None
                self._closed = self._stopping = True
                self._work.notify()
                self._room.notify_all()
        if closing is not None:
            # Closed (or being closed) by another thread: return only once
            # its last writes are in, as a first close would.
            if closing is not threading.current_thread():
                closing.join()
            self._released.wait()
            return
        if threading.current_thread() is not self._thread:
            self._thread.join()
        try:
            self._conn.close()
            with self._read_lock:
                self._reader.close()
        finally:
            try:
                with _REGISTRY_LOCK:
                    os.close(self._lock_fd)  # drops the POSIX lock; the file stays (see _take_lock)
                    real = os.path.realpath(self.path)
                    if _REGISTRY.get(real) is self:
                        del _REGISTRY[real]
            finally:
                self._released.set()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
