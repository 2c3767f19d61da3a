"""Pipe transport: two OS pipes per worker, framed like multiprocessing.

Frames are those of ``multiprocessing.connection.Connection`` (a 4-byte
big-endian length, then the payload), so the worker side simply uses
``Connection.recv_bytes``/``send_bytes``. The parent's write end is
non-blocking and backed by an output queue (see ``base``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import struct
from collections import deque
from typing import Any

from .base import Channel, Message, WorkerChannel

__all__ = ["PipeChannel", "PipeTransport", "PipeWorkerChannel"]

_HEADER = struct.Struct("!i")
_BIG_HEADER = struct.Struct("!iQ")  # length -1, then a 64-bit length


def _frame(parts: tuple[Message, ...]) -> list[Message]:
    n = sum(memoryview(part).nbytes for part in parts)
    header = _BIG_HEADER.pack(-1, n) if n > 0x7FFFFFFF else _HEADER.pack(n)
    if n <= 16384:
        return [b"".join((header, *parts))]  # one write for small messages
    return [header, *parts]


class PipeChannel(Channel):
    """Parent end: non-blocking framed writes, framed reads."""

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        # Pipe(duplex=False) returns (reader, writer).
        self._task_r, self._task_w = ctx.Pipe(duplex=False)
        self._result_r, self._result_w = ctx.Pipe(duplex=False)
        os.set_blocking(self._task_w.fileno(), False)
        self._out: deque[memoryview] = deque()
        self._closed = False

    def send(self, *parts: Message) -> None:
        for part in _frame(parts):
            self._out.append(memoryview(part).cast("B"))
        self.flush()

    def flush(self) -> bool:
        out = self._out
        fd = self._task_w.fileno()
        while out:
            try:
                written = os.write(fd, out[0])
            except BlockingIOError:
                return False
            except BrokenPipeError:
                # The worker is gone; its sentinel tells the manager, which
                # settles the batch. Drop what can never be delivered.
                out.clear()
                return True
            if written == len(out[0]):
                out.popleft()
            else:
                out[0] = out[0][written:]
        return True

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def recv(self) -> bytes:
        return self._result_r.recv_bytes()

    def poll(self) -> bool:
        return self._result_r.poll(0)

    @property
    def readable_fd(self) -> int:
        return self._result_r.fileno()

    @property
    def writable_fd(self) -> int:
        return self._task_w.fileno()

    def worker_end(self) -> Any:
        return (self._task_r, self._result_w)

    def after_start(self) -> None:
        """Close the parent's copies of the worker's ends once it has them.

        Keeping them open would hide the worker's death from ``recv`` (no EOF).
        """
        self._task_r.close()
        self._result_w.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        for conn in (self._task_r, self._task_w, self._result_r, self._result_w):
            conn.close()


class PipeWorkerChannel(WorkerChannel):
    """Worker end: plain blocking Connection calls."""

    def __init__(self, end: Any) -> None:
        self._task_r, self._result_w = end

    def recv(self, timeout: float | None) -> bytes | None:
        if timeout is not None and not self._task_r.poll(timeout):
            return None
        data: bytes = self._task_r.recv_bytes()
        return data

    def send(self, *parts: Message) -> None:
        self._result_w.send_bytes(parts[0] if len(parts) == 1 else b"".join(parts))


class PipeTransport:
    """Factory of pipe channels, one per worker."""

    name = "pipe"

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self._ctx = ctx

    def channel(self) -> PipeChannel:
        """A new channel for one worker."""
        return PipeChannel(self._ctx)

    @staticmethod
    def worker_channel(end: Any) -> PipeWorkerChannel:
        """Build the worker side from what ``PipeChannel.worker_end`` gave it."""
        return PipeWorkerChannel(end)
