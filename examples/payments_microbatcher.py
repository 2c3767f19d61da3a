"""Many request threads submit single payments; each batch is one bulk INSERT.

The classic micro-batcher: the thread backend, a @batched function, and a
short linger so that concurrent requests share a database round trip.
"""

from __future__ import annotations

import sqlite3
import threading

from batchpool import BatchPoolExecutor, batched

DB = sqlite3.connect(":memory:", check_same_thread=False)
DB.execute("CREATE TABLE payments (id INTEGER PRIMARY KEY, account TEXT, cents INTEGER)")
INSERTS: list[int] = []


@batched
def insert_payments(rows: list[tuple[str, int]]) -> list[object]:
    """One transaction for the whole batch; one row id (or error) per payment."""
    results: list[object] = []
    with DB:
        for account, cents in rows:
            if cents <= 0:
                results.append(ValueError(f"refused: {cents} cents"))  # fails that payment only
                continue
            results.append(
                DB.execute("INSERT INTO payments (account, cents) VALUES (?, ?)", (account, cents)).lastrowid
            )
    INSERTS.append(len(rows))
    return results


def main() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread", max_batch_size=200, max_delay=0.005) as ex:
        outcomes: list[object] = []
        lock = threading.Lock()

        def web_request(i: int) -> None:  # a request handler thread
            future = ex.submit(insert_payments, (f"acct-{i % 7}", -5 if i == 13 else 100 + i))
            try:
                outcome: object = future.result(timeout=30)
            except ValueError as exc:
                outcome = exc
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=web_request, args=(i,)) for i in range(500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stored = DB.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
    refused = sum(isinstance(o, ValueError) for o in outcomes)
    print(f"500 payments: {stored} stored, {refused} refused, in {len(INSERTS)} bulk INSERTs")


if __name__ == "__main__":
    main()
