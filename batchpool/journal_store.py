"""The journal's file: schema, opening and checking, SQL for each record, recovery.

One responsibility: what is in the SQLite file and how rows are written and
read. No threads here: ``journal.JournalWriter`` calls these from its writer
thread, ``journal_report.Journal`` from any. Imports from batchpool only
``errors`` and ``serialization``. Recovery is in ``journal_recover``. Schema (``SCHEMA_VERSION`` 2; other features
may add tables of their own to the same file, prefixed differently)::

    bp_journal_meta(name PRIMARY KEY, value)   magic, version, sessions (opens so far)
    bp_blobs(digest PRIMARY KEY, data)          each pickled callable and retry policy once
    bp_jobs(job_id PRIMARY KEY, state, fn_digest, call, key, priority,
            timeout, retry_digest, attempts, crashes, session, created, started,
            finished, result, result_kept, error_type, error_message,
            error_traceback, exception)         index (state, finished) of the jobs not done

``call`` is the pickled ``(args, kwargs)``; a job's digest (``call_digest``)
hashes its pickled callable and call (equal calls, equal digests), computed
when read, not stored; version 1 stored it, and indexed every job by state
(``upgrade`` converts, readers read both); ``session`` the number of the
writer's open that owns the row; ``crashes`` the owner deaths in a row with
the job running. The file is created with ``auto_vacuum=INCREMENTAL`` and
in WAL mode, so readers never block the writer.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import time
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
    "OPEN",
    "call_digest",
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
    "insert_record",
    "upgrade",
    "write_batch",
]

log = logging.getLogger("batchpool")

MAGIC = "batchpool-journal"
SCHEMA_VERSION = 2
STATES = ("queued", "running", "done", "failed", "cancelled")
_SCHEMA = """
CREATE TABLE bp_journal_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bp_blobs (digest BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE bp_jobs ({jobs});
CREATE INDEX bp_jobs_open ON bp_jobs (state, finished) WHERE state != 'done';
"""
_JOBS = """
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, fn_digest BLOB NOT NULL, call BLOB NOT NULL,
    key TEXT, priority INTEGER NOT NULL, timeout REAL, retry_digest BLOB,
    attempts INTEGER NOT NULL, crashes INTEGER NOT NULL DEFAULT 0, session INTEGER NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, result BLOB,
    result_kept INTEGER NOT NULL DEFAULT 0, error_type TEXT, error_message TEXT,
    error_traceback TEXT, exception BLOB"""
#: What ``StoredJob.from_row`` reads (the digest is computed from fn_digest and call).
JOB_COLUMNS = (
    "job_id, state, fn_digest, attempts, crashes, key, priority, created, started, finished, "
    "error_type, error_message, error_traceback, result_kept, result, exception, call"
)
#: Not the jobs that are done (most of them): recovery and failed() read only the others.
#: A query uses this index only when its WHERE has the term ``state != 'done'`` itself.
OPEN = "state != 'done'"
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
            for statement in _SCHEMA.format(jobs=_JOBS).split(";"):
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
    if meta.get("version") not in (str(SCHEMA_VERSION), "1"):  # upgrade() takes 1 to 2
        conn.close()
        found = meta.get("version")
        raise NotAJournalError(path, f"journal schema version {found}; this batchpool reads {SCHEMA_VERSION}")
    return conn


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a journal of schema version 1 to 2 (the owner does, at open); a no-op on version 2.

    Version 1 kept a ``digest`` column (now computed when read) and indexed
    every job by state (now the jobs not done only). Its rows are copied
    into the new table in one transaction, so a crash leaves either file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     conn = connect(os.path.join(d, "jobs.db"), create=True)
        ...     upgrade(conn)
        ...     conn.execute("SELECT value FROM bp_journal_meta WHERE name = 'version'").fetchone()[0]
        ...     conn.close()
        '2'
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("SELECT value FROM bp_journal_meta WHERE name = 'version'").fetchone()
        if version == "1":
            columns = f"{_NARROW}, {_WIDE}"  # every column but the digest
            conn.execute(f"CREATE TABLE bp_jobs_v2 ({_JOBS})")
            conn.execute(f"INSERT INTO bp_jobs_v2 ({columns}) SELECT {columns} FROM bp_jobs")
            conn.execute("DROP TABLE bp_jobs")  # its index goes with it
            conn.execute("ALTER TABLE bp_jobs_v2 RENAME TO bp_jobs")
            conn.execute(f"CREATE INDEX bp_jobs_open ON bp_jobs (state, finished) WHERE {OPEN}")
            conn.execute("UPDATE bp_journal_meta SET value = ? WHERE name = 'version'", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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
    _result: bytes | int | float | str | None = None
    _exception: bytes | None = None

    def result(self) -> Any:
        """The job's return value, unpickled here (so a reader not needing it never imports its types).

        Raises:
            ResultNotKeptError: the job is not done, or its result was not kept.
        """
        if self.state != "done" or not self.result_kept:
            raise ResultNotKeptError(self.job_id)
        value = self._result
        # A BLOB is a pickle; an int, float, str or NULL was stored as itself (see _result).
        return loads(value) if isinstance(value, bytes) else value

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
        return cls(r[0], r[1], call_digest(r[2], r[16]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
                   r[12], bool(r[13]), r[14], r[15])  # fmt: skip


def call_digest(fn_digest: bytes, call: bytes) -> bytes:
    """The digest of a pickled call: equal callables and arguments, equal digests.

    Example:
        >>> call_digest(b"f", b"a") == call_digest(b"f", b"a") != call_digest(b"f", b"b")
        True
    """
    return hashlib.blake2b(fn_digest + call, digest_size=16).digest()


# The columns every row has a value in (the narrow insert), in the order of a
# queued INSERT record's row, and the rest, mostly NULL (set through ``extra``).
_NARROW = "job_id, state, fn_digest, call, priority, attempts, session, created, started, finished, result, result_kept"
_WIDE = "key, timeout, retry_digest, crashes, error_type, error_message, error_traceback, exception"
_STATE, _ATTEMPTS, _STARTED, _FINISHED, _RESULT, _KEPT = 1, 5, 8, 9, 10, 11
_INDEX = {name: i for i, name in enumerate(_NARROW.split(", "))}
_WIDE_DEFAULTS = dict.fromkeys(_WIDE.split(", "))
_WIDE_DEFAULTS["crashes"] = 0  # NOT NULL: a fresh row has had no crash
#: Rows per multi-row INSERT: 80 x 12 columns stays under SQLite's oldest limit of 999 variables.
_ROWS_PER_INSERT = 80
_ROW = f"({', '.join('?' * 12)})"
# REPLACE: the same id again (a redrive, or a resubmit the executor allowed)
# starts afresh; the columns not listed go back to their defaults.
_INSERT_ROW = f"INSERT OR REPLACE INTO bp_jobs ({_NARROW}) VALUES {_ROW}"
_INSERT_ROWS = f"INSERT OR REPLACE INTO bp_jobs ({_NARROW}) VALUES {', '.join([_ROW] * _ROWS_PER_INSERT)}"
_INSERT_WIDE = f"INSERT OR REPLACE INTO bp_jobs ({_NARROW}, {_WIDE}) VALUES ({', '.join('?' * 20)})"


def insert_record(job_id: str, fn_digest: bytes, call: bytes, priority: int, attempts: int, session: int,
                  created: float, extra: tuple[Any, ...] | None = None, fn_bytes: bytes = b"",
                  retry_bytes: bytes | None = None) -> tuple[Any, ...]:  # fmt: skip
    """The INSERT record of a job just accepted (``JournalWriter.accept`` writes it out inline).

    Its items 1 to 12 are the job's row in ``_NARROW`` order, so the writer
    copies them in one slice; ``extra`` is None or (key, timeout, retry_digest).

    Example:
        >>> insert_record("a", b"f", b"c", 1, 0, 1, 0.0)[1:3]
        ('a', 'queued')
    """
    return (INSERT, job_id, "queued", fn_digest, call, priority, attempts, session, created, None, None, None, 0,
            extra, fn_bytes, retry_bytes)  # fmt: skip


def write_batch(conn: sqlite3.Connection, records: list[tuple[Any, ...]], *, keep: bool) -> None:
    """Write queued records inside the caller's transaction; ``keep``: keep results and exceptions.

    Records are flat tuples, kind first, as ``journal.JournalWriter`` queues
    them: ``insert_record``; (RUNNING, time, [job_id, ...]); (DONE, finished,
    [job_id, ...], [value, ...]); (FAILED, job_id, exc, attempts, finished); (CANCELLED,
    job_id, time); (RETRYING, job_id, attempts); (CALL, a callable taking
    the connection) (tests), run before anything is written.

    A job inserted by this batch gets its later records folded into its row,
    so a job accepted and finished between two commits costs one row write,
    not three: under load, that is most jobs. The transaction hides the
    intermediate states anyway. Such a row is written with the columns that
    have values only (bound parameters are most of an insert's cost). The
    records of jobs inserted by an earlier commit are folded the same way,
    into one UPDATE per job (of the columns they set), and run first; an
    insert never has to follow one of them (a record after an insert of the
    same job is folded into it).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     conn = connect(os.path.join(d, "jobs.db"), create=True)
        ...     insert = insert_record("a", b"f", dumps(((1,), None)), 1, 0, 1, 0.0, None, dumps(abs))
        ...     write_batch(conn, [insert, (RUNNING, 1.0, ["a"]), (DONE, 2.0, ["a"], [1])], keep=True)
        ...     conn.execute("SELECT state, started, finished FROM bp_jobs").fetchall()
        [('done', 1.0, 2.0)]
    """
    # Jobs inserted by this batch: their INSERT records, the times of their
    # RUNNING records and the values of their DONE records (no object
    # per job until the row is written: a list per job alive through a batch
    # of 100,000 would reach the collector's oldest generation, and make the
    # pool's full collections more frequent); a job with any other record
    # gets its row as a list, folded (``_change``).
    fresh: dict[str, tuple[Any, ...]] = {}
    started: dict[str, float] = {}
    done: dict[str, Any] = {}  # their results
    finished: dict[str, float] = {}  # ... and when (a job is done when it is here)
    rows: dict[str, list[Any]] = {}
    wide: dict[str, dict[str, Any]] = {}  # ... and their other columns, when any is set
    # Jobs inserted by an earlier commit with only RUNNING and DONE records
    # (most of them, under load): one multi-row UPDATE for many of them.
    old_started: dict[str, float] = {}
    old_done: dict[str, Any] = {}
    old_finished: dict[str, float] = {}
    blobs: dict[bytes, bytes] = {}  # pickled callables and retry policies, by digest
    changes: dict[str, dict[str, Any]] = {}  # other jobs: column -> value their records set, in order
    # The hot loop of the writer thread (about two records per job under
    # load): the common cases are written out inline. Every _SLICE records
    # it offers the GIL: the pool's manager thread, back from a wait, then
    # takes it at once instead of after a switch interval (5 ms) of this
    # loop, while workers wait for batches (measured: ~15% more journaled
    # submits per second).
    for begin in range(0, len(records), _SLICE):
        if begin:
            time.sleep(0)
        for record in records[begin : begin + _SLICE]:
            kind = record[0]
            if kind == DONE:
                now = record[1]
                for job_id, value in zip(record[2], record[3], strict=True):
                    if job_id in fresh:
                        done[job_id], finished[job_id] = value, now
                    elif job_id in rows:
                        _change(rows[job_id], wide, changes, (DONE, job_id, value, now), keep)
                    elif job_id in changes:
                        _change(None, wide, changes, (DONE, job_id, value, now), keep)
                    else:  # inserted by an earlier commit (under load, the job waited in the lanes meanwhile)
                        old_done[job_id], old_finished[job_id] = value, now
            elif kind == INSERT:
                job_id = record[1]
                if job_id in fresh or job_id in rows:  # the same id again, in the same batch: it starts afresh
                    for pending in (started, done, finished, rows, wide):
                        pending.pop(job_id, None)
                fresh[job_id] = record
                blobs[record[3]] = record[14]
                extra = record[13]
                if extra is not None:
                    if extra[2] is not None:
                        blobs[extra[2]] = record[15]
                    wide[job_id] = {"key": extra[0], "timeout": extra[1], "retry_digest": extra[2]}
            elif kind == RUNNING:
                now = record[1]
                for job_id in record[2]:
                    if job_id in fresh:
                        started[job_id] = now
                    elif job_id in rows:
                        _change(rows[job_id], wide, changes, (RUNNING, job_id, now), keep)
                    elif job_id in changes:
                        _change(None, wide, changes, (RUNNING, job_id, now), keep)
                    else:
                        old_started[job_id] = now
            elif kind == CALL:
                record[1](conn)
            else:
                job_id = record[1]
                row = _row(job_id, fresh, started, done, finished, rows, keep)
                if row is None and (job_id in old_started or job_id in old_finished):
                    # Its earlier records join its UPDATE, in order, before this one.
                    if job_id in old_started:
                        _change(None, wide, changes, (RUNNING, job_id, old_started.pop(job_id)), keep)
                    if job_id in old_finished:
                        when = old_finished.pop(job_id)
                        _change(None, wide, changes, (DONE, job_id, old_done.pop(job_id), when), keep)
                _change(row, wide, changes, record, keep)
    # One UPDATE per job, whatever number of records it had (running then
    # done, most often), grouped by the columns set: one executemany each.
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for job_id, columns in changes.items():
        names = tuple(sorted(columns))
        values = [columns[name] for name in names]
        values.append(job_id)
        groups.setdefault(names, []).append(values)
    for names, update in groups.items():
        assignments = ", ".join(f"{name} = ?" for name in names)
        conn.executemany(f"UPDATE bp_jobs SET {assignments} WHERE job_id = ?", update)
    if old_finished:
        finishing = []
        for job_id, when in old_finished.items():
            value, kept = _result(old_done[job_id], keep)
            finishing.append((job_id, old_started.pop(job_id, None), when, value, kept))
        _update_many(conn, _FINISH, finishing)
    if old_started:
        _update_many(conn, _START, list(old_started.items()))
    if not fresh and not rows:
        return
    # The blobs go in with their jobs, in the same transaction, not once
    # per writer: a concurrent prune may have removed an unused one.
    conn.executemany("INSERT OR IGNORE INTO bp_blobs VALUES (?, ?)", blobs.items())
    # Rows go out _ROWS_PER_INSERT at a time, each in one statement: one
    # step (and one GIL round trip) for them all (measured: ~12% less CPU
    # than one per row); their parameters are made just before.
    slow: list[list[Any]] = []
    for job_id, row in rows.items():  # rows folded as lists: jobs with records other than RUNNING and DONE
        if wide and job_id in wide:
            conn.execute(_INSERT_WIDE, [*row, *{**_WIDE_DEFAULTS, **wide[job_id]}.values()])
        else:
            slow.append(row)
    conn.executemany(_INSERT_ROW, slow)
    params: list[Any] = []
    count = 0
    for job_id, insert in fresh.items():
        start, end = started.get(job_id), finished.get(job_id)
        if end is None:
            state = "queued" if start is None else "running"
            out: tuple[Any, ...] = (job_id, state, insert[3], insert[4], insert[5], insert[6], insert[7], insert[8],
                                    start, None, None, 0)  # fmt: skip
        else:
            value = done[job_id]
            cls = value.__class__
            # _native(value), written out for the common cases (the rest go through _result):
            native = (cls is int and -_INT64 <= value < _INT64) or cls is _NONE or (cls is str and value.isascii())
            if keep and native:
                kept = 1
            else:
                value, kept = _result(value, keep)
            out = (job_id, "done", insert[3], insert[4], insert[5], insert[6], insert[7], insert[8], start, end,
                   value, kept)  # fmt: skip
        if wide and job_id in wide:
            conn.execute(_INSERT_WIDE, [*out, *{**_WIDE_DEFAULTS, **wide[job_id]}.values()])
            continue
        params += out
        count += 1
        if count == _ROWS_PER_INSERT:
            conn.execute(_INSERT_ROWS, params)
            params, count = [], 0
    conn.executemany(_INSERT_ROW, [params[begin : begin + 12] for begin in range(0, len(params), 12)])


def _update_many(conn: sqlite3.Connection, sql: tuple[str, str], rows: list[tuple[Any, ...]]) -> None:
    """Run an UPDATE for many jobs, ``rows`` (job_id, values...): ``sql`` from ``_update_sql``."""
    many, one = sql
    whole = len(rows) - len(rows) % _UPDATE_ROWS if _UPDATE_FROM else 0
    for begin in range(0, whole, _UPDATE_ROWS):
        conn.execute(many, [value for row in rows[begin : begin + _UPDATE_ROWS] for value in row])
    # One step per row here (the GIL released and taken back each time): the remainder only.
    conn.executemany(one, [(*row[1:], row[0]) for row in rows[whole:]])


def _row(job_id: str, fresh: dict[str, tuple[Any, ...]], started: dict[str, float], done: dict[str, Any],
         finished: dict[str, float], rows: dict[str, list[Any]], keep: bool) -> list[Any] | None:  # fmt: skip
    """The folded row of a job inserted by this batch (made from its records so far), or None (an older job)."""
    row = rows.get(job_id)
    if row is not None:
        return row
    insert = fresh.pop(job_id, None)  # from now on a row of its own (written with the other rows)
    if insert is None:
        return None
    row = rows[job_id] = list(insert[1:13])
    start = started.pop(job_id, None)
    if start is not None:
        row[_STATE], row[_STARTED] = "running", start
    end = finished.pop(job_id, None)
    if end is not None:
        row[_RESULT], row[_KEPT] = _result(done.pop(job_id), keep)
        row[_STATE], row[_FINISHED] = "done", end
    return row


def _change(row: list[Any] | None, wide: dict[str, dict[str, Any]], changes: dict[str, dict[str, Any]],
            record: tuple[Any, ...], keep: bool) -> None:  # fmt: skip
    """Fold a record into its job's ``row`` (inserted by this batch, see ``_row``) or its pending UPDATE's columns.

    One job's: RUNNING as (RUNNING, job_id, time), DONE as (DONE, job_id, value, finished), the others as queued.
    """
    kind, job_id = record[0], record[1]
    columns: dict[str, Any] = {}
    if kind == RUNNING:
        current = row[_STATE] if row is not None else changes.get(job_id, {}).get("state")
        if current in _FINAL:
            return  # a late start never reopens a finished job (recover() would run it again)
        columns["state"], columns["started"] = "running", record[2]
    elif kind == DONE:
        data, kept = _result(record[2], keep)
        columns.update(state="done", result=data, result_kept=kept, finished=record[3], crashes=0)
    elif kind == FAILED:
        error_type, message, tb, exception = _failure(record[2], keep)
        columns.update(state="failed", error_type=error_type, error_message=message, error_traceback=tb,
                       exception=exception, attempts=record[3], finished=record[4], crashes=0)  # fmt: skip
    elif kind == RETRYING:
        columns.update(state="queued", attempts=record[2], crashes=0, started=None)
    elif kind == CANCELLED:
        columns["state"], columns["finished"] = "cancelled", record[2]
    if row is None:  # inserted by an earlier commit: its changes become one UPDATE
        changes.setdefault(job_id, {}).update(columns)
        return
    for name, value in columns.items():
        index = _INDEX.get(name)
        if index is not None:
            row[index] = value
        elif name != "crashes" and (value is not None or job_id in wide):  # a fresh row has no crashes
            wide.setdefault(job_id, {})[name] = value


#: Results stored as themselves, not pickled (no pickling on the writer thread,
#: no unpickling to read): exactly these types, and only what SQLite keeps exactly.
_INT64 = 2**63
_NONE = type(None)
#: UPDATE ... FROM (SQLite 3.33): many jobs in one statement, one step. Rows per statement (5 values each).
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
_UPDATE_ROWS = 100


def _update_sql(sets: str, width: int, single: str, unless: tuple[str, ...] = ()) -> tuple[str, str]:
    """(UPDATE of _UPDATE_ROWS jobs from VALUES rows of ``width``: job_id first, the same for one job).

    ``unless``: rows in these states are left as they are.
    """
    rows = ", ".join([f"({', '.join('?' * width)})"] * _UPDATE_ROWS)
    guard = f" AND bp_jobs.state NOT IN ({', '.join(repr(state) for state in unless)})" if unless else ""
    many = f"UPDATE bp_jobs SET {sets} FROM (VALUES {rows}) AS v WHERE bp_jobs.job_id = v.column1{guard}"
    return many, f"UPDATE bp_jobs SET {single} WHERE job_id = ?{guard}"


#: A job inserted by an earlier commit finishing: (job_id, started or None, finished, result, result_kept).
_FINISH = _update_sql(
    "state = 'done', started = coalesce(v.column2, started), finished = v.column3, result = v.column4, "
    "result_kept = v.column5, crashes = 0",
    5,
    "state = 'done', started = coalesce(?, started), finished = ?, result = ?, result_kept = ?, crashes = 0",
)
#: States only a new INSERT (a re-accepted id) or a RETRYING record leaves.
_FINAL = ("done", "failed", "cancelled")
#: ... or starting: (job_id, started). A late start never reopens a finished
#: job, in one commit or across two (``_change``; the DONE of a job in
#: ``fresh`` or ``old_finished`` wins there): recover() would run it again.
_START = _update_sql("state = 'running', started = v.column2", 2, "state = 'running', started = ?", _FINAL)
#: Records folded between two offers of the GIL (see write_batch).
_SLICE = 256


def _native(value: object) -> bool:
    """An int of 64 bits, an ASCII str (it always encodes), a float not NaN (NULL in SQLite), None."""
    kind = value.__class__
    if kind is int:
        return -_INT64 <= value < _INT64  # type: ignore[operator]
    if kind is str:
        return bool(value.isascii())  # type: ignore[attr-defined]
    if kind is float:
        return value == value
    return value is None


def _result(value: object, keep: bool) -> tuple[bytes | int | float | str | None, int]:
    """(the value as stored, 1) to keep, (None, 0) if not kept or it does not pickle ("done, result not kept").

    Example:
        >>> _result(7, True), _result(b"7", True)[0][:1], _result(float("nan"), True)[0][:1], _result(7, False)
        ((7, 1), b'\\x80', b'\\x80', (None, 0))
    """
    if keep and _native(value):
        return value, 1  # type: ignore[return-value]
    if keep:
        try:
            return dumps(value), 1
        except Exception:  # noqa: BLE001 - recorded as "done, result not kept"
            pass
    return None, 0


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


def _failure(exc: BaseException, keep: bool) -> tuple[str, str, str | None, bytes | None]:
    """(error type, message, traceback text, the pickled exception if kept and it pickles)."""
    data = None
    if keep:
        try:
            data = dumps(exc)
        except Exception:  # noqa: BLE001 - type, message and traceback are kept anyway
            data = None
    return (*error_fields(exc), data)
