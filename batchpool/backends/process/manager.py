"""Process backend: worker processes fed by one manager thread.

Data flow (parent side)::

    submit() -> Batcher lanes
                   |  take() when a worker has a free slot; ledger.claim()
                   v
    manager thread --- channel.send(batch) ---> worker process (worker.py)
        ^                                            |
        |  selector.select() on, all at once:        | outcomes, streamed
        |    every worker's result channel  <--------+
        |    every worker's sentinel (death)
        |    every channel with output queued (room to write)
        |    the wake-up pipe (new jobs, a state change)
        v
    ledger: outcomes settled, retries queued; dead workers' batches split or
    sent again; workers respawned

One thread does all of it and never blocks anywhere but in ``select``: no
polling, and no state shared with submitters beyond the Batcher, the
PoolState and two flags (``_wake_pending``, ``_can_dispatch``) that keep
``notify()`` nearly free.

Each module below has one part: ``events`` handles what ``select`` reports
(messages, room to write, deaths) and timeouts; ``balance`` matches the
workers to the target size (retiring, keeping) and moves work that waits
behind a slow job to an idle worker; ``growth`` starts workers as submits
need them; ``workers`` starts and stops processes; ``payload`` encodes a
batch. This module keeps the start, the loop, dispatch and shutdown;
``ProcessBackend`` is ``OnDemand`` over ``Balancing`` over ``WorkerEvents``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ...batching import Batcher
from ...jobs import CHUNK_KINDS, Batch, items_of
from ...ledger import Ledger
from ...metrics import Metrics
from ...options import PoolConfig
from ...state import Phase
from ...transport import PipeTransport, ring, shm
from ..base import logger
from .balance import REBALANCE_AFTER as REBALANCE_AFTER  # moved; importable from here still
from .events import RESULT, SENTINEL, WAKE, WRITE
from .growth import OnDemand
from .payload import encode
from .workers import STOP_GRACE, Worker, preload_in_forkserver, start_worker, stop_workers

__all__ = ["PREFETCH", "ProcessBackend"]

#: Batches one worker may hold at once: the one it runs and one waiting, so it
#: never idles between batches. The second goes out only for quick jobs.
PREFETCH = 2
#: Slack on top of a timed map chunk's item limits before its worker is killed.
CHUNK_GRACE = 1.0

_pool_ids = itertools.count()


class ProcessBackend(OnDemand):
    """Runs batches on up to ``max_workers`` worker processes."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics, ledger: Ledger) -> None:
        super().__init__(config, batcher, metrics, ledger)
        batcher.lock_free_put = True  # this manager is the lanes' one consumer, and notify() wakes it
        assert config.mp_context is not None  # filled in by make_config
        self._ctx = config.mp_context
        # "shm": rings for messages, arena blocks for large buffers, where the
        # system has them (Linux); the pipe transport everywhere else.
        self._shm_prefix: str | None = None
        self._transport: PipeTransport | ring.RingTransport = PipeTransport(self._ctx)
        if config.transport == "shm" and shm.available() and ring.available():
            self._shm_prefix = shm.pool_prefix(f"{next(_pool_ids)}")
            self._transport = ring.RingTransport()
        #: The name prefix of this pool's shared arrays (``shared.py``), swept
        #: with the pool: the shm transport's, or one of their own with pipes.
        self.shared_prefix = self._shm_prefix
        if self.shared_prefix is None and shm.available():
            self.shared_prefix = shm.pool_prefix(f"{next(_pool_ids)}")
        self._workers: dict[int, Worker] = {}
        self._retiring = 0  # workers in _workers marked retiring (kept so that _live() is O(1))
        self._resend: deque[Batch] = deque()
        self._manager: threading.Thread | None = None
        # Guards the one-time start; join() takes it too, so a shutdown from
        # another thread waits for a start in progress.
        self._start_lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()
        # Set by notify() before writing to the wake-up pipe; cleared by the
        # manager after draining the pipe and before it looks at the lanes. A
        # job queued after the manager looked always finds the flag clear and
        # writes, so no wake-up is lost, and a flood of submits writes once.
        self._wake_pending = False
        # False while every worker is full: a submit then does not wake the
        # manager at all (it will look at the lanes when a batch comes back).
        self._can_dispatch = True
        self._max_tasks = config.max_tasks_per_child
        # Deadlines of running jobs that have a timeout: (deadline, batch id, worker id).
        self._deadlines: list[tuple[float, int, int]] = []
        self._rebalance_at: float | None = None  # when to look again for work to move to an idle worker
        self._init_growth()
        self.state.watch(self._on_state_change)

    # -- called from other threads ------------------------------------------------------

    def notify(self) -> None:
        if self._manager is None:
            if not self.state.stopped:
                self._start()
            return
        growing = self._ask_for_worker() if self._growing else None  # a full pool: no call per submit
        if (self._can_dispatch and not self._wake_pending) or growing is not None:
            self._wake()
        if growing is not None:
            self._wait_for_pass(growing)

    def _on_state_change(self) -> None:
        if self._manager is not None:
            self._wake()

    def _wake(self) -> None:
        self._wake_pending = True
        # The lock only orders this write against the pipe's closing (a closed
        # descriptor number can be reused by anything); wake-ups are rare.
        with self._wake_lock:
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _start(self) -> None:
        with self._start_lock:
            if self._manager is not None or self.state.stopped:
                return
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            if self.shared_prefix is not None:
                shm.cleanup_orphans()  # left by pools whose parent was killed
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, (WAKE, None))
            preload_in_forkserver(self._ctx)
            # The first worker (with fork: every worker) starts here, in the
            # submitting thread, as with ProcessPoolExecutor. For fork this is
            # a matter of safety: a fork from a threaded process can inherit a
            # lock some other thread held, so fork before the manager exists.
            first = self.state.target_workers if self._ctx.get_start_method() == "fork" else 1
            for _ in range(first):
                if not self._spawn():
                    self._shut_down_now()
                    return
            manager = threading.Thread(target=self._run, name="batchpool-manager", daemon=True)
            try:
                manager.start()
            except RuntimeError as exc:  # e.g. "can't create new thread at interpreter shutdown"
                self._break(f"the pool's manager thread could not start: {exc}", exc)
                self._shut_down_now()
                return
            self._manager = manager

    def begin_shutdown(self) -> None:
        if self._manager is not None:
            self._wake()
            return
        with self._start_lock:
            if self._manager is None and self.shared_prefix is not None:
                shm.cleanup_prefix(self.shared_prefix)  # never started: only shared arrays to sweep

    def join(self, timeout: float | None = None) -> bool:
        with self._start_lock:  # a start in progress finishes first
            manager = self._manager
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout)
            return not manager.is_alive()
        return True

    def abort(self, error: BaseException) -> None:
        self.state.abort(error)  # the watcher wakes the manager, which fails and kills
        if self._manager is None:
            with self._start_lock:
                self._fail_everything(error)

    @property
    def manager_thread(self) -> threading.Thread | None:
        """The manager thread, once started (for ProcessPoolExecutor-style joins)."""
        return self._manager

    def compat_workers(self) -> dict[Any, Any]:
        return {w.pid: w.process for w in list(self._workers.values())}

    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        states = []
        for w in list(self._workers.values()):
            state = "dead" if w.killed else ("busy" if w.inflight else ("idle" if w.done else "starting"))
            states.append((w.id, w.pid, state, w.done, True))
        return states

    # -- the manager thread -------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while True:
                if self.state.stopped:
                    self._fail_everything(self.state.error or BrokenProcessPool("the pool stopped"))
                    return
                self._begin_pass()
                self._dispatch()
                self._end_pass()
                if self._finished():
                    return
                dead: list[Worker] = []
                for key, _ in self._selector.select(self._timeout()):
                    kind, worker = key.data
                    if kind == RESULT:
                        self._read(worker)
                    elif kind == WRITE:
                        self._flush(worker)
                    elif kind == SENTINEL:
                        dead.append(worker)
                    else:
                        # Drain first, then clear: a notify() between the two
                        # sees the flag still set and skips its write, but its
                        # job is already queued, and _dispatch() looks next.
                        self._drain_wake()
                        self._wake_pending = False
                if self._deadlines or dead:
                    self._settling_begins()
                if self._deadlines:
                    self._expire_timeouts()
                for worker in dead:
                    self._on_death(worker)
        except BaseException as exc:  # noqa: BLE001 - no Future may be left hanging
            logger.exception("batchpool manager thread failed; failing all jobs")
            self._break(f"the pool's manager thread failed: {exc!r}", exc)
            self._fail_everything(self.state.error or BrokenProcessPool(repr(exc)))
        finally:
            self._stop_growing()
            self._shut_down_now()

    def _timeout(self) -> float | None:
        deadline = self.batcher.next_deadline()
        for first in (self._deadlines[0][0] if self._deadlines else None, self._rebalance_at):
            if first is not None:
                deadline = first if deadline is None else min(deadline, first)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _finished(self) -> bool:
        return (
            self.batcher.closed
            and not self.batcher.pending
            and not self._resend
            and all(w.idle for w in self._workers.values())
        )

    def _drain_wake(self) -> None:
        try:
            # notify() writes once per wake-up (_wake_pending), so one read
            # nearly always empties the pipe; a full read means there may be more.
            while len(os.read(self._wake_r, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self) -> None:
        paused = self.state.paused
        target = self.state.target_workers
        if target != len(self._workers) or self._retiring:
            self._apply_target()
        while not paused and (self._resend or self.batcher.pending):
            worker = self._pick_worker()
            idle = worker is not None and worker.idle
            if not idle and self._live() < target:
                if not self._spawn():
                    return
                self._started_for_jobs += 1  # it may be the one a submit asked for (growth.py)
                continue
            if worker is None:
                break
            if self._resend and idle:
                batch = self._resend.popleft()
                if not self.ledger.claim(batch):
                    continue
            else:
                free = sum(1 for w in self._workers.values() if w.idle and not w.retiring)
                taken = self.batcher.take(
                    max_jobs=self._budget(worker),
                    idle_workers=free + max(0, target - self._live()),
                    prefetch=not idle,
                    workers=self.state.target_workers,
                )
                if taken is None:
                    break
                if not self.ledger.claim(taken):
                    continue
                batch = taken
            self._send(worker, batch)
        if not paused and not self._resend and not self.batcher.pending and self._rebalance():
            self._dispatch()  # a batch taken back goes to the idle worker
        self._can_dispatch = self._live() < target or any(
            len(w.inflight) < PREFETCH and self._budget(w) for w in self._workers.values()
        )

    def _pick_worker(self) -> Worker | None:
        best: Worker | None = None
        for worker in self._workers.values():
            if not self._budget(worker) or len(worker.inflight) >= PREFETCH or worker.killed or worker.skipping:
                continue
            if worker.timed is not None or worker.retiring:
                continue  # nothing may wait behind a job that may be killed
            if worker.idle:
                return worker
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
        return best

    def _send(self, worker: Worker, batch: Batch) -> None:
        try:
            parts = encode(batch, worker.arena, self.ledger, self._resend, worker.fns)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ fails the batch, not the pool
            self.ledger.forget(batch)
            self.ledger.fail_all(batch.jobs, exc)
            return
        if parts is None:
            self.ledger.forget(batch)  # split, or every job failed to pickle
            return
        batch.worker = worker
        batch.mark_dispatched()
        wait = batch.t_dispatch - batch.mean_submit if batch.fresh else None
        self.metrics.batch_sent(len(batch.jobs), batch.reason, wait)
        worker.inflight[batch.id] = batch
        worker.sent += len(batch.jobs)
        timeout = batch.jobs[0].opts.timeout
        if timeout is not None:
            start = time.monotonic()
            if batch.kind in CHUNK_KINDS:
                # The worker stops an item past its limit itself; this kill is
                # the backstop for one stuck where no signal reaches it. A
                # prefetched chunk batch starts after those ahead of it: its
                # budget counts from their backstops, not from now.
                timeout = timeout * sum(items_of(job) for job in batch.jobs) + CHUNK_GRACE
                ahead = [d for d, bid, wid in self._deadlines if wid == worker.id and bid in worker.inflight]
                start = max([start, *ahead])
            else:
                worker.timed = batch.id  # nothing may wait behind a call that may be killed
            heapq.heappush(self._deadlines, (start + timeout, batch.id, worker.id))
        if worker.control is not None:
            worker.control.sent()
        worker.channel.send(*parts)
        self._watch_output(worker)

    # -- workers ------------------------------------------------------------------

    def _spawn(self) -> bool:
        try:
            worker = start_worker(self._transport, self._ctx, self.config, self._shm_prefix)
        except BaseException as exc:  # noqa: BLE001 - out of descriptors, memory, or processes
            self._break(f"a worker process could not be started: {exc!r}", exc)
            return False
        self._workers[worker.id] = worker
        assert self._selector is not None
        self._selector.register(worker.channel.readable_fd, selectors.EVENT_READ, (RESULT, worker))
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, (SENTINEL, worker))
        return True

    def _fail_everything(self, error: BaseException) -> None:
        jobs = [job for batch in self._resend for job in batch.jobs]
        self._resend.clear()
        for worker in self._workers.values():
            for batch in worker.inflight.values():
                jobs.extend(batch.jobs[batch.done :])
                batch.blocks = []  # the arena goes when the worker stops
            worker.inflight.clear()
        self.ledger.fail_all(jobs, error)
        self.ledger.abort(error)

    def _shut_down_now(self) -> None:
        """Stop every worker and release everything (the manager's last act)."""
        # No worker starts after this: let go of the initializer's arguments
        # now, not when a garbage collection breaks the backend's cycles (a
        # multiprocessing Queue among them holds named semaphores, which the
        # standard pool frees at shutdown).
        self.config = dataclasses.replace(self.config, initializer=None, initargs=())
        if self.state.stopped:
            self._fail_everything(self.state.error or BrokenProcessPool("the pool stopped"))
        grace = 0.0 if self.state.phase == Phase.ABORTED else STOP_GRACE
        stop_workers(list(self._workers.values()), grace)
        self._workers.clear()
        self._retiring = 0
        if self.shared_prefix is not None:
            # Results a dead worker wrote but never announced, shared arrays'
            # names, and anything else of this pool's: no segment outlives the
            # pool (a shared array stays valid: its mapping outlives the name).
            shm.cleanup_prefix(self.shared_prefix)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
