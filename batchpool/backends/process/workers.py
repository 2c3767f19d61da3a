"""Worker processes, parent side: starting one, the record kept of it, stopping them all.

Imports the transport, ``worker`` (the child's entry point) and ``options``.
A worker gets a channel (rings or pipes), an arena for large task buffers, and
a ``Control`` (claim tokens and a yield bell: see ``transport.control``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from ...jobs import Batch
from ...options import OOB_THRESHOLD
from ...transport import PipeTransport, control, ring, shm
from ...transport.base import Channel
from ...transport.control import Control
from ...worker import WorkerSpec, worker_main

__all__ = ["ARENA_KEEP", "STOP_GRACE", "Worker", "start_worker", "stop_workers"]

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
        "id",
        "inflight",
        "killed",
        "pid",
        "process",
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
