"""The journal's file: schema, opening and checking, SQL for each record, recovery.

One responsibility: what is in the SQLite file and how rows are written and
read. No threads here: ``journal.JournalWriter`` calls these from its writer
thread, ``journal_report.Journal`` from any. Imports from batchpool only
``errors`` and ``serialization``. Recovery is in ``journal_recover``. Schema (``SCHEMA_VERSION`` 1; other features
may add tables of their own to the same file, prefixed differently)::

    bp_journal_meta(name PRIMARY KEY, value)   magic, version, sessions (opens so far)
    bp_blobs(digest PRIMARY KEY, data)          each pickled callable and retry policy once
    bp_jobs(job_id PRIMARY KEY, state, fn_digest, call, digest, key, priority,
            timeout, retry_digest, attempts, crashes, session, created, started,
            finished, result, result_kept, error_type, error_message,
            error_traceback, exception)         index (state, finished)

``call`` is the pickled ``(args, kwargs)``; ``digest`` a hash of the pickled
callable and call (equal calls, equal digests); ``session`` the number of the
writer's open that owns the row; ``crashes`` the owner deaths in a row with
the job running. The file is created with ``auto_vacuum=INCREMENTAL`` and
in WAL mode, so readers never block the writer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sqlite3
import traceback
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .errors import (
    JournalCorruptError,
    JournalError,
    JournalFullError,
    JournalReadOnlyError,
    NotAJournalError,
    ResultNotKeptError,
)
from .serialization import dumps, loads

__all__ = [
    "JOB_COLUMNS",
    "CALL",
    "CANCELLED",
    "DONE",
    "FAILED",
    "INSERT",
    "RETRYING",
    "RUNNING",
    "MAGIC",
    "SCHEMA_VERSION",
    "STATES",
    "StoredJob",
    "connect",
    "error_fields",
    "sqlite_error",
    "record_job_id",
    "write_batch",
]

log = logging.getLogger("batchpool")

MAGIC = "batchpool-journal"
SCHEMA_VERSION = 1
STATES = ("queued", "running", "done", "failed", "cancelled")
_SCHEMA = """
CREATE TABLE bp_journal_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bp_blobs (digest BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE bp_jobs (
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, fn_digest BLOB NOT NULL, call BLOB NOT NULL,
    digest BLOB NOT NULL, key TEXT, priority INTEGER NOT NULL, timeout REAL, retry_digest BLOB,
    attempts INTEGER NOT NULL, crashes INTEGER NOT NULL DEFAULT 0, session INTEGER NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, result BLOB,
    result_kept INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT,
    error_traceback TEXT, exception BLOB);
CREATE INDEX bp_jobs_by_state ON bp_jobs (state, finished);
"""
JOB_COLUMNS = (
    "job_id, state, digest, attempts, crashes, key, priority, created, started, finished, "
    "error_type, error_message, error_traceback, result_kept, result, exception"
)
# Kinds of record, in the order a job's life goes (the writer keeps them in one
# list, so a job's records reach the file in the order they were made).
INSERT, RUNNING, DONE, FAILED, RETRYING, CANCELLED, CALL = range(7)

# SQLite primary result codes (the low byte of an extended code).
_CODES: dict[int, type[JournalError]] = {
    26: NotAJournalError,  # SQLITE_NOTADB
    11: JournalCorruptError,  # SQLITE_CORRUPT
    13: JournalFullError,  # SQLITE_FULL
    8: JournalReadOnlyError,  # SQLITE_READONLY
    3: JournalReadOnlyError,  # SQLITE_PERM
}
_WORDS = {  # Python 3.10's sqlite3 errors carry no code: their standard messages
    "file is not a database": NotAJournalError,
    "disk image is malformed": JournalCorruptError,
    "database or disk is full": JournalFullError,
    "readonly database": JournalReadOnlyError,
}


def sqlite_error(path: str, exc: BaseException) -> JournalError:
    """Translate a sqlite3 or OS error into the matching ``JournalError``.

    Example:
        >>> type(sqlite_error("jobs.db", sqlite3.DatabaseError("file is not a database"))).__name__
        'NotAJournalError'
    """
    if isinstance(exc, JournalError):
        return exc
    kind: type[JournalError] = JournalError
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EROFS:
        kind = JournalReadOnlyError
    elif getattr(exc, "errno", None) == errno.ENOSPC:
        kind = JournalFullError
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int) and code & 0xFF in _CODES:
        kind = _CODES[code & 0xFF]
    elif kind is JournalError:
        text = str(exc).lower()
        kind = next((k for word, k in _WORDS.items() if word in text), JournalError)
    if getattr(exc, "sqlite_errorname", None) == "SQLITE_READONLY_DIRECTORY":
        return kind(path, "its directory is not writable (SQLite creates PATH-wal and PATH-shm beside the file)")
    return kind(path, str(exc))


def connect(path: str, *, create: bool) -> sqlite3.Connection:
    """Open ``path`` and check it is a batchpool journal (creating one if ``create``).

    In autocommit mode: callers write ``BEGIN``/``COMMIT`` themselves.

    Raises:
        NotAJournalError: not SQLite, or no batchpool meta table/magic, or a newer schema.
        JournalError: the others (see ``sqlite_error``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     conn = connect(os.path.join(d, "jobs.db"), create=True)
        ...     conn.execute("SELECT count(*) FROM bp_jobs").fetchone()[0]
        ...     conn.close()
        0
    """
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    if not exists and not create:
        raise NotAJournalError(path, "no such file")
    try:
        # A URI, so that a reader never creates a missing file; quoted, for names with "?" or "#".
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except (sqlite3.Error, OSError) as exc:
        raise sqlite_error(path, exc) from exc
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if not exists:
            # auto_vacuum must be chosen before the first table exists.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":  # some network filesystems: it works, but readers block the writer
                log.warning("journal %s: WAL mode is not available here (journal_mode=%s)", path, mode)
            # One transaction: a crash while creating leaves no file without its magic.
            conn.execute("BEGIN")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO bp_journal_meta VALUES (?, ?)",
                [("magic", MAGIC), ("version", str(SCHEMA_VERSION)), ("sessions", "0")],
            )
            conn.execute("COMMIT")
        meta = dict(conn.execute("SELECT name, value FROM bp_journal_meta WHERE name IN ('magic', 'version')"))
    except (sqlite3.Error, OSError) as exc:
        conn.close()
        error = sqlite_error(path, exc)
        if "no such table" in str(exc):
            error = NotAJournalError(path, "a SQLite database, but not a batchpool journal")
        raise error from exc
    if meta.get("magic") != MAGIC:
        conn.close()
        raise NotAJournalError(path, "a SQLite database, but not a batchpool journal")
    if meta.get("version") != str(SCHEMA_VERSION):
        conn.close()
        found = meta.get("version")
        raise NotAJournalError(path, f"journal schema version {found}; this batchpool reads {SCHEMA_VERSION}")
    return conn


@dataclass(frozen=True)
class StoredJob:
    """One job as the journal has it (from ``JournalWriter.lookup`` or ``Journal.get``).

    Attributes:
        job_id: the job's id.
        state: "queued", "running", "done", "failed" or "cancelled".
        digest: hash of the pickled callable and arguments (equal calls, equal digests).
        attempts: attempts charged so far.
        crashes: owner deaths in a row with the job running.
        key, priority: the job's options.
        created, started, finished: wall-clock times (``time.time()``), None if not yet.
        error_type, error_message, error_traceback: a failed job's exception
            (qualified type name, ``str()``, the remote traceback text).
        result_kept: the result (or exception) is stored; see ``result()``.

    Example:
        >>> job = StoredJob("a", "done", b"", 1, 0, None, 1, 0.0, 0.0, 1.0, None, None, None, True, dumps(42))
        >>> job.result()
        42
    """

    job_id: str
    state: str
    digest: bytes
    attempts: int
    crashes: int
    key: str | None
    priority: int
    created: float
    started: float | None
    finished: float | None
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    result_kept: bool
    _result: bytes | None = None
    _exception: bytes | None = None

    def result(self) -> Any:
        """The job's return value, unpickled here (so a reader not needing it never imports its types).

        Raises:
            ResultNotKeptError: the job is not done, or its result was not kept.
        """
        if self.state != "done" or not self.result_kept or self._result is None:
            raise ResultNotKeptError(self.job_id)
        return loads(self._result)

    def exception(self) -> BaseException | None:
        """A failed job's exception if it was kept and unpickles, else None."""
        if self._exception is None:
            return None
        try:
            exc: BaseException = loads(self._exception)
        except Exception:  # noqa: BLE001 - its type may not be importable here
            return None
        return exc

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredJob:
        """Build from a row of ``SELECT <JOB_COLUMNS>``."""
        r = row
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], bool(r[13]),
                   r[14], r[15])  # fmt: skip


