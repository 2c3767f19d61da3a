"""What the process backend's manager does when ``select`` reports something.

Imports ``protocol``, ``serialization``, the errors, ``jobs``, ``worker``
(to open result buffers) and this package's ``workers``; ``manager`` (the
thread, dispatch, shutdown) builds on it through ``balance``.

The selector's key data is ``(tag, worker)``; per tag:

* ``RESULT``: the worker's channel has messages (``_read``): outcomes, which
  the ledger settles; a batch the worker could not unpickle (``MSG_SPLIT``),
  sent again by value, one job at a time, or failed; readiness, an
  initializer's failure, blocks pinned or skipped.
* ``WRITE``: the channel has room for output queued earlier (``_flush``).
* ``SENTINEL``: the worker died (``_on_death``): what it sent first still
  counts; its unstarted batches go again as they were, a started one is split
  in halves until the job that kills workers is alone, and that job fails.
* ``WAKE``: the wake-up pipe (handled by the manager itself).

Timed jobs' deadlines also end here (``_expire_timeouts``): a job that runs
over its timeout fails, and its worker is killed.
"""

from __future__ import annotations

import heapq
import selectors
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ... import protocol, serialization
from ...errors import JobTimeoutError, TransportError, WorkerCrashedError, describe_exit
from ...jobs import CHUNK_KINDS, Batch
from ...transport.base import Message
from ...worker import open_buffers
from ..base import Backend, logger
from .workers import Worker, bootstrap_failure, close_worker

__all__ = ["RESULT", "SENTINEL", "WAKE", "WRITE", "WorkerEvents"]

#: The selector's tags (the first item of each key's data).
WAKE, RESULT, SENTINEL, WRITE = range(4)


class WorkerEvents(Backend):
    """The manager's handlers for worker messages, output room, deaths and timeouts.

    Only the manager thread calls these; the attributes below are set up by
    ``ProcessBackend.__init__`` and ``_start``.
    """

    _ctx: Any
    _selector: selectors.BaseSelector | None
    _workers: dict[int, Worker]
    _retiring: int
    _resend: deque[Batch]
    # Deadlines of running jobs that have a timeout: (deadline, batch id, worker id).
    _deadlines: list[tuple[float, int, int]]

    def _settling_begins(self) -> None:
        """Called before outcomes are settled here (done-callbacks run); ``growth`` hooks in."""

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

    def _watch_output(self, worker: Worker) -> None:
        if worker.channel.has_output and not worker.writing:
            assert self._selector is not None
            channel = worker.channel
            self._selector.register(channel.writable_fd, channel.writable_event, (WRITE, worker))
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
        self._settling_begins()
        jobs = batch.jobs[start : start + count]
        batch.done = start + count
        if not flags & protocol.FINAL:
            self.ledger.outcomes(jobs, outcomes)
            return
        # The batch's last part: its bookkeeping goes first, so that a caller
        # waiting for one of these results gets the GIL as soon as they are
        # settled (this thread then goes back to its poll, and lets it go).
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
        worker.done += len(batch.jobs)
        try:
            self.ledger.timed(batch, run_time)
        finally:
            self.ledger.outcomes(jobs, outcomes)
            self.ledger.finish(batch, None)

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
