"""RunStore: where ``map_pages`` records its pages and item outcomes, in SQLite.

One responsibility: the ``bp_run*`` tables of a SQLite file. It may import
``sqlite3`` and ``batchpool.serialization`` (the only module that pickles) and
nothing else from batchpool. The file may be the pool's journal: every table
here is prefixed ``bp_run`` and nothing else in the file is touched.

Schema::

    bp_runs       (run_id PK, state, keep_results, started, updated)
                  state: 'running' | 'finished' | 'failed' | 'closed'
    bp_run_pages  (run_id, seq) PK, cursor BLOB, next_cursor BLOB, items, state
                  seq: 0, 1, 2... in fetch order; cursor fetches the page and
                  next_cursor is what that fetch returned (both pickled);
                  state: 'running' | 'done' (every item has an outcome)
    bp_run_items  (run_id, seq, idx) PK, ok, result BLOB, failure BLOB
                  ok: 1 (result pickled, NULL when not kept) | 0 (failed:
                  the pickled (item, exception), NULL when it cannot pickle)

Writes come in groups (``write``): one transaction for many rows, so a run
commits once per finished page or per short interval, never per item.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .serialization import dumps, loads

__all__ = ["PageRecord", "RunRecord", "RunStore", "pickle_cursor"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bp_runs (
        run_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        keep_results INTEGER NOT NULL,
        started REAL NOT NULL,
        updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bp_run_pages (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        cursor BLOB NOT NULL,
        next_cursor BLOB NOT NULL,
        items INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS bp_run_items (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        result BLOB,
        failure BLOB,
        PRIMARY KEY (run_id, seq, idx)) WITHOUT ROWID""",
)

#: One row to write: ("page", seq, cursor_blob, next_blob, items) |
#: ("done", seq) | ("item", seq, idx, ok, result_blob, failure_blob).
Op = tuple[Any, ...]


def pickle_cursor(cursor: object, what: str = "cursor") -> bytes:
    """Pickle a cursor for the store, or say clearly why it cannot be.

    Raises:
        TypeError: the cursor cannot be pickled (resumable runs need that).

    Example:
        >>> loads(pickle_cursor({"page": 2}))
        {'page': 2}
    """
    try:
        return dumps(cursor)
    except Exception as exc:
        raise TypeError(
            f"{what} {cursor!r} cannot be pickled ({exc!r}); a resumable run (run_id with a store) "
            "records its cursors, so they must pickle"
        ) from exc


@dataclass(frozen=True)
class PageRecord:
    """One recorded page of a run."""

    seq: int
    """Its place in fetch order (0 for the first page)."""
    cursor: bytes
    """The pickled cursor that fetches it."""
    next_cursor: bytes
    """The pickled cursor its fetch returned (pickled None: the source ended)."""
    items: int
    """How many items it had."""
    done: bool
    """Every item of it has a recorded outcome."""


@dataclass(frozen=True)
class RunRecord:
    """What the store knows about one run."""

    run_id: str
    """The run's id."""
    state: str
    """'running', 'finished', 'failed' or 'closed'."""
    keep_results: bool
    """Item results were recorded."""
    pages: tuple[PageRecord, ...]
    """Its pages, in fetch order."""