# Every column of bp_jobs, in order: a job inserted and finished within one
# commit is written as one full row.
_COLUMNS = (
    "job_id, state, fn_digest, call, digest, key, priority, timeout, retry_digest, attempts, crashes, session, "
    "created, started, finished, result, result_kept, error_type, error_message, error_traceback, exception"
)
_NAMES = _COLUMNS.split(", ")
_STATE, _ATTEMPTS, _CRASHES, _STARTED, _FINISHED, _RESULT, _KEPT = 1, 9, 10, 13, 14, 15, 16
_ON_CONFLICT = (
    # The same id again (a redrive, or a resubmit the executor allowed) starts afresh.
    "ON CONFLICT (job_id) DO UPDATE SET " + ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS.split(", ")[1:])
)
_ROW = f"({', '.join('?' * 21)})"
_UPSERT_JOB = f"INSERT INTO bp_jobs ({_COLUMNS}) VALUES {_ROW} {_ON_CONFLICT}"
#: Rows per multi-row INSERT: 47 x 21 columns stays under SQLite's oldest limit of 999 variables.
_ROWS_PER_INSERT = 47
_UPSERT_JOBS = f"INSERT INTO bp_jobs ({_COLUMNS}) VALUES {', '.join([_ROW] * _ROWS_PER_INSERT)} {_ON_CONFLICT}"


