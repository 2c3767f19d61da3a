"""Matching the process backend's workers to its target size, and moving work to idle workers.

Imports ``protocol``, ``jobs`` and this package's ``events`` (the layer below,
for ``_watch_output``); ``manager`` builds on it and calls in from dispatch.

Resizing (``PoolState.target_workers``): a growing pool starts workers as
work needs them; a shrinking one retires workers, idle ones first. A retiring
worker gets nothing new, its prefetched batch is taken back (claim tokens) for
the lanes if it has not started, and once idle it is told to stop (MSG_STOP).
A retiring worker not yet told is kept if the pool grows again meanwhile.

Work-conserving: when a worker is idle and no lane has work, the manager
takes back a busy worker's prefetched batch if it has not started (claim
tokens), or asks it to give back the unstarted rest of its running batch
(the yield bell), so no job waits behind a slow one while a worker idles.
"""

from __future__ import annotations

import time

from ... import protocol
from ...jobs import Batch
from .events import WorkerEvents
from .workers import Worker

__all__ = ["REBALANCE_AFTER", "Balancing"]

#: An idle worker takes work back from a busy one only behind a batch that
#: has run this long (shorter ones end before the move would pay).
REBALANCE_AFTER = 0.01


class Balancing(WorkerEvents):
    """Retiring and keeping workers, task budgets, and taking back work that waits.

    Only the manager thread calls these.
    """

    _max_tasks: int | None
    _rebalance_at: float | None  # when to look again for work to move to an idle worker

    def _live(self) -> int:
        """Workers that are not retiring."""
        return len(self._workers) - self._retiring

    def _apply_target(self) -> None:
        """Retire or keep workers so that the live ones match the target; stop idle retirees."""
        target = self.state.target_workers
        workers = self._workers.values()
        live = [w for w in workers if not w.retiring]
        if len(live) < target:
            for worker in workers:  # keep retirees not yet told to stop, before starting new ones
                if worker.retiring and not worker.stop_sent and not worker.killed and len(live) < target:
                    worker.retiring = False
                    self._retiring -= 1
                    live.append(worker)
        elif len(live) > target:
            # Idle workers first, then the least loaded.
            for worker in sorted(live, key=lambda w: (not w.idle, len(w.inflight)))[: len(live) - target]:
                worker.retiring = True
                self._retiring += 1
                self._reclaim_prefetched(worker)
        for worker in workers:
            if worker.retiring and worker.idle and not worker.stop_sent and not worker.killed:
                worker.stop_sent = True
                worker.channel.send(protocol.MSG_STOP)
                self._watch_output(worker)  # it exits; its sentinel fires and _on_death tidies up

    def _reclaim_prefetched(self, worker: Worker) -> None:
        """Take a retiring worker's prefetched batch back to the lanes, if it has not started."""
        if worker.control is None or len(worker.inflight) < 2 or not worker.control.reclaim():
            return
        batch = list(worker.inflight.values())[-1]  # the newest: the one that had not started
        del worker.inflight[batch.id]
        worker.skipping[batch.id] = batch.blocks  # until the worker says it skipped it
        worker.sent -= len(batch.jobs)
        batch.blocks = []
        self.ledger.forget(batch)
        self.ledger.requeue(batch.jobs)

    def _rebalance(self) -> bool:
        """An idle worker and nothing queued: take back work that waits behind a slow job.

        Only behind a batch that has run ``REBALANCE_AFTER`` already: quick
        batches end before a reclaimed one could even be sent again. True when
        a batch was taken back (to ``_resend``): the caller dispatches again.
        """
        self._rebalance_at = None
        idle = [w for w in self._workers.values() if w.idle and not w.killed and not w.retiring and self._budget(w)]
        if not idle:
            return False
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.control is None or worker.killed or worker.skipping or not worker.inflight:
                continue
            batches = list(worker.inflight.values())
            due = batches[0].t_dispatch + REBALANCE_AFTER
            if due > now:
                self._rebalance_at = due if self._rebalance_at is None else min(self._rebalance_at, due)
                continue
            if len(batches) > 1 and worker.control.reclaim():
                # The newest batch had not started: it is ours again.
                batch = batches[-1]
                del worker.inflight[batch.id]
                worker.skipping[batch.id] = batch.blocks
                worker.sent -= len(batch.jobs)
                batch.blocks = []
                self.ledger.forget(batch)
                self._resend.appendleft(Batch(batch.jobs, "rebalance", batch.timing_key))
                return True
            running = batches[0]
            if not running.yield_asked and len(running.jobs) - running.done > 1:
                running.yield_asked = True
                worker.control.ask_yield()
        return False

    def _budget(self, worker: Worker) -> int:
        if self._max_tasks is None:
            return self.batcher.max_batch_size
        return max(0, self._max_tasks - worker.sent)