class RunStore:
    """The ``bp_run*`` tables of a SQLite file, on a connection of its own.

    Thread-safe: one lock serialises the connection (a run writes from its
    own thread while its consumer may read finished pages).

    Args:
        path: the SQLite file (created if missing; may hold other tables).
        busy_timeout: seconds to wait for another connection's write lock.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "runs.db")
        >>> with RunStore(path) as store:
        ...     store.start("r1", keep_results=True)
        ...     store.write("r1", [("page", 0, pickle_cursor(None), pickle_cursor(1), 1),
        ...                        ("item", 0, 0, 1, dumps("x"), None), ("done", 0)])
        ...     record = store.load("r1")
        ...     [(p.seq, p.items, p.done) for p in record.pages], store.results("r1", 0)
        ([(0, 1, True)], [(0, True, 'x')])
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT),
        # so one group of writes is one commit. check_same_thread=False: the
        # lock below is what keeps the connection to one thread at a time.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def load(self, run_id: str) -> RunRecord | None:
        """The run's record, or None when the store has never seen it."""
        with self._lock:
            row = self._db.execute("SELECT state, keep_results FROM bp_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT seq, cursor, next_cursor, items, state FROM bp_run_pages WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        pages = tuple(PageRecord(seq, bytes(c), bytes(n), items, state == "done") for seq, c, n, items, state in rows)
        return RunRecord(run_id, row[0], bool(row[1]), pages)

    def start(self, run_id: str, *, keep_results: bool) -> None:
        """Mark the run running (a new run, or one that resumes)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO bp_runs (run_id, state, keep_results, started, updated) VALUES (?, 'running', ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET state = 'running', "
                "keep_results = keep_results AND excluded.keep_results, updated = excluded.updated",
                (run_id, int(keep_results), now, now),
            )

    def finish(self, run_id: str, state: str) -> None:
        """Set the run's final state: 'finished', 'failed' or 'closed'."""
        with self._lock:
            self._db.execute("UPDATE bp_runs SET state = ?, updated = ? WHERE run_id = ?", (state, time.time(), run_id))

    def write(self, run_id: str, ops: Sequence[Op]) -> None:
        """Write a group of page and item rows in one transaction (see ``Op``)."""
        pages = [(run_id, op[1], op[2], op[3], op[4]) for op in ops if op[0] == "page"]
        items = [(run_id, *op[1:]) for op in ops if op[0] == "item"]
        done = [(run_id, op[1]) for op in ops if op[0] == "done"]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # A resumed page is fetched again: its row is replaced, not added.
                self._db.executemany(
                    "INSERT OR REPLACE INTO bp_run_pages (run_id, seq, cursor, next_cursor, items, state) "
                    "VALUES (?, ?, ?, ?, ?, 'running')",
                    pages,
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO bp_run_items (run_id, seq, idx, ok, result, failure) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    items,
                )
                self._db.executemany("UPDATE bp_run_pages SET state = 'done' WHERE run_id = ? AND seq = ?", done)
                self._db.execute("UPDATE bp_runs SET updated = ? WHERE run_id = ?", (time.time(), run_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def outcomes(self, run_id: str, seq: int) -> dict[int, bool]:
        """Which items of a page have a recorded outcome: index -> succeeded."""
        with self._lock:
            rows = self._db.execute("SELECT idx, ok FROM bp_run_items WHERE run_id = ? AND seq = ?", (run_id, seq))
            return {idx: bool(ok) for idx, ok in rows}

    def results(self, run_id: str, seq: int) -> list[tuple[int, bool, Any]]:
        """A page's recorded outcomes in item order: (index, ok, value).

        ``value`` is the result (ok), the (item, exception) pair (not ok), or
        ``MISSING`` when it was not kept or could not be pickled.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, ok, result, failure FROM bp_run_items WHERE run_id = ? AND seq = ? ORDER BY idx",
                (run_id, seq),
            ).fetchall()
        out: list[tuple[int, bool, Any]] = []
        for idx, ok, result, failure in rows:
            blob = result if ok else failure
            out.append((idx, bool(ok), MISSING if blob is None else loads(blob)))
        return out

    def counts(self, run_id: str) -> tuple[int, int]:
        """(succeeded, failed) items of the run's finished pages."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.ok, COUNT(*) FROM bp_run_items AS i JOIN bp_run_pages AS p "
                "ON p.run_id = i.run_id AND p.seq = i.seq WHERE i.run_id = ? AND p.state = 'done' GROUP BY i.ok",
                (run_id,),
            ).fetchall()
        counts = dict(rows)
        return counts.get(1, 0), counts.get(0, 0)

    def runs(self) -> list[tuple[str, str]]:
        """Every recorded run as (run_id, state), oldest first."""
        with self._lock:
            return [(r, s) for r, s in self._db.execute("SELECT run_id, state FROM bp_runs ORDER BY started")]

    def pages_done(self, run_id: str) -> list[int]:
        """The sequence numbers of the run's finished pages (cheap; for monitoring)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM bp_run_pages WHERE run_id = ? AND state = 'done' ORDER BY seq", (run_id,)
            )
            return [seq for (seq,) in rows]


class _Missing:
    """The marker of an outcome that was not kept."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def encode_items(ops: Iterable[Op]) -> list[Op]:
    """Pickle the raw values of ("item", seq, idx, ok, value) ops for ``write``.

    A value that cannot be pickled is stored as NULL (read back as MISSING).

    Example:
        >>> encode_items([("item", 0, 1, 1, 42)])[0][4] == dumps(42)
        True
    """
    out: list[Op] = []
    for op in ops:
        if op[0] != "item":
            out.append(op)
            continue
        _, seq, idx, ok, value = op
        blob: bytes | None
        try:
            blob = None if value is MISSING else dumps(value)
        except Exception:  # noqa: BLE001 - an unpicklable result is recorded as not kept
            blob = None
        out.append(("item", seq, idx, ok, blob if ok else None, None if ok else blob))
    return out