def record_job_id(kind: int, payload: Any) -> str | None:
    """The job a queued record is about (None for a CALL).

    Example:
        >>> record_job_id(RUNNING, (1.0, "a")), record_job_id(CALL, print)
        ('a', None)
    """
    if kind == CALL:
        return None
    job_id: str = payload[0] if kind in (INSERT, DONE, FAILED) else payload[-1]
    return job_id


def write_batch(conn: sqlite3.Connection, records: list[tuple[int, Any]], *, keep: bool) -> None:
    """Write queued records inside the caller's transaction; ``keep``: keep results and exceptions.

    Records are ``(kind, payload)`` as ``journal.JournalWriter`` queues them:
    INSERT (job_id, fn_digest, call, digest, key, priority, timeout,
    retry_digest, attempts, session, created, fn_bytes, retry_bytes); DONE (job_id, value, finished);
    FAILED (job_id, exc, attempts, finished); RUNNING/CANCELLED (time,
    job_id); RETRYING (attempts, job_id); CALL a callable taking the
    connection (tests), run before anything is written.

    A job inserted by this batch gets its later records folded into its row,
    so a job accepted and finished between two commits costs one row write,
    not three: under load, that is most jobs. The transaction hides the
    intermediate states anyway. The records of jobs inserted by an earlier
    commit are folded the same way, into one UPDATE per job (of the columns
    they set), and run first; an insert never has to follow one of them (a
    record after an insert of the same job is folded into it).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     conn = connect(os.path.join(d, "jobs.db"), create=True)
        ...     row = ("a", b"f", dumps(((1,), None)), b"d", None, 1, None, None, 0, 1, 0.0, dumps(abs), None)
        ...     write_batch(conn, [(INSERT, row), (RUNNING, (1.0, "a")), (DONE, ("a", 1, 2.0))], keep=True)
        ...     conn.execute("SELECT state, started, finished FROM bp_jobs").fetchall()
        [('done', 1.0, 2.0)]
    """
    fresh: dict[str, list[Any]] = {}  # jobs inserted by this batch: their full rows
    blobs: dict[bytes, bytes] = {}  # pickled callables and retry policies, by digest
    changes: dict[str, dict[int, Any]] = {}  # other jobs: column index -> value their records set, in order
    # The hot loop of the writer thread (three records per job under load):
    # record_job_id and the common folds are written out inline.
    for kind, payload in records:
        if kind == INSERT:
            blobs[payload[1]] = payload[11]
            if payload[7] is not None:
                blobs[payload[7]] = payload[12]
            job_id, fn_digest, call, digest, key, priority, timeout, retry, attempts, session, created = payload[:11]
            fresh[job_id] = [job_id, "queued", fn_digest, call, digest, key, priority, timeout, retry, attempts, 0,
                             session, created, None, None, None, 0, None, None, None, None]  # fmt: skip
        elif kind == CALL:
            payload(conn)
        else:
            job_id = payload[0] if kind == DONE or kind == FAILED else payload[-1]
            row: list[Any] | dict[int, Any] | None = fresh.get(job_id)
            if row is None:  # inserted by an earlier commit: its changes become one UPDATE
                row = changes.get(job_id)
                if row is None:
                    row = changes[job_id] = {}
            if kind == RUNNING:
                row[_STATE], row[_STARTED] = "running", payload[0]
            else:
                _fold(row, kind, payload, keep)
    # One UPDATE per job, whatever number of records it had (running then
    # done, most often), grouped by the columns set: one executemany each.
    groups: dict[tuple[int, ...], list[list[Any]]] = {}
    for job_id, columns in changes.items():
        names = tuple(sorted(columns))
        values = [columns[i] for i in names]
        values.append(job_id)
        groups.setdefault(names, []).append(values)
    for names, rows in groups.items():
        assignments = ", ".join(f"{_NAMES[i]} = ?" for i in names)
        conn.executemany(f"UPDATE bp_jobs SET {assignments} WHERE job_id = ?", rows)
    if fresh:
        # The blobs go in with their jobs, in the same transaction, not once
        # per writer: a concurrent prune may have removed an unused one.
        conn.executemany("INSERT OR IGNORE INTO bp_blobs VALUES (?, ?)", blobs.items())
        rows = list(fresh.values())
        whole = len(rows) - len(rows) % _ROWS_PER_INSERT
        # Many rows per statement: one step (and one GIL round trip) per
        # _ROWS_PER_INSERT jobs instead of one per job (measured: ~12% less CPU).
        for start in range(0, whole, _ROWS_PER_INSERT):
            conn.execute(_UPSERT_JOBS, list(itertools.chain.from_iterable(rows[start : start + _ROWS_PER_INSERT])))
        conn.executemany(_UPSERT_JOB, rows[whole:])


