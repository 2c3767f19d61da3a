"""Thread backend: worker threads in this process, no serialization.

Threads are started on demand, like ``ThreadPoolExecutor``'s: a submit that
finds no idle thread starts one, up to ``max_workers``. An idle thread waits
inside ``Batcher.take_wait``; the batch it gets is run job by job and each
Future is resolved as soon as its job returns.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from ..batching import Batcher
from ..jobs import CALLS, Batch
from ..options import PoolConfig
from ..worker import run_chunk
from .base import Backend, fail_jobs

__all__ = ["ThreadBackend"]

_pool_numbers = itertools.count()


def _identity(exc: BaseException) -> BaseException:
    return exc


class ThreadBackend(Backend):
    """Runs batches on up to ``max_workers`` threads of this process."""

    def __init__(self, config: PoolConfig, batcher: Batcher) -> None:
        super().__init__(config, batcher)
        self._prefix = config.thread_name_prefix or f"BatchPoolExecutor-{next(_pool_numbers)}"
        self._threads: list[threading.Thread] = []
        # Guards thread creation only (never held while jobs run).
        self._spawn_lock = threading.Lock()
        self._broken: BaseException | None = None

    def notify(self) -> None:
        if self.batcher.waiters or len(self._threads) >= self.config.max_workers:
            return  # an idle thread was woken by put(), or the pool is full
        with self._spawn_lock:
            if len(self._threads) >= self.config.max_workers or self._broken is not None:
                return
            thread = threading.Thread(
                target=self._work,
                name=f"{self._prefix}_{len(self._threads)}",
                daemon=True,  # joined by the executor's exit hook, not by threading
            )
            thread.start()
            self._threads.append(thread)

    def _stop(self) -> bool:
        return self._broken is not None

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
        jobs = batch.jobs = [job for job in batch.jobs if job.future.set_running_or_notify_cancel()]
        batch.mark_dispatched()
        fn = batch.fn
        chunks = batch.kind != CALLS
        t0 = time.perf_counter()
        job = None
        for job in jobs:
            try:
                if chunks:
                    result: Any = run_chunk(fn, job.args[0], _identity)
                elif job.kwargs:
                    result = fn(*job.args, **job.kwargs)
                else:
                    result = fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - the job's own outcome
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
        run_time = time.perf_counter() - t0
        batch.mark_done(run_time)
        self.batcher.record(batch.timing_key, len(jobs), run_time)
        # A raised exception's traceback holds this frame; clearing the locals
        # breaks the cycle exception -> frame -> job -> future -> exception.
        del jobs, job, fn

    def _initializer_failed(self) -> None:
        error = BrokenThreadPool("A thread initializer failed, the thread pool is not usable anymore")
        self._broken = error
        self.batcher.close(str(error), error=BrokenThreadPool)
        fail_jobs(self.batcher.drain(), error)
        self.batcher.wake_all()

    def begin_shutdown(self) -> None:
        self.batcher.wake_all()

    def join(self) -> None:
        current = threading.current_thread()
        for thread in list(self._threads):
            if thread is not current:  # shutdown() from a done-callback on a worker
                thread.join()

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    def compat_workers(self) -> dict[Any, Any]:
        return {t.ident: t for t in self._threads}
