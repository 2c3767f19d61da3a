"""Reading a journal: the ``Journal`` view, pruning, and the report ``batchpool journal`` prints.

One responsibility: everything a person (or a script, or the CLI) does with
a journal file besides owning it. Any process may open a ``Journal`` while a
pool writes to the file: WAL mode lets readers see the last commit without
blocking the writer. Imports from batchpool only ``errors`` and ``journal_store``. Output is
plain text: only the dashboard imports rich.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import JournalCorruptError
from .journal_store import JOB_COLUMNS, OPEN, STATES, StoredJob, connect, sqlite_error

__all__ = ["Journal", "report_text"]

_PAGE = 500


class Journal:
    """A view of a journal file that any process can open, even while a pool writes to it.

    It never takes ownership; only ``prune`` writes (deletes finished jobs).

    Args:
        path: the journal file. It must exist: a reader never creates one.
        clock: wall clock for ``prune``'s cut-off.

    Raises:
        NotAJournalError: no such file, not SQLite, or not a batchpool journal.
        JournalCorruptError, JournalReadOnlyError, JournalError: see ``errors``.

    Example:
        >>> import os, tempfile
        >>> from batchpool.journal import JournalWriter
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "jobs.db")
        ...     with JournalWriter.open(path) as writer:
        ...         _ = writer.accept("a", abs, (-1,), None, key=None, priority=1, timeout=None, retry=None)
        ...     with Journal(path) as journal:
        ...         journal.counts()["queued"], journal.get("a").state, journal.get("nope")
        (1, 'queued', None)
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._conn = connect(self.path, create=False)
        # One connection shared by the threads using this object; sqlite3
        # connections must not run two statements at once, hence the lock.
        self._lock = threading.Lock()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc

    def counts(self) -> dict[str, int]:
        """Jobs by state: keys exactly "queued", "running", "done", "failed", "cancelled"."""
        found = dict(self._query("SELECT state, count(*) FROM bp_jobs GROUP BY state"))
        return {state: int(found.get(state, 0)) for state in STATES}

    def get(self, job_id: str) -> StoredJob | None:
        """The job with this id (see ``StoredJob``), or None if the journal has none."""
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM bp_jobs WHERE job_id = ?", (job_id,))
        return StoredJob.from_row(rows[0]) if rows else None

    def failed(self) -> Iterator[StoredJob]:
        """The failed jobs, oldest failure first: id, ``error_type``, ``error_message``,
        ``error_traceback`` (the worker's), ``attempts``...

        Read in pages, so holding the iterator does not hold the database.
        """
        after: tuple[float, str] = (-math.inf, "")
        while True:
            rows = self._query(
                f"SELECT {JOB_COLUMNS} FROM bp_jobs WHERE {OPEN} AND state = 'failed' AND (finished, job_id) > (?, ?) "
                "ORDER BY finished, job_id LIMIT ?",
                (*after, _PAGE),
            )
            for row in rows:
                yield StoredJob.from_row(row)
            if len(rows) < _PAGE:
                return
            after = (rows[-1][9], rows[-1][0])

    def check(self) -> None:
        """Read every page (``PRAGMA quick_check``); a damaged file raises ``JournalCorruptError``.

        Opening reads only what it needs, so damage elsewhere shows up only
        when a query reaches it; this finds it at once.
        """
        problems = self._query("PRAGMA quick_check")
        if [tuple(row) for row in problems] != [("ok",)]:
            raise JournalCorruptError(self.path, f"PRAGMA quick_check: {problems[0][0]}")

    def prune(self, older_than: float) -> int:
        """Delete the finished jobs (done, failed, cancelled) that finished ``older_than`` seconds ago or more.

        Safe while a pool writes (its own short transaction). Freed pages go
        back to the filesystem (``incremental_vacuum``) and the WAL is
        checkpointed, so a journal pruned regularly stays the same size.

        Returns:
            The number of jobs deleted.

        Raises:
            ValueError: ``older_than`` is negative or not a number.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
            raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
        cutoff = self._clock() - older_than
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    deleted = conn.execute(
                        "DELETE FROM bp_jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished <= ?",
                        (cutoff,),
                    ).rowcount
                    # One pass over the jobs (no index on the digests: it would cost every insert).
                    conn.execute(
                        "DELETE FROM bp_blobs WHERE digest NOT IN (SELECT fn_digest FROM bp_jobs UNION "
                        "SELECT retry_digest FROM bp_jobs WHERE retry_digest IS NOT NULL)"
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("PRAGMA incremental_vacuum").fetchall()
                # PASSIVE: never waits for the pool's writer; what it cannot
                # copy back now, the writer's own checkpoints will.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc
        return int(deleted)

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _fit(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(0, width - 3)] + "..."


def report_text(path: str, *, failed: bool = False, as_json: bool = False, width: int = 100) -> str:
    """What ``batchpool journal PATH [--failed] [--json]`` prints.

    The jobs by state; with ``failed``, a table of the failed jobs (id,
    ``type: message``, attempts), every line at most ``width`` characters.
    With ``as_json``: ``{"counts": {...}, "failed": [...]}`` (the list is
    empty unless ``failed``; entries carry ``job_id``, ``error_type``,
    ``error_message``, ``error_traceback``, ``attempts``, ``finished``).

    Raises:
        ValueError: ``width`` is below 40.
        JournalError: the file cannot be read as a journal.

    Example:
        >>> import os, tempfile
        >>> from batchpool.journal import JournalWriter
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "jobs.db")
        ...     with JournalWriter.open(path) as writer:
        ...         _ = writer.accept("a", abs, (-1,), None, key=None, priority=1, timeout=None, retry=None)
        ...         writer.failed("a", ValueError("bad input"), 1)
        ...     print(report_text(path, failed=True, width=60).split("\\n", 1)[1])
        state              jobs
          queued              0
          running             0
          done                0
          failed              1
          cancelled           0
          total               1
        <BLANKLINE>
        failed jobs
        job id  error                                       attempts
        a       ValueError: bad input                              1
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 40:
        raise ValueError(f"width must be an int >= 40, got {width!r}")
    with Journal(path) as journal:
        counts = journal.counts()
        jobs = list(journal.failed()) if failed else []
    if as_json:
        entries = [
            {
                "job_id": job.job_id,
                "error_type": job.error_type,
                "error_message": job.error_message,
                "error_traceback": job.error_traceback,
                "attempts": job.attempts,
                "finished": job.finished,
            }
            for job in jobs
        ]
        return json.dumps({"counts": counts, "failed": entries}, indent=2)
    lines = [_fit(f"journal {path}", width), f"{'state':<12}{'jobs':>8}"]
    lines += [f"  {state:<10}{counts[state]:>8,}" for state in STATES]
    lines.append(f"  {'total':<10}{sum(counts.values()):>8,}")
    if not failed:
        if counts["failed"]:
            plural = "s" if counts["failed"] != 1 else ""
            lines.append(f"{counts['failed']:,} failed job{plural}: add --failed to list them")
        return "\n".join(lines)
    lines += ["", "failed jobs"]
    id_width = min(max([6, *(len(job.job_id) for job in jobs)]), width // 3)
    error_width = width - id_width - 2 - 2 - 8
    lines.append(f"{'job id':<{id_width}}  {'error':<{error_width}}  {'attempts':>8}")
    for job in jobs:
        error = f"{job.error_type}: {job.error_message}" if job.error_message else str(job.error_type)
        lines.append(f"{_fit(job.job_id, id_width):<{id_width}}  {_fit(error, error_width):<{error_width}}  "
                     f"{job.attempts:>8}")  # fmt: skip
    if not jobs:
        lines.append("(none)")
    return "\n".join(line.rstrip() for line in lines)