def _fold(row: list[Any] | dict[int, Any], kind: int, payload: Any, keep: bool) -> None:
    """Apply a record to a job's full row (inserted in this batch) or to its pending UPDATE's columns."""
    if kind == RUNNING:
        row[_STATE], row[_STARTED] = "running", payload[0]
    elif kind == DONE:
        data, kept, finished, _ = _done_row(*payload, keep=keep)
        row[_STATE], row[_RESULT], row[_KEPT], row[_FINISHED], row[_CRASHES] = "done", data, kept, finished, 0
    elif kind == FAILED:
        fields = _failed_row(*payload, keep=keep)
        row[17], row[18], row[19], row[20] = fields[:4]  # error type, message, traceback, exception
        row[_STATE], row[_ATTEMPTS], row[_FINISHED], row[_CRASHES] = "failed", *fields[4:6], 0
    elif kind == RETRYING:
        row[_STATE], row[_ATTEMPTS], row[_CRASHES], row[_STARTED] = "queued", payload[0], 0, None
    elif kind == CANCELLED:
        row[_STATE], row[_FINISHED] = "cancelled", payload[0]


def _done_row(job_id: str, value: object, now: float, *, keep: bool) -> tuple[Any, ...]:
    data = None
    if keep:
        try:
            data = dumps(value)
        except Exception:  # noqa: BLE001 - recorded as "done, result not kept"
            data = None
    return (data, data is not None, now, job_id)


def error_fields(exc: BaseException) -> tuple[str, str, str | None]:
    """(qualified type name, message, traceback text) of an exception, for the journal.

    The traceback is the worker's (the ``tb`` text of a ``RemoteTraceback``
    cause) when there is one, else the exception's own, else None.

    Example:
        >>> error_fields(KeyError("k"))
        ('KeyError', "'k'", None)
    """
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
        message = f"<{name}: str() failed>"
    remote = getattr(exc.__cause__, "tb", None)
    if isinstance(remote, str):
        return name, message, remote
    if exc.__traceback__ is not None:
        return name, message, "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return name, message, None


def _failed_row(job_id: str, exc: BaseException, attempts: int, now: float, *, keep: bool) -> tuple[Any, ...]:
    data = None
    if keep:
        try:
            data = dumps(exc)
        except Exception:  # noqa: BLE001 - type, message and traceback are kept anyway
            data = None
    return (*error_fields(exc), data, attempts, now, job_id)
