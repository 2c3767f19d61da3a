"""Recovery: what a dead owner left in a journal, and the crash rule that keeps poison out.

One responsibility: turning the rows a previous owner left unfinished into
jobs to run again. A job found "running" was cut off by its owner's death: it
is charged an attempt and a crash; a job running at ``POISON_CRASHES`` deaths
in a row (or out of attempts under its retry policy) is poison: failed, not
run again, so a job that kills its pool cannot kill every pool after it.
Imports from batchpool only ``errors``, ``serialization`` and ``journal_store``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import JournalCorruptError, PoisonJobError
from .serialization import loads

__all__ = ["POISON_CRASHES", "RecoveredJob", "claim_unfinished"]

#: A job running at this many crashes of its owner in a row is poison.
POISON_CRASHES = 3


@dataclass(frozen=True)
class RecoveredJob:
    """A job a previous owner of the journal left unfinished (see ``JournalWriter.unfinished``).

    Attributes:
        job_id: its id. The job stays in the journal, now owned by this writer:
            report its transitions, do not ``accept`` it again.
        state: what the journal said: "queued", "running" (the owner died
            while it ran) or "failed" (a redrive).
        fn, args, kwargs: the unpickled call (None if ``error`` is set).
        key, priority, timeout, retry: the job's options (retry unpickled).
        attempts: attempts charged, the crash included.
        poison: it was running at ``POISON_CRASHES`` crashes in a row or has no
            attempts left; it is failed in the journal; ``error`` says why.
        error: why the job cannot run: an unpickling error, or a ``PoisonJobError``.

    Example:
        >>> RecoveredJob("a", "queued", abs, (-1,), None, None, 1, None, None, 0).fn(*(-1,))
        1
    """

    job_id: str
    state: str
    fn: Callable[..., Any] | None
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    key: str | None
    priority: int
    timeout: float | None
    retry: Any
    attempts: int
    poison: bool = False
    error: BaseException | None = None


def claim_unfinished(
    conn: sqlite3.Connection, session: int, *, include_failed: bool, now: float, path: str
) -> list[RecoveredJob]:
    """Claim for ``session`` the jobs other sessions left unfinished (see ``JournalWriter.unfinished``).

    Runs its own transaction on ``conn``, which must not be in one.

    Example:
        >>> import os, tempfile
        >>> from batchpool.journal_store import RUNNING, connect, insert_record, write_batch
        >>> from batchpool.serialization import dumps
        >>> with tempfile.TemporaryDirectory() as d:
        ...     conn = connect(os.path.join(d, "jobs.db"), create=True)
        ...     insert = insert_record("a", b"f", dumps(((-1,), None)), 1, 0, 1, 0.0, None, dumps(abs))
        ...     write_batch(conn, [insert, (RUNNING, 1.0, ["a"])], keep=True)
        ...     (job,) = claim_unfinished(conn, 2, include_failed=False, now=2.0, path="jobs.db")
        ...     conn.close()
        >>> job.state, job.fn(*job.args), job.attempts
        ('running', 1, 1)
    """
    states = ("queued", "running", "failed") if include_failed else ("queued", "running")
    # IMMEDIATE: take the write lock before reading, so no other connection
    # changes these rows between the read and the updates.
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT j.job_id, j.state, j.key, j.priority, j.timeout, j.retry_digest, r.data, j.attempts, j.crashes "
            "FROM bp_jobs AS j LEFT JOIN bp_blobs AS r ON r.digest = j.retry_digest "
            # "state != 'done'" as it is in the index's WHERE: SQLite then reads the index, not every job.
            f"WHERE j.state != 'done' AND j.session != ? AND j.state IN ({', '.join('?' * len(states))}) "
            "ORDER BY j.priority, j.created",
            (session, *states),
        ).fetchall()
        claimed: list[tuple[Any, ...]] = []
        poisoned: list[tuple[Any, ...]] = []
        found: list[tuple[Any, ...]] = []
        for job_id, state, key, priority, timeout, retry_digest, retry_data, attempts, crashes in rows:
            retry, error = None, None
            try:
                if retry_digest is not None and retry_data is None:
                    raise JournalCorruptError(path, f"the retry policy of job {job_id!r} is missing")
                retry = None if retry_data is None else loads(retry_data)
            except Exception as exc:  # noqa: BLE001 - returned on the job
                error = exc
            poison = False
            if state == "running":  # its owner died while it ran: charge the crash
                attempts, crashes = attempts + 1, crashes + 1
                max_attempts = getattr(retry, "max_attempts", None)
                if crashes >= POISON_CRASHES or (isinstance(max_attempts, int) and attempts >= max_attempts):
                    poison, error = True, PoisonJobError(job_id, crashes, attempts)
                    name = "batchpool.errors.PoisonJobError"
                    poisoned.append((name, str(error), attempts, crashes, now, session, job_id))
            elif state == "failed":  # a redrive starts with a fresh count
                attempts, crashes = 0, 0
            if not poison:
                claimed.append((attempts, crashes, session, job_id))
            found.append((job_id, state, key, priority, timeout, retry, attempts, poison, error))
        conn.executemany(
            "UPDATE bp_jobs SET state = 'queued', attempts = ?, crashes = ?, session = ?, started = NULL, "
            "finished = NULL, error_type = NULL, error_message = NULL, error_traceback = NULL, exception = NULL "
            "WHERE job_id = ?",
            claimed,
        )
        conn.executemany(
            "UPDATE bp_jobs SET state = 'failed', error_type = ?, error_message = ?, attempts = ?, crashes = ?, "
            "finished = ?, session = ? WHERE job_id = ?",
            poisoned,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # Unpickled after the transaction: importing the callables' modules may take a while.
    return [_recovered(conn, path, *job) for job in found]


def _recovered(conn: sqlite3.Connection, path: str, job_id: str, state: str, key: str | None, priority: int,
               timeout: float | None, retry: Any, attempts: int, poison: bool,
               error: BaseException | None) -> RecoveredJob:  # fmt: skip
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    if error is None:
        row = conn.execute(
            "SELECT c.data, j.call FROM bp_jobs AS j LEFT JOIN bp_blobs AS c ON c.digest = j.fn_digest "
            "WHERE j.job_id = ?",
            (job_id,),
        ).fetchone()
        try:
            if row is None or row[0] is None:
                raise JournalCorruptError(path, f"the callable of job {job_id!r} is missing")
            fn = loads(row[0])
            args, kwargs = loads(row[1])
        except Exception as exc:  # noqa: BLE001 - returned on the job
            fn = args = kwargs = None
            error = exc
    return RecoveredJob(job_id, state, fn, args, kwargs, key, priority, timeout, retry, attempts, poison, error)
