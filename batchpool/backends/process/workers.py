"""Worker processes, parent side: starting one, the record kept of it, stopping them all.

Imports the transport, ``worker`` (the child's entry point) and ``options``.
A worker gets a channel (rings or pipes), an arena for large task buffers, and
a ``Control`` (claim tokens and a yield bell: see ``transport.control``).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from typing import Any

from ...jobs import Batch
from ...options import OOB_THRESHOLD
from ...protocol import FnCacheMirror
from ...transport import PipeTransport, control, ring, shm
from ...transport.base import Channel
from ...transport.control import Control
from ...worker import WorkerSpec, worker_main

__all__ = [
    "ARENA_KEEP",
    "STOP_GRACE",
    "Worker",
    "bootstrap_failure",
    "preload_in_forkserver",
    "start_worker",
    "stop_workers",
]

#: Seconds a stopping worker gets to exit before it is terminated, then killed.
STOP_GRACE = 5.0
#: Free arena bytes kept per worker for reuse (two batches' worth and then some).
ARENA_KEEP = 128 * 2**20

_worker_ids = itertools.count()


class Worker:
    """The parent's record of one worker process."""

    __slots__ = (
        "arena",
        "channel",
        "control",
        "done",
        "fns",
        "id",
        "inflight",
        "init_failure",
        "killed",
        "pid",
        "process",
        "ready",
        "retiring",
        "sent",
        "skipping",
        "stop_sent",
        "timed",
        "writing",
    )

    def __init__(self, process: Any, channel: Channel, arena: shm.Arena | None, ctl: Control | None) -> None:
        self.id = next(_worker_ids)
        self.process = process
        self.pid: int = process.pid
        self.channel = channel
        self.arena = arena  # its task buffers' shared memory; None: all in band
        self.control = ctl  # claim tokens and yield bell; None: not on this system
        # Batches sent and not finished, in the order sent (the worker runs them in order).
        self.inflight: dict[int, Batch] = {}
        # A batch taken back, until the worker says it skipped it: the arena
        # blocks it was in, which the worker may still be about to look at.
        # Nothing new is sent meanwhile (claim tokens are fungible).
        self.skipping: dict[int, list[Any]] = {}
        self.sent = 0  # jobs sent, against max_tasks_per_child
        self.done = 0  # jobs finished
        self.writing = False  # registered for writability
        self.timed: int | None = None  # id of the batch with a timeout it runs, if any
        self.killed = ""  # why we killed it, if we did
        self.retiring = False  # to stop once its batches are done (a shrinking pool)
        self.ready = False  # it said hello: multiprocessing's bootstrap (main module import) is over
        self.fns = FnCacheMirror()  # which callables sent by value it holds
        # Its initializer raised: the pool's error, and the cause (broken when it has exited).
        self.init_failure: tuple[str, BaseException | None] | None = None
        self.stop_sent = False  # told to stop (MSG_STOP): it exits, and is not told twice

    @property
    def idle(self) -> bool:
        """Nothing sent to it is unfinished."""
        return not self.inflight and not self.skipping

    def release_blocks(self, blocks: list[Any]) -> list[int]:
        """Take a batch's arena blocks back; the ids the worker should unmap."""
        if not blocks or self.arena is None:
            return []
        return self.arena.release(blocks)

    def forget_memory(self) -> None:
        """The worker exited or died: its arena goes with it."""
        for batch in self.inflight.values():
            batch.blocks = []
        self.skipping.clear()
        if self.arena is not None:
            self.arena.close()


def preload_in_forkserver(ctx: Any) -> None:
    """Have the forkserver import the worker's modules once, before it first forks.

    Every worker forked from it then starts with them loaded: a replacement
    for a crashed worker is ready in milliseconds instead of importing
    batchpool anew (under load, longer than the gap between two crashes of a
    chaos test, which then never makes progress). Extends the user's preload
    list, never replaces it, and only while the forkserver is not running yet.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # running already: too late to change what it preloaded
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    if "batchpool.worker" not in modules:
        ctx.set_forkserver_preload([*modules, "batchpool.worker"])


def start_worker(
    transport: PipeTransport | ring.RingTransport,
    ctx: Any,
    config: Any,
    shm_prefix: str | None,
) -> Worker:
    """Start one worker process; raises OSError (no channel) or what ``Process.start`` raised."""
    channel = transport.channel()
    ctl = Control() if control.available() else None
    spec = WorkerSpec(
        worker_channel=transport.worker_channel,
        channel_end=channel.worker_end(),
        initializer=config.initializer,
        initargs=config.initargs,
        max_tasks=config.max_tasks_per_child,
        shm_prefix=shm_prefix,
        oob_threshold=OOB_THRESHOLD,
        control=ctl,
    )
    process = ctx.Process(target=worker_main, args=(spec,), name="batchpool-worker")
    try:
        process.start()
    except BaseException:
        channel.close()
        if ctl is not None:
            ctl.close()
        raise
    channel.after_start()
    arena = None if shm_prefix is None else shm.Arena(shm_prefix, ARENA_KEEP)
    return Worker(process, channel, arena, ctl)


def close_worker(worker: Worker) -> None:
    """Release the parent's side of a worker that has exited."""
    worker.channel.close()
    if worker.control is not None:
        worker.control.close()
    worker.forget_memory()


def stop_workers(workers: list[Worker], grace: float) -> None:
    """Ask every worker to stop, give them ``grace`` seconds, then terminate and kill."""
    from ...protocol import MSG_STOP

    for worker in workers:
        if worker.process.is_alive() and not worker.stop_sent:
            worker.stop_sent = True
            worker.channel.send(MSG_STOP)
            worker.channel.flush()
    deadline = time.monotonic() + grace
    for worker in workers:
        if grace > 0:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            worker.process.terminate()
            worker.process.join(1.0)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        close_worker(worker)


_GUARD = re.compile(r"""__name__\s*==\s*['"]__main__['"]|['"]__main__['"]\s*==\s*__name__""")


def _main_script_unguarded() -> str | None:
    """The main script's path if it has no ``if __name__ == "__main__":`` guard."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return None
    return None if _GUARD.search(source) else path


def bootstrap_failure(pid: int, ctx: Any) -> str:
    """Why a worker exited with code 1 before it started (the pool's one-line error).

    Under ``spawn`` and ``forkserver`` each worker imports the main script
    again; a script that starts the pool at import time, without a main
    guard, makes every worker fail in multiprocessing's bootstrap with a
    RuntimeError that only the worker's stderr shows.
    """
    method = ctx.get_start_method()
    unguarded = _main_script_unguarded() if method != "fork" else None
    if unguarded is not None:
        return (
            f"worker pid {pid} failed to start (exit code 1): the main module {unguarded} starts the pool "
            f"when it is imported, and each worker ({method!r} start method) imports it again; "
            'put the code that uses the pool under `if __name__ == "__main__":`'
        )
    return (
        f"worker pid {pid} failed to start (exit code 1) before it could run anything: multiprocessing's "
        f"bootstrap failed in it ({method!r} start method imports the main module again: see the worker's stderr)"
    )
