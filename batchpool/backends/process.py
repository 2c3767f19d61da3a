"""Process backend: worker processes fed by one manager thread.

Data flow (parent side)::

    submit() -> Batcher lanes
                   |  take() when a worker has a free slot
                   v
    manager thread --- channel.send(batch) ---> worker process (worker.py)
        ^                                            |
        |  selector.select() on, all at once:        | outcomes, streamed
        |    every worker's result channel  <--------+
        |    every worker's sentinel (death)
        |    every channel with output queued (room to write)
        |    the wake-up pipe (new jobs, shutdown)
        v
    Futures resolved; dead workers' unfinished jobs failed; workers respawned

One thread does all of it and never blocks anywhere but in ``select``: no
polling, and no state shared with submitters beyond the Batcher and two flags
(``_wake_pending``, ``_can_dispatch``) that keep ``notify()`` nearly free.

Workers start on demand (except with ``fork``, see ``_start``). A worker holds
at most ``PREFETCH`` batches, and a second one only when its jobs are known
to be quick; everything else waits in the Batcher, where it can still be
cancelled, reprioritised, or batched with later arrivals.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from concurrent.futures import InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .. import serialization
from ..batching import Batcher
from ..errors import TransportError, WorkerCrashedError, describe_exit
from ..jobs import Batch
from ..metrics import Metrics
from ..options import OOB_THRESHOLD, PoolConfig
from ..transport import PipeTransport, ring, shm
from ..transport.base import Channel, Message
from ..worker import (
    MSG_DROP,
    MSG_INIT_FAILED,
    MSG_OUTCOME,
    MSG_PINNED,
    MSG_SPLIT,
    MSG_STOP,
    WorkerSpec,
    encode_batch,
    parse_outcome,
    unpack,
    worker_main,
)
from .base import Backend, fail_jobs, logger, settle_failure

__all__ = ["ProcessBackend"]

#: Batches one worker may hold at once: the one it runs and one waiting, so it
#: never idles between batches. The second goes out only for quick jobs.
PREFETCH = 2
#: Seconds a stopping worker gets to exit before it is terminated, then killed.
STOP_GRACE = 5.0
#: Out-of-band bytes one batch may carry: a batch of more (and more than one
#: job) is halved before anything is copied, so that large payloads spread
#: over the workers, copying overlaps with running, and the shared memory in
#: flight stays bounded. (8 MB arrays, 2 workers: ~9 GB/s at 8 MiB, ~6.5 at 32.)
MAX_BATCH_BYTES = 8 * 2**20
#: Free arena bytes kept per worker for reuse (two batches' worth and then some).
ARENA_KEEP = 128 * 2**20

_WAKE, _RESULT, _SENTINEL, _WRITE = range(4)
_worker_ids = itertools.count()
_pool_ids = itertools.count()


class _Worker:
    """The parent's record of one worker process."""

    __slots__ = (
        "arena",
        "channel",
        "done",
        "id",
        "inflight",
        "killed",
        "pid",
        "process",
        "sent",
        "timed",
        "writing",
    )

    def __init__(self, process: Any, channel: Channel, arena: shm.Arena | None) -> None:
        self.id = next(_worker_ids)
        self.process = process
        self.pid: int = process.pid
        self.channel = channel
        self.arena = arena  # its task buffers' shared memory; None: all in band
        self.inflight: dict[int, Batch] = {}
        self.sent = 0  # jobs sent, against max_tasks_per_child
        self.done = 0  # jobs finished
        self.writing = False  # registered for writability
        self.timed: int | None = None  # id of the batch with a timeout it runs, if any
        self.killed = ""  # why we killed it, if we did


