"""Thread backend: worker threads in this process, no serialization.

Threads are started on demand, like ``ThreadPoolExecutor``'s: a submit that
finds no idle thread starts one, up to ``max_workers``. An idle thread waits
inside ``Batcher.take_wait``; the batch it gets is run job by job and each
Future is resolved as soon as its job returns.

Timeouts: a thread cannot be stopped from outside. A watchdog thread (started
with the first job that has a timeout) fails the job's Future on time with
``TimeoutError``, marks its thread abandoned and starts a replacement; the
abandoned thread drops the job's late result and exits when the job returns.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from concurrent.futures import InvalidStateError
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from ..batching import Batcher
from ..jobs import BATCHED_BISECT, BATCHED_KINDS, CHUNK_KINDS, CHUNKS, Batch, Job
from ..metrics import Metrics
from ..options import PoolConfig
from ..worker import run_batched, run_chunk
from .base import Backend, fail_jobs, logger, settle_failure

__all__ = ["ThreadBackend"]

_pool_numbers = itertools.count()


def _identity(exc: BaseException) -> BaseException:
    return exc


class ThreadBackend(Backend):
    """Runs batches on up to ``max_workers`` threads of this process."""

    def __init__(self, config: PoolConfig, batcher: Batcher, metrics: Metrics) -> None:
        super().__init__(config, batcher, metrics)
        self._prefix = config.thread_name_prefix or f"BatchPoolExecutor-{next(_pool_numbers)}"
        self._threads: list[threading.Thread] = []
        self._abandoned: set[threading.Thread] = set()
        # Guards thread creation and the abandoned set (never held while jobs run).
        self._lock = threading.Lock()
        self._names = itertools.count()
        self._broken: BaseException | None = None
        self._aborted: BaseException | None = None
        # Jobs with a timeout that are running now: job id -> job. Whoever pops
        # a job first (its thread or the watchdog) settles its Future.
        self._timed: dict[int, Job] = {}
        self._deadlines: list[tuple[float, int, threading.Thread]] = []
        self._watch = threading.Condition(self._lock)
        self._watchdog: threading.Thread | None = None
        # Jobs running now, so that abort() can fail them.
        self._running: dict[int, Job] = {}
        self._busy: set[threading.Thread] = set()

    def notify(self) -> None:
        if self.batcher.waiters or self._live() >= self.config.max_workers:
            return  # an idle thread was woken by put(), or the pool is full
        self._spawn()

    def _live(self) -> int:
        return len(self._threads) - len(self._abandoned)

    def _spawn(self) -> None:
        with self._lock:
            if self._live() >= self.config.max_workers or self._broken is not None or self._aborted:
                return
            thread = threading.Thread(
                target=self._work,
                name=f"{self._prefix}_{next(self._names)}",
                daemon=True,  # joined by the executor's exit hook, not by threading
            )
            thread.start()
            self._threads.append(thread)

    def _stop(self) -> bool:
        return self._broken is not None or self._aborted is not None or threading.current_thread() in self._abandoned

    def _work(self) -> None:
        config = self.config
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
            except BaseException:
                logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
                self._initializer_failed()
                return
        while True:
            batch = self.batcher.take_wait(stop=self._stop)
            if batch is None:
                return
            self._run(batch)
            # Drop the batch before waiting again: it holds the callable and the
            # arguments, which the user expects to be freed once a job is done.
            del batch

    def _run(self, batch: Batch) -> None:
        claimed = batch.claim()
        self.metrics.jobs_cancelled(batch.cancelled)
        if not claimed:
            return
        batch.mark_dispatched()
        self.metrics.batch_sent(len(batch.jobs), batch.reason, batch.t_dispatch - batch.mean_submit)
        self._busy.add(threading.current_thread())
        t0 = time.perf_counter()
        if batch.kind in BATCHED_KINDS:
            self._run_batched(batch)
        else:
            self._run_calls(batch)
        run_time = time.perf_counter() - t0
        self._busy.discard(threading.current_thread())
        batch.mark_done(run_time)
        self.batcher.record(batch.timing_key, len(batch.jobs), run_time)
        self.metrics.batch_done(len(batch.jobs), run_time, time.monotonic() - batch.mean_submit, batch.record)

    def _run_calls(self, batch: Batch) -> None:
        fn = batch.fn
        chunks = batch.kind in CHUNK_KINDS
        star = batch.kind == CHUNKS
        running = self._running
        me = threading.current_thread()
        job = None
        ok = 0
        for job in batch.jobs:
            if me in self._abandoned:
                # Our thread was given up on (a timeout): the rest of the batch
                # goes back to the lanes for the replacement thread.
                for rest in batch.jobs[batch.jobs.index(job) :]:
                    self.batcher.put_delayed(rest, 0.0)
                break
            timeout = job.opts.timeout
            if timeout is not None:
                self._watch_job(job, timeout)
            running[job.id] = job
            try:
                if chunks:
                    result: Any = run_chunk(fn, job.args[0], _identity, star)
                elif job.kwargs:
                    result = fn(*job.args, **job.kwargs)
                else:
                    result = fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - the job's own outcome
                if self._finish(job, timeout):
                    settle_failure(job, exc, self.batcher, self.metrics)
            else:
                if self._finish(job, timeout):
                    try:
                        job.future.set_result(result)
                        ok += 1
                    except InvalidStateError:
                        pass  # failed by abort() meanwhile
        self.metrics.results(ok)
        # A raised exception's traceback holds this frame; clearing the locals
        # breaks the cycle exception -> frame -> job -> future -> exception.
        del job, fn, batch

    def _finish(self, job: Job, timeout: float | None) -> bool:
        """True when this thread, not the watchdog or abort(), settles the job."""
        self._running.pop(job.id, None)
        if timeout is None:
            return self._aborted is None
        return self._timed.pop(job.id, None) is not None

    def _run_batched(self, batch: Batch) -> None:
        jobs = batch.jobs
        for job in jobs:
            self._running[job.id] = job
        out = run_batched(batch.fn, [job.args[0] for job in jobs], _identity, batch.kind == BATCHED_BISECT)
        for i, job in enumerate(jobs):
            if self._running.pop(job.id, None) is None:
                continue
            if i in out.errors:
                settle_failure(job, out.errors[i], self.batcher, self.metrics)
            else:
                job.future.set_result(out.values[i])
                self.metrics.results(1)

    # -- timeouts --------------------------------------------------------------------

    def _watch_job(self, job: Job, timeout: float) -> None:
        with self._lock:
            self._timed[job.id] = job
            heapq.heappush(self._deadlines, (time.monotonic() + timeout, job.id, threading.current_thread()))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch_loop, name=f"{self._prefix}_watchdog", daemon=True)
                self._watchdog.start()
            self._watch.notify()

    def _watch_loop(self) -> None:
        with self._lock:
            while True:
                if self._done_watching():
                    return
                now = time.monotonic()
                expired = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    expired.append(heapq.heappop(self._deadlines))
                if not expired:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._watch.wait(wait)
                    continue
                self._lock.release()
                try:
                    for _, job_id, thread in expired:
                        self._expire(job_id, thread)
                finally:
                    self._lock.acquire()

    def _done_watching(self) -> bool:
        return not self._deadlines and (self.batcher.closed or self._aborted is not None) and not self._timed

    def _expire(self, job_id: int, thread: threading.Thread) -> None:
        job = self._timed.pop(job_id, None)
        if job is None:
            return  # finished in time
        self._running.pop(job_id, None)
        timeout = job.opts.timeout
        logger.warning("job %s ran over its %.3g s timeout; its thread %s is abandoned", job_id, timeout, thread.name)
        with self._lock:
            self._abandoned.add(thread)
        settle_failure(job, TimeoutError(f"job ran longer than its timeout of {timeout} s"), self.batcher, self.metrics)
        self._spawn()  # the replacement
        self.batcher.wake_all()

    # -- lifecycle ---------------------------------------------------------------------

    def _initializer_failed(self) -> None:
        error = BrokenThreadPool("A thread initializer failed, the thread pool is not usable anymore")
        self._broken = error
        self.batcher.close(str(error), error=BrokenThreadPool)
        fail_jobs(self.batcher.drain(), error, self.metrics)
        self.batcher.wake_all()

    def begin_shutdown(self) -> None:
        self.batcher.wake_all()
        with self._lock:
            self._watch.notify_all()

    def abort(self, error: BaseException) -> None:
        self._aborted = error
        self.batcher.close(str(error))
        fail_jobs(self.batcher.drain(), error, self.metrics)
        jobs = list(self._running.values())
        self._running.clear()
        self._timed.clear()
        fail_jobs(jobs, error, self.metrics)
        self.batcher.wake_all()
        with self._lock:
            self._deadlines.clear()
            self._watch.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        threads = list(self._threads)
        if self._watchdog is not None:
            threads.append(self._watchdog)
        for thread in threads:
            if thread is current:  # shutdown() from a done-callback on a worker
                continue
            if thread in self._abandoned or self._aborted is not None:
                continue  # cannot be stopped; it exits when its job returns
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        return True

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    def compat_workers(self) -> dict[Any, Any]:
        return {t.ident: t for t in self._threads if t not in self._abandoned}

    def in_flight(self) -> int:
        return len(self._running)

    def worker_states(self) -> list[tuple[int, int, str, int, bool]]:
        pid = os.getpid()
        busy = self._busy
        return [
            (i, pid, "busy" if t in busy else "idle", 0, False)
            for i, t in enumerate(list(self._threads))
            if t.is_alive() and t not in self._abandoned
        ]
