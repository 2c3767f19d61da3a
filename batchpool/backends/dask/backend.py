"""Dask backend: each batch is one task on a Dask cluster, fed by one manager thread.

Data flow (parent side)::

    submit() -> Batcher lanes  (jobs wait here: cancellable, reprioritisable, bounded)
                   |  take() while fewer than PREFETCH batches per cluster thread are out
                   v
    manager thread --- client.submit(run_remote, ...) ---> Dask scheduler -> a worker
        ^                                                    runs remote.run_remote:
        |  one condition: the wake flag (new jobs, a          the same runner as the
        |  state change) and the queue of finished tasks      other backends
        |                                                        |
        +---- Dask's event loop: "this task ended" <-------------+
        v
    client.gather(every finished task at once) -> tasks.collect
        v
    ledger: outcomes settled, retries queued; a batch whose worker died is split

The manager is the only thread that touches the books (what is in flight,
what to send again) and fetches results; Dask's event loop only queues the
tasks that ended. Nothing here settles a Future: the ledger does.

What the manager does with a task that ended (outcomes, a lost worker: split,
isolated, failed) or ran over its time limit is ``outcomes``, with the rules
for crashes and time limits; ``DaskBackend`` builds on ``DaskOutcomes``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from ... import protocol, serialization
from ...batching import Batcher
from ...jobs import Batch, Job
from ...ledger import Ledger
from ...metrics import Metrics
from ...options import PoolConfig
from ..base import drain_at_exit, logger
from .cluster import Connection, Scatter, done_callback
from .outcomes import DaskOutcomes
from .remote import run_remote
from .tasks import Sent, collect, worker_rows

__all__ = ["DaskBackend"]

#: Batches in flight per cluster thread: the one it runs and one waiting (Dask
#: places it on a worker at once), so a thread never idles for the round trip
#: between one batch and the next (measured: ~10 ms a batch without it, a
#: tenth of a 100 ms batch). The second one is cut only of jobs known to be
#: quick, or from a deep lane (``Batcher.take(prefetch=True)``), and only
#: behind batches known to end soon (``_may_prefetch``).
PREFETCH = 2
#: How often the manager asks the scheduler how many threads the cluster has
#: (an adaptive cluster grows and shrinks), at most.
THREADS_REFRESH = 1.0
#: How long ``worker_states`` keeps the scheduler's answer (the dashboard asks often).
INFO_TTL = 0.5


class DaskBackend(DaskOutcomes):
    """Runs each batch as one task on a Dask cluster (see the module docstring)."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics, ledger: Ledger) -> None:
        super().__init__(config, batcher, metrics, ledger)
        self._conn = Connection(config)
        self._client = self._conn.client
        self._scatter = Scatter(self._client)
        if self._conn.init_error is not None:
            error = BrokenProcessPool(
                f"A Dask worker's initializer {config.initializer!r} raised {self._conn.init_error!r}; "
                "the pool is not usable"
            )
            error.__cause__ = self._conn.init_error
            self.state.break_(error)
        # Guards the wake flag and the queue of finished tasks (filled on
        # Dask's event loop); the manager waits on it, alone.
        self._cond = threading.Condition(threading.Lock())
        self._wake_pending = False
        self._finished_tasks: deque[Sent] = deque()
        # The manager's own books (no lock: only the manager touches them).
        self._sent: dict[str, Sent] = {}
        self._resend: deque[Batch] = deque()
        self._isolate: deque[Batch] = deque()  # run with nothing else in flight
        self._exclusive: Sent | None = None
        self._deadlines: list[tuple[float, int, Job, int, Sent]] = []
        self._seq = itertools.count()
        self._threads = self._conn.threads()
        self._threads_at = time.monotonic()
        # The cluster's threads set how many batches are in flight, until the
        # pool is resized: then at most that many (resize on Dask bounds the
        # batches in flight, not the cluster).
        self._initial_target = self.state.target_workers
        # False while every thread of the cluster has a batch: a submit then
        # need not wake the manager (it looks again when a task finishes).
        self._can_dispatch = True
        self._info: tuple[float, list[tuple[int, int, str, int, bool]]] = (0.0, [])
        self.state.watch(self._wake)
        _live.add(self)
        self._manager = threading.Thread(target=self._run, name="batchpool-dask-manager", daemon=True)
        try:
            self._manager.start()
        except BaseException:
            self._conn.close()
            raise

    # -- called from other threads ------------------------------------------------------

    def notify(self) -> None:
        if self._can_dispatch and not self._wake_pending:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._wake_pending = True
            self._cond.notify()

    def _on_task_done(self, sent: Sent, future: Any = None) -> None:
        """Dask's event loop: the task ended. Only queues it (no waiting on the loop's own thread)."""
        with self._cond:
            self._finished_tasks.append(sent)
            self._cond.notify()

    def _watch(self, sent: Sent) -> None:
        # On Dask's event loop, not through Future.add_done_callback: that
        # runs callbacks on a ThreadPoolExecutor, which interpreter exit shuts
        # down before it lets the pools drain, and a batch would never end.
        self._client.loop.add_callback(done_callback, sent.future, partial(self._on_task_done, sent))

    def begin_shutdown(self) -> None:
        self._wake()

    def join(self, timeout: float | None = None) -> bool:
        if self._manager is threading.current_thread():
            return True
        self._manager.join(timeout)
        return not self._manager.is_alive()

    def abort(self, error: BaseException) -> None:
        self.state.abort(error)  # the watcher wakes the manager, which fails and cancels

    def compat_workers(self) -> dict[Any, Any]:
        return {}

    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        at, states = self._info
        now = time.monotonic()
        if now - at < INFO_TTL or not self._manager.is_alive():
            return states
        try:
            try:
                info = self._client.scheduler_info(n_workers=-1)  # all of them (newer distributed)
            except TypeError:
                info = self._client.scheduler_info()
            workers = info.get("workers", {})
        except Exception:  # noqa: BLE001 - stats() must not fail because the scheduler is away
            return states
        states = worker_rows(workers)
        self._info = (now, states)
        return states

    # -- the manager thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._finished_tasks and not self._wake_pending:
                        self._cond.wait(self._timeout())
                    finished = list(self._finished_tasks)
                    self._finished_tasks.clear()
                    # Cleared before looking at the lanes: a job queued after
                    # this finds the flag clear and wakes us again.
                    self._wake_pending = False
                if self.state.stopped:
                    self._fail_everything(self.state.error or BrokenProcessPool("the pool stopped"))
                    return
                if finished:
                    for sent, ok, value in collect(self._client, finished, self._watch):
                        self._on_report(sent, ok, value)
                del finished
                if self._deadlines:
                    self._expire_timeouts()
                self._dispatch()
                if self._idle_and_closing():
                    return
        except BaseException as exc:  # noqa: BLE001 - no Future may be left hanging
            logger.exception("batchpool dask manager thread failed; failing all jobs")
            error = BrokenProcessPool(f"the pool's manager thread failed: {exc!r}")
            error.__cause__ = exc
            self.state.break_(error)
            self._fail_everything(self.state.error or error)
        finally:
            self._close()

    def _timeout(self) -> float | None:
        deadline = self.batcher.next_deadline()
        if self._deadlines:
            first = self._deadlines[0][0]
            deadline = first if deadline is None else min(deadline, first)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _idle_and_closing(self) -> bool:
        return (
            self.batcher.closed
            and not self.batcher.pending
            and not self._resend
            and not self._isolate
            and all(sent.timed_out for sent in self._sent.values())
        )

    # -- dispatch -----------------------------------------------------------------------

    def _cluster_threads(self) -> int:
        now = time.monotonic()
        if now - self._threads_at > THREADS_REFRESH and len(self._sent) >= self._threads:
            self._threads = self._conn.threads()
            self._threads_at = now
        target = self.state.target_workers
        return self._threads if target == self._initial_target else max(1, min(self._threads, target))

    def _dispatch(self) -> None:
        if self.state.paused:
            self._can_dispatch = False  # resume() wakes us through the state watcher
            return
        limit = self._threads * PREFETCH
        while self._exclusive is None:
            threads = self._cluster_threads()
            busy = len(self._sent)
            limit = threads * (PREFETCH if self._may_prefetch() else 1)
            if self.state.target_workers != self._initial_target:
                limit = min(limit, threads)  # resized: at most that many batches in flight
            if busy >= limit:
                break
            if self._isolate:
                if busy:
                    break  # it waits until the cluster is idle
                batch = self._isolate.popleft()
            elif self._resend:
                batch = self._resend.popleft()
            else:
                taken = self.batcher.take(
                    max_jobs=self.batcher.max_batch_size,
                    # Split a short lane over every free slot, so the last
                    # batches end together rather than one long one last.
                    idle_workers=threads * PREFETCH - busy,
                    prefetch=busy >= threads,
                    workers=threads,
                )
                if taken is None:
                    break
                batch = taken
            if self.ledger.claim(batch):
                self._submit(batch, isolated=not busy and batch.reason == "isolate")
        self._can_dispatch = self._exclusive is None and len(self._sent) < limit

    def _may_prefetch(self) -> bool:
        """Whether a batch may wait on a busy worker: only behind batches that end soon.

        Dask places a task on a worker at once; one placed behind a long (or
        timed, maybe hung) task waits there until Dask's work stealing moves
        it, while another thread may be idle. So nothing is prefetched while
        a batch is in flight that is timed, of a callable never timed, expected
        to run over twice the target time, or overdue.
        """
        horizon = 2 * self.batcher.target_batch_time
        # A batch waits up to one batch on its worker before it runs: out
        # for over two horizons, it ran over its estimate.
        oldest = time.monotonic() - 2 * horizon
        for sent in self._sent.values():
            if sent.timed or sent.expected is None or sent.expected > horizon or sent.batch.t_dispatch < oldest:
                return False
        return True

    def _submit(self, batch: Batch, isolated: bool) -> None:
        try:
            fn_blob = serialization.dumps_callable(batch.fn)
            calls, data = self._scatter.prepare(batch.jobs)
            calls_blob, bad, _ = serialization.dumps_each(calls)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ fails the batch, not the pool
            self.ledger.forget(batch)
            self.ledger.fail_all(batch.jobs, exc)
            self._scatter.settled(batch.jobs)
            return
        if bad:
            # Only the jobs whose call does not pickle fail; and only they are
            # left out of the calls (dumps_each kept the others, in order).
            for i, error in bad.items():
                self.ledger.fail_all([batch.jobs[i]], error)
            self._scatter.settled(batch.jobs)
            batch.jobs = [job for i, job in enumerate(batch.jobs) if i not in bad]
            if not batch.jobs:
                self.ledger.forget(batch)
                return
        batch.mark_dispatched()
        wait = batch.t_dispatch - batch.mean_submit if batch.fresh else None
        self.metrics.batch_sent(len(batch.jobs), batch.reason, wait)
        for other in self._sent.values():
            other.exclusive = False  # it no longer runs alone
        measured = self.batcher.estimate(batch.timing_key)
        estimate = measured[0] if measured is not None else None
        sent = Sent(batch, f"{self._conn.prefix}-{batch.id}", exclusive=not self._sent, estimate=estimate)
        if isolated:
            self._exclusive = sent
        # Dask runs higher priorities first: REALTIME (0) becomes 2, BULK (2) 0.
        priority = 2 - int(batch.jobs[0].opts.priority)
        sent.future = self._client.submit(
            run_remote,
            protocol.PROTOCOL_VERSION,
            batch.id,
            batch.kind,
            fn_blob,
            calls_blob,
            data,
            key=sent.key,
            pure=False,
            priority=priority,
            retries=0,
        )
        self._sent[sent.key] = sent
        timeout = batch.jobs[0].opts.timeout
        if timeout is not None:
            deadline = batch.t_dispatch + timeout
            for job, attempt in zip(batch.jobs, sent.attempts, strict=True):
                heapq.heappush(self._deadlines, (deadline, next(self._seq), job, attempt, sent))
        self._watch(sent)

    # -- stopping -----------------------------------------------------------------------

    def _fail_everything(self, error: BaseException) -> None:
        jobs = [job for batch in (*self._resend, *self._isolate) for job in batch.jobs]
        self._resend.clear()
        self._isolate.clear()
        for sent in self._sent.values():
            jobs.extend(sent.batch.jobs)
            if sent.future is not None:
                sent.future.cancel()
        self._sent.clear()
        self.ledger.fail_all(jobs, error)
        self.ledger.abort(error)

    def _close(self) -> None:
        """The manager's last act: drop what is left on the cluster and let the cluster go."""
        for sent in self._sent.values():
            if sent.future is not None:
                try:
                    sent.future.cancel()
                except Exception:  # noqa: BLE001 - a closed client: nothing left to cancel
                    logger.debug("batchpool: cancel failed", exc_info=True)
        self._sent.clear()
        self._deadlines.clear()
        self._scatter.clear()
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - shutdown goes on; the cluster is the user's problem now
            logger.exception("batchpool: closing the Dask connection failed")


_live: weakref.WeakSet[DaskBackend] = weakref.WeakSet()


def _drain_at_exit() -> None:
    """Interpreter exit: finish the Dask pools' work while Dask can still run it.

    Registered after ``distributed`` imported ``concurrent.futures.thread``,
    so it runs before that module's exit hook, which shuts down every
    ThreadPoolExecutor, the in-process scheduler's among them (batchpool's
    own exit hook, registered earlier, would come too late).
    """
    drain_at_exit(list(_live))


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_drain_at_exit)