class ProcessBackend(Backend):
    """Runs batches on up to ``max_workers`` worker processes."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics) -> None:
        super().__init__(config, batcher, metrics)
        assert config.mp_context is not None  # filled in by make_config
        self._ctx = config.mp_context
        # "shm": rings for messages, arena blocks for large buffers, where the
        # system has them (Linux); the pipe transport everywhere else.
        self._shm_prefix: str | None = None
        self._transport: PipeTransport | ring.RingTransport = PipeTransport(self._ctx)
        if config.transport == "shm" and shm.available() and ring.available():
            self._shm_prefix = shm.pool_prefix(f"{next(_pool_ids)}")
            self._transport = ring.RingTransport()
        self._workers: dict[int, _Worker] = {}
        self._resend: deque[Batch] = deque()
        self._broken: BaseException | None = None
        self._manager: threading.Thread | None = None
        # Guards the one-time start only; the manager owns everything after.
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
        self._abort: BaseException | None = None

    # -- called from submitting threads -----------------------------------------

    def notify(self) -> None:
        if self._manager is None:
            if self._broken is None:
                self._start()
        elif self._can_dispatch and not self._wake_pending:
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
            if self._manager is not None:
                return
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            if self._shm_prefix is not None:
                shm.cleanup_orphans()  # left by pools whose parent was killed
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
            # The first worker (with fork: every worker) starts here, in the
            # submitting thread, as with ProcessPoolExecutor. For fork this is
            # a matter of safety: a fork from a threaded process can inherit a
            # lock some other thread held, so fork before the manager exists.
            # For the others it gives the manager time to dispatch the first
            # batch while this thread waits on the start, so a shutdown right
            # after a burst of submits finds work already running.
            first = self.config.max_workers if self._ctx.get_start_method() == "fork" else 1
            for _ in range(first):
                if not self._spawn():
                    return
            manager = threading.Thread(target=self._run, name="batchpool-manager", daemon=True)
            try:
                manager.start()
            except RuntimeError as exc:  # e.g. "can't create new thread at interpreter shutdown"
                error = BrokenProcessPool(f"the pool's manager thread could not start: {exc}")
                error.__cause__ = exc
                self._broken = error
                self._fail_everything(error)
                self._stop_workers()
                return
            self._manager = manager

    def begin_shutdown(self) -> None:
        if self._manager is not None:
            self._wake()

    def join(self, timeout: float | None = None) -> bool:
        manager = self._manager
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout)
            return not manager.is_alive()
        return True

    def abort(self, error: BaseException) -> None:
        self._abort = error
        if self._manager is not None:
            self._wake()
        else:
            self._fail_everything(error)

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    @property
    def manager_thread(self) -> threading.Thread | None:
        """The manager thread, once started (for ProcessPoolExecutor-style joins)."""
        return self._manager

    def compat_workers(self) -> dict[Any, Any]:
        return {w.pid: w.process for w in list(self._workers.values())}

    def in_flight(self) -> int:
        return sum(len(b.jobs) - b.done for w in list(self._workers.values()) for b in list(w.inflight.values()))

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
                self._dispatch()
                if self._finished():
                    return
                dead: list[_Worker] = []
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
                if self._broken is not None:
                    self._fail_everything(self._broken)
                    return
                if self._abort is not None:
                    self._fail_everything(self._abort)
                    return
        except BaseException as exc:  # noqa: BLE001 - no Future may be left hanging
            logger.exception("batchpool manager thread failed; failing all jobs")
            error = BrokenProcessPool(f"the pool's manager thread failed: {exc!r}")
            error.__cause__ = exc
            self._broken = error
            self._fail_everything(error)
        finally:
            self._stop_workers()

    def _timeout(self) -> float | None:
        deadline = self.batcher.next_deadline()
        if self._deadlines:
            first = self._deadlines[0][0]
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
            timeout = batch.jobs[0].opts.timeout
            # The only way to stop a running call for real: its process goes.
            # Nothing else runs there (timed jobs go alone, with no prefetch).
            worker.killed = f"job {batch.jobs[0].id} ran over its {timeout} s timeout"
            logger.warning("worker pid %s killed: %s", worker.pid, worker.killed)
            worker.process.kill()
            for job in batch.jobs[batch.done :]:
                settle_failure(
                    job, TimeoutError(f"job ran longer than its timeout of {timeout} s"), self.batcher, self.metrics
                )

    def _finished(self) -> bool:
        return (
            self.batcher.closed
            and not self.batcher.pending
            and not self._resend
            and not any(w.inflight for w in self._workers.values())
        )

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._broken is None and (self._resend or self.batcher.pending):
            worker = self._pick_worker()
            idle = worker is not None and not worker.inflight
            if not idle and len(self._workers) < self.config.max_workers:
                if not self._spawn():
                    return
                continue
            if worker is None:
                break
            if self._resend and idle:
                batch = self._resend.popleft()
            else:
                free = sum(1 for w in self._workers.values() if not w.inflight)
                taken = self.batcher.take(
                    max_jobs=self._budget(worker),
                    idle_workers=free + self.config.max_workers - len(self._workers),
                    prefetch=not idle,
                    workers=self.config.max_workers,
                )
                if taken is None:
                    break
                claimed = taken.claim()
                self.metrics.jobs_cancelled(taken.cancelled)
                if not claimed:
                    continue
                batch = taken
            self._send(worker, batch)
        self._can_dispatch = len(self._workers) < self.config.max_workers or any(
            len(w.inflight) < PREFETCH and self._budget(w) for w in self._workers.values()
        )

    def _budget(self, worker: _Worker) -> int:
        if self._max_tasks is None:
            return self.batcher.max_batch_size
        return max(0, self._max_tasks - worker.sent)

    def _pick_worker(self) -> _Worker | None:
        best: _Worker | None = None
        for worker in self._workers.values():
            if not self._budget(worker) or len(worker.inflight) >= PREFETCH or worker.killed:
                continue
            if worker.timed is not None:
                continue  # nothing may wait behind a job that may be killed
            if not worker.inflight:
                return worker
            if best is None or len(worker.inflight) < len(best.inflight):
                best = worker
        return best

    def _send(self, worker: _Worker, batch: Batch) -> None:
        try:
            fn_blob = serialization.dumps_callable(batch.fn)
        except Exception as exc:  # noqa: BLE001 - the callable fails every job of its batch
            fail_jobs(batch.jobs, exc, self.metrics)
            return
        arena = worker.arena
        threshold = OOB_THRESHOLD if arena is not None else None
        calls_blob, bad, big = serialization.dumps_each([(j.args, j.kwargs) for j in batch.jobs], threshold)
        if bad:
            for i, error in bad.items():
                fail_jobs([batch.jobs[i]], error, self.metrics)
            batch.jobs = [j for i, j in enumerate(batch.jobs) if i not in bad]
            if not batch.jobs:
                return
        if big and len(batch.jobs) > 1 and sum(buf.nbytes for buf in big) > MAX_BATCH_BYTES:
            half = len(batch.jobs) // 2
            self._resend.appendleft(Batch(batch.jobs[half:], batch.reason, batch.timing_key))
            self._resend.appendleft(Batch(batch.jobs[:half], batch.reason, batch.timing_key))
            return
        refs: list[tuple[int, int, int, str]] = []
        if big:
            assert arena is not None
            try:
                block, offsets = arena.put(big)
            except OSError as exc:
                # /dev/shm is full (or gone): slower, but the jobs run.
                logger.warning("no shared memory for a batch (%s); it goes through the ring", exc)
                calls_blob, _, _ = serialization.dumps_each([(j.args, j.kwargs) for j in batch.jobs], None)
            else:
                batch.blocks.append(block)
                name = "" if block.shown else block.name
                block.shown = True
                refs = [(block.id, offset, buf.nbytes, name) for buf, offset in zip(big, offsets, strict=True)]
        batch.worker = worker
        batch.mark_dispatched()
        self.metrics.batch_sent(len(batch.jobs), batch.reason, batch.t_dispatch - batch.mean_submit)
        worker.inflight[batch.id] = batch
        worker.sent += len(batch.jobs)
        timeout = batch.jobs[0].opts.timeout
        if timeout is not None:
            worker.timed = batch.id
            heapq.heappush(self._deadlines, (time.monotonic() + timeout, batch.id, worker.id))
        worker.channel.send(*encode_batch(batch.id, batch.kind, fn_blob, serialization.oob_header(refs), calls_blob))
        self._watch_output(worker)

    def _watch_output(self, worker: _Worker) -> None:
        if worker.channel.has_output and not worker.writing:
            assert self._selector is not None
            channel = worker.channel
            self._selector.register(channel.writable_fd, channel.writable_event, (_WRITE, worker))
            worker.writing = True

    def _release(self, worker: _Worker, batch: Batch) -> None:
        """Take a settled batch's arena blocks back (telling the worker what to unmap)."""
        if batch.blocks and worker.arena is not None:
            dropped = worker.arena.release(batch.blocks)
            if dropped and not worker.killed:
                worker.channel.send(MSG_DROP + serialization.dumps(dropped))
                self._watch_output(worker)
        batch.blocks = []

    def _flush(self, worker: _Worker) -> None:
        if worker.channel.flush() and worker.writing:
            assert self._selector is not None
            self._selector.unregister(worker.channel.writable_fd)
            worker.writing = False

    # -- workers ------------------------------------------------------------------

    def _spawn(self) -> bool:
        try:
            channel = self._transport.channel()
        except OSError as exc:  # out of descriptors or memory: the pool cannot grow
            error = BrokenProcessPool(f"a worker's channel could not be made: {exc!r}")
            error.__cause__ = exc
            self._broken = error
            if self._manager is None:
                self._fail_everything(error)
                self._stop_workers()
            return False
        spec = WorkerSpec(
            worker_channel=self._transport.worker_channel,
            channel_end=channel.worker_end(),
            initializer=self.config.initializer,
            initargs=self.config.initargs,
            max_tasks=self._max_tasks,
            shm_prefix=self._shm_prefix,
            oob_threshold=OOB_THRESHOLD,
        )
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(spec,), name="batchpool-worker"
        )
        try:
            process.start()
        except BaseException as exc:  # noqa: BLE001 - the pool cannot run anything
            channel.close()
            error = BrokenProcessPool(f"a worker process could not be started: {exc!r}")
            error.__cause__ = exc
            self._broken = error
            if self._manager is None:  # called from _start(): nobody else will
                self._fail_everything(error)
                self._stop_workers()
            return False
        channel.after_start()
        arena = None if self._shm_prefix is None else shm.Arena(self._shm_prefix, ARENA_KEEP)
        worker = _Worker(process, channel, arena)
        self._workers[worker.id] = worker
        assert self._selector is not None
        self._selector.register(channel.readable_fd, selectors.EVENT_READ, (_RESULT, worker))
        self._selector.register(process.sentinel, selectors.EVENT_READ, (_SENTINEL, worker))
        return True

    def _read(self, worker: _Worker) -> None:
        channel = worker.channel
        try:
            while channel.poll():
                self._on_message(worker, channel.recv())
        except (EOFError, OSError):
            # The worker is gone; its sentinel fires next and settles its jobs.
            # An EOF'd pipe is always readable, so stop watching it now.
            assert self._selector is not None
            try:
                self._selector.unregister(channel.readable_fd)
            except (KeyError, ValueError):
                pass

    def _on_message(self, worker: _Worker, message: Message) -> None:
        tag = message[:1]
        if tag == MSG_OUTCOME:
            self._on_outcome(worker, message)
        elif tag == MSG_SPLIT:
            batch_id, wrapped, fn_failed = serialization.loads(memoryview(message)[1:])
            batch = worker.inflight.pop(batch_id, None)
            if batch is not None:
                self._release(worker, batch)
                worker.sent -= len(batch.jobs)  # never ran: not against its task budget
                self._on_undecodable(batch, wrapped, fn_failed)
        elif tag == MSG_PINNED:
            if worker.arena is not None:
                worker.arena.pin(serialization.loads(memoryview(message)[1:]))
        elif tag == MSG_INIT_FAILED:
            try:
                cause: BaseException | None = serialization.loads(memoryview(message)[1:])
            except BaseException:  # noqa: BLE001
                cause = None
            error = BrokenProcessPool(
                "A process in the process pool was terminated abruptly: "
                f"its initializer {self.config.initializer!r} raised {cause!r}"
            )
            error.__cause__ = cause
            self._broken = error

    def _on_outcome(self, worker: _Worker, message: Message) -> None:
        batch_id, start, count, final, run_time, payload = parse_outcome(message)
        batch = worker.inflight.get(batch_id)
        if batch is None:
            return
        jobs = batch.jobs[start : start + count]
        try:
            values, errors = unpack(payload)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ included
            error = TransportError(f"the result could not be unpickled in the parent: {exc!r}")
            error.__cause__ = exc
            fail_jobs(jobs, error, self.metrics)
        else:
            if errors:
                for i, error in errors.items():
                    settle_failure(jobs[i], error, self.batcher, self.metrics)
            ok = 0
            for i, (job, value) in enumerate(zip(jobs, values, strict=True)):
                if errors and i in errors:
                    continue
                try:
                    job.future.set_result(value)
                    ok += 1
                except InvalidStateError:
                    pass
            self.metrics.results(ok)
        batch.done = start + count
        if final:
            del worker.inflight[batch_id]
            self._release(worker, batch)
            if worker.timed == batch_id:
                worker.timed = None
            batch.mark_done(run_time)
            self.batcher.record(batch.timing_key, len(batch.jobs), run_time)
            self.metrics.batch_done(len(batch.jobs), run_time, time.monotonic() - batch.mean_submit, batch.record)
            worker.done += len(batch.jobs)

    def _on_undecodable(self, batch: Batch, wrapped: BaseException, fn_failed: bool) -> None:
        jobs = batch.jobs
        if fn_failed or len(jobs) == 1:
            what = "callable" if fn_failed else "call"
            error = TransportError(f"the {what} could not be unpickled in the worker: {wrapped!r}")
            error.__cause__ = wrapped
            fail_jobs(jobs, error, self.metrics)
            return
        # Some call of this batch does not unpickle over there; send each job
        # on its own so that only the guilty one fails.
        for job in jobs:
            self._resend.append(Batch([job], batch.reason, batch.timing_key))

    def _on_death(self, worker: _Worker) -> None:
        self._read(worker)  # whatever it sent before dying still counts
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
        worker.channel.close()
        del self._workers[worker.id]
        batches = list(worker.inflight.values())
        worker.inflight.clear()
        self._forget_memory(worker, batches)
        if worker.killed:
            return  # we killed it (a timeout); its job is settled already
        if batches or exitcode not in (0, None):
            self.metrics.worker_died(worker.pid, exitcode)
            logger.warning(
                "worker pid %s %s with %d batches unfinished",
                worker.pid,
                describe_exit(exitcode),
                len(batches),
            )
        if self._broken is not None or self._abort is not None:
            return  # _fail_everything() settles them
        error = WorkerCrashedError(worker.pid, exitcode)
        for position, batch in enumerate(batches):
            jobs = batch.jobs[batch.done :]
            if position > 0:
                # A prefetched batch never started: it goes again, as it was.
                self._resend.append(Batch(jobs, batch.reason, batch.timing_key))
            elif len(jobs) > 1:
                # One of these jobs killed the worker (or it was killed while
                # running them): split in halves until the culprit is alone.
                half = len(jobs) // 2
                self._resend.append(Batch(jobs[:half], batch.reason, batch.timing_key))
                self._resend.append(Batch(jobs[half:], batch.reason, batch.timing_key))
            elif jobs:
                settle_failure(jobs[0], error, self.batcher, self.metrics)

    @staticmethod
    def _forget_memory(worker: _Worker, batches: list[Batch]) -> None:
        """A worker exited or died: its arena goes with it, its batches' blocks too."""
        for batch in batches:
            batch.blocks = []
        if worker.arena is not None:
            worker.arena.close()

    def _fail_everything(self, error: BaseException) -> None:
        self.batcher.close(str(error), error=type(error))
        jobs = self.batcher.drain()
        for worker in self._workers.values():
            for batch in worker.inflight.values():
                jobs.extend(batch.jobs[batch.done :])
                batch.blocks = []  # the arena goes when the worker stops
            worker.inflight.clear()
        for batch in self._resend:
            jobs.extend(batch.jobs)
        self._resend.clear()
        fail_jobs(jobs, error, self.metrics)

    def _stop_workers(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive():
                worker.channel.send(MSG_STOP)
                worker.channel.flush()
        deadline = time.monotonic() + (0.0 if self._abort is not None else STOP_GRACE)
        for worker in workers:
            if self._abort is None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.terminate()
                worker.process.join(1.0)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.channel.close()
            self._forget_memory(worker, [])
        self._workers.clear()
        if self._shm_prefix is not None:
            # Results a dead worker wrote but never announced, and anything
            # else of this pool's: no segment outlives the pool.
            shm.cleanup_prefix(self._shm_prefix)
        if self._selector is not None:
            self._selector.close()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1
