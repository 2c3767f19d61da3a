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

from ... import protocol, serialization
from ...batching import Batcher
from ...errors import JobTimeoutError, TransportError, WorkerCrashedError, describe_exit
from ...jobs import CHUNK_KINDS, Batch, items_of
from ...ledger import Ledger
from ...metrics import Metrics
from ...options import PoolConfig
from ...state import Phase
from ...transport import PipeTransport, ring, shm
from ...transport.base import Message
from ...worker import open_buffers
from ..base import Backend, logger
from .payload import encode
from .workers import (
    STOP_GRACE,
    Worker,
    bootstrap_failure,
    close_worker,
    preload_in_forkserver,
    start_worker,
    stop_workers,
)

__all__ = ["PREFETCH", "ProcessBackend"]

#: Batches one worker may hold at once: the one it runs and one waiting, so it
#: never idles between batches. The second goes out only for quick jobs.
PREFETCH = 2
#: An idle worker takes work back from a busy one only behind a batch that
#: has run this long (shorter ones end before the move would pay).
REBALANCE_AFTER = 0.01
#: Slack on top of a timed map chunk's item limits before its worker is killed.
CHUNK_GRACE = 1.0

_WAKE, _RESULT, _SENTINEL, _WRITE = range(4)
_pool_ids = itertools.count()


class ProcessBackend(Backend):
    """Runs batches on up to ``max_workers`` worker processes."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics, ledger: Ledger) -> None:
        super().__init__(config, batcher, metrics, ledger)
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
        self.state.watch(self._on_state_change)

    # -- called from other threads ------------------------------------------------------

    def notify(self) -> None:
        if self._manager is None:
            if not self.state.stopped:
                self._start()
        elif self._can_dispatch and not self._wake_pending:
            self._wake()

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
            self._selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
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
                self._dispatch()
                if self._finished():
                    return
                dead: list[Worker] = []
                for key, _ in self._selector.select(self._timeout()):
                    kind, worker = key.data
                    if kind == _RESULT:
                        self._read(worker)
                    elif kind == _WRITE:
                        self._flush(worker)
                    elif kind == _SENTINEL:
                        dead.append(worker)
                    else:
                        # Drain first, then clear: a notify() between the two
                        # sees the flag still set and skips its write, but its
                        # job is already queued, and _dispatch() looks next.
                        self._drain_wake()
                        self._wake_pending = False
                if self._deadlines:
                    self._expire_timeouts()
                for worker in dead:
                    self._on_death(worker)
        except BaseException as exc:  # noqa: BLE001 - no Future may be left hanging
            logger.exception("batchpool manager thread failed; failing all jobs")
            self._break(f"the pool's manager thread failed: {exc!r}", exc)
            self._fail_everything(self.state.error or BrokenProcessPool(repr(exc)))
        finally:
            self._shut_down_now()

    def _timeout(self) -> float | None:
        deadline = self.batcher.next_deadline()
        for first in (self._deadlines[0][0] if self._deadlines else None, self._rebalance_at):
            if first is not None:
                deadline = first if deadline is None else min(deadline, first)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _expire_timeouts(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, batch_id, worker_id = heapq.heappop(self._deadlines)
            worker = self._workers.get(worker_id)
            if worker is None or batch_id not in worker.inflight:
                continue  # finished in time, or its worker died anyway
            batch = worker.inflight.pop(batch_id)
            worker.timed = None
            timeout = batch.jobs[0].opts.timeout if batch.kind not in CHUNK_KINDS else None
            # The only way to stop a running call for real: its process goes.
            # Nothing else runs there (timed jobs go alone, with no prefetch).
            worker.killed = f"job {batch.jobs[0].id} ran over its {timeout} s timeout"
            logger.warning("worker pid %s killed: %s", worker.pid, worker.killed)
            worker.process.kill()
            self.ledger.forget(batch)
            for job in batch.jobs[batch.done :]:
                self.ledger.fail(job, JobTimeoutError(timeout))

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
        if not paused and not self._resend and not self.batcher.pending:
            self._rebalance()
        self._can_dispatch = self._live() < target or any(
            len(w.inflight) < PREFETCH and self._budget(w) for w in self._workers.values()
        )

    def _rebalance(self) -> None:
        """An idle worker and nothing queued: take back work that waits behind a slow job.

        Only behind a batch that has run ``REBALANCE_AFTER`` already: quick
        batches end before a reclaimed one could even be sent again.
        """
        self._rebalance_at = None
        idle = [w for w in self._workers.values() if w.idle and not w.killed and not w.retiring and self._budget(w)]
        if not idle:
            return
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
                self._dispatch()
                return
            running = batches[0]
            if not running.yield_asked and len(running.jobs) - running.done > 1:
                running.yield_asked = True
                worker.control.ask_yield()

    def _budget(self, worker: Worker) -> int:
        if self._max_tasks is None:
            return self.batcher.max_batch_size
        return max(0, self._max_tasks - worker.sent)

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
            if batch.kind in CHUNK_KINDS:
                # The worker stops an item past its limit itself; this kill is
                # the backstop for one stuck where no signal reaches it.
                timeout = timeout * sum(items_of(job) for job in batch.jobs) + CHUNK_GRACE
            worker.timed = batch.id
            heapq.heappush(self._deadlines, (time.monotonic() + timeout, batch.id, worker.id))
        if worker.control is not None:
            worker.control.sent()
        worker.channel.send(*parts)
        self._watch_output(worker)

    def _watch_output(self, worker: Worker) -> None:
        if worker.channel.has_output and not worker.writing:
            assert self._selector is not None
            channel = worker.channel
            self._selector.register(channel.writable_fd, channel.writable_event, (_WRITE, worker))
            worker.writing = True

    def _release(self, worker: Worker, blocks: list[Any]) -> None:
        """Take arena blocks back (telling the worker what to unmap)."""
        dropped = worker.release_blocks(blocks)
        if dropped and not worker.killed:
            worker.channel.send(protocol.MSG_DROP + serialization.dumps(dropped))
            self._watch_output(worker)

    def _flush(self, worker: Worker) -> None:
        if worker.channel.flush() and worker.writing:
            assert self._selector is not None
            self._selector.unregister(worker.channel.writable_fd)
            worker.writing = False

    # -- workers ------------------------------------------------------------------

    def _spawn(self) -> bool:
        try:
            worker = start_worker(self._transport, self._ctx, self.config, self._shm_prefix)
        except BaseException as exc:  # noqa: BLE001 - out of descriptors, memory, or processes
            self._break(f"a worker process could not be started: {exc!r}", exc)
            return False
        self._workers[worker.id] = worker
        assert self._selector is not None
        self._selector.register(worker.channel.readable_fd, selectors.EVENT_READ, (_RESULT, worker))
        self._selector.register(worker.process.sentinel, selectors.EVENT_READ, (_SENTINEL, worker))
        return True

    def _break(self, message: str, cause: BaseException | None = None) -> None:
        error = BrokenProcessPool(message)
        error.__cause__ = cause
        self.state.break_(error)

    def _read(self, worker: Worker, drain: bool = False) -> None:
        """Handle the worker's messages: those buffered, or (``drain``) all it sent."""
        channel = worker.channel
        try:
            # After the first, only what is buffered already: asking the
            # system again costs a syscall per wake-up, and the selector
            # reports the channel readable again when more has come.
            more = channel.poll
            while more():
                self._on_message(worker, channel.recv())
                more = channel.poll if drain else channel.buffered
        except (EOFError, OSError):
            # The worker is gone; its sentinel fires next and settles its jobs.
            # An EOF'd pipe is always readable, so stop watching it now.
            assert self._selector is not None
            try:
                self._selector.unregister(channel.readable_fd)
            except (KeyError, ValueError):
                pass

    def _on_message(self, worker: Worker, message: Message) -> None:
        tag = message[:1]
        if tag == protocol.MSG_OUTCOME:
            self._on_outcome(worker, message)
        elif tag == protocol.MSG_SKIPPED:
            blocks = worker.skipping.pop(protocol.decode_skipped(message), [])
            self._release(worker, blocks)
        elif tag == protocol.MSG_READY:
            worker.ready = True
        elif tag == protocol.MSG_SPLIT:
            batch_id, wrapped, fn_failed = serialization.loads(memoryview(message)[1:])
            batch = worker.inflight.pop(batch_id, None)
            if batch is not None:
                self._release(worker, batch.blocks)
                worker.sent -= len(batch.jobs)  # never ran: not against its task budget
                self.ledger.forget(batch)
                self._on_undecodable(batch, wrapped, fn_failed)
        elif tag == protocol.MSG_PINNED:
            if worker.arena is not None:
                worker.arena.pin(serialization.loads(memoryview(message)[1:]))
        elif tag == protocol.MSG_INIT_FAILED:
            try:
                cause: BaseException | None = serialization.loads(memoryview(message)[1:])
            except BaseException:  # noqa: BLE001
                cause = None
            # The pool breaks when this worker has exited, as the standard pool
            # does: by then what the initializer logged through a
            # multiprocessing queue (a feeder thread) has been flushed.
            worker.init_failure = (
                "A process in the process pool was terminated abruptly: "
                f"its initializer {self.config.initializer!r} raised {cause!r}",
                cause,
            )

    def _on_outcome(self, worker: Worker, message: Message) -> None:
        (batch_id, start, count, flags, run_time), outcomes = protocol.decode_outcome(message, open_buffers)
        batch = worker.inflight.get(batch_id)
        if batch is None:
            return
        self.ledger.outcomes(batch.jobs[start : start + count], outcomes)
        batch.done = start + count
        if not flags & protocol.FINAL:
            return
        del worker.inflight[batch_id]
        self._release(worker, batch.blocks)
        batch.blocks = []
        if worker.timed == batch_id:
            worker.timed = None
        if flags & protocol.YIELDED:
            rest = batch.jobs[batch.done :]
            worker.sent -= len(rest)
            batch.jobs = batch.jobs[: batch.done]
            self.ledger.requeue(rest)  # never started: back to the lanes, untouched
        self.ledger.finish(batch, run_time)
        worker.done += len(batch.jobs)

    def _on_undecodable(self, batch: Batch, wrapped: BaseException, fn_failed: int) -> None:
        jobs = batch.jobs
        if fn_failed == protocol.SPLIT_FN_NOT_FOUND:
            # Sent by reference, and the worker has no such name (a function
            # defined under the main guard, say): it goes by value from now on.
            logger.debug("%r is not importable in the workers; sending it by value", batch.fn)
            serialization.send_by_value(batch.fn)
            self._resend.appendleft(Batch(jobs, batch.reason, batch.timing_key))
            return
        if fn_failed or len(jobs) == 1:
            what = "callable" if fn_failed else "call"
            error = TransportError(f"the {what} could not be unpickled in the worker: {wrapped!r}")
            error.__cause__ = wrapped
            self.ledger.fail_all(jobs, error)
            return
        # Some call of this batch does not unpickle over there; send each job
        # on its own so that only the guilty one fails.
        for job in jobs:
            self._resend.append(Batch([job], batch.reason, batch.timing_key))

    def _on_death(self, worker: Worker) -> None:
        self._read(worker, drain=True)  # whatever it sent before dying still counts
        assert self._selector is not None
        for fd in (worker.channel.readable_fd, worker.process.sentinel):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        if worker.writing:
            self._selector.unregister(worker.channel.writable_fd)
            worker.writing = False
        worker.process.join()
        exitcode = worker.process.exitcode
        unstarted = worker.control.unstarted() if worker.control is not None else 0
        del self._workers[worker.id]
        if worker.retiring:
            self._retiring -= 1
        batches = list(worker.inflight.values())
        worker.inflight.clear()
        close_worker(worker)
        for batch in batches:
            batch.blocks = []
            self.ledger.forget(batch)
        if batches or (exitcode not in (0, None) and not worker.killed):
            self.metrics.worker_died(worker.pid, exitcode)
            logger.warning(
                "worker pid %s %s with %d batches unfinished", worker.pid, describe_exit(exitcode), len(batches)
            )
        if worker.init_failure is not None:
            self._break(*worker.init_failure)
        elif not worker.ready and exitcode == 1 and not worker.killed and not self.state.stopped:
            # It died in multiprocessing's bootstrap, before running anything:
            # every worker started from here would too. Break with the cause.
            self._break(bootstrap_failure(worker.pid, self._ctx))
        if self.state.stopped:
            error = self.state.error or BrokenProcessPool()
            self.ledger.fail_all((j for b in batches for j in b.jobs[b.done :]), error)
            return
        error = WorkerCrashedError(worker.pid, exitcode)
        started = len(batches) - unstarted
        for position, batch in enumerate(batches):
            jobs = batch.jobs[batch.done :]
            if not jobs:
                continue
            if position >= started:
                # Never started (its claim token is still there): it goes
                # again as it was, and no attempt is charged.
                self._resend.append(Batch(jobs, batch.reason, batch.timing_key))
            elif len(jobs) > 1:
                # One of these jobs killed the worker (or it was killed while
                # running them): split in halves until the culprit is alone.
                half = len(jobs) // 2
                self._resend.append(Batch(jobs[:half], batch.reason, batch.timing_key))
                self._resend.append(Batch(jobs[half:], batch.reason, batch.timing_key))
            else:
                self.ledger.fail(jobs[0], error)

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
