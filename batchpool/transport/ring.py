"""Shared-memory rings: the ``shm`` transport's message channel.

Each worker gets two single-producer/single-consumer byte rings: tasks in,
results out. A ring is a region of shared memory (an anonymous ``memfd``:
no name, so nothing to leak in ``/dev/shm`` whoever dies) plus two
doorbells (``eventfd``)::

    producer                      ring memory                    consumer
    copy bytes in  ------------>  [..####....]  ------------>  copy bytes out
    data.ring(n)   --- "n more bytes" (kernel counter) --->    n = data.take()
    free += space.take()   <--- "n bytes free again" ---       space.ring(n)

Publication without a torn read: the positions are never shared. The
producer copies bytes in and only then adds their count to the consumer's
doorbell; the consumer takes (reads and resets) that counter and so learns
exactly how many bytes are complete. The kernel's lock on the counter orders
the two processes' memory accesses on every architecture (a full barrier),
which Python cannot express with loads and stores of a shared index. The
space doorbell does the same in the other direction, so the producer never
overwrites bytes the consumer has not copied out.

Waiting is never a busy loop: a doorbell is a file descriptor, readable while
its counter is not zero, so ``select`` (the parent's one manager thread, with
every worker's sentinel) or a worker's blocking wait sleeps on it.

The ring carries a byte stream of frames (an 8-byte length, then the
message), so a message of any size goes through: what does not fit waits
for space and is written as the consumer frees it (backpressure), and a
message larger than the whole ring streams through in pieces.

A worker killed mid-write leaves at most an incomplete frame that nobody
reads: the parent discards the dead worker's rings with it, and a new worker
gets new ones. A ring has no end-of-file when the other side dies, so each
worker also holds the read end of a *lifeline* pipe whose only writer is the
parent: when the parent dies, however it dies, the worker's wait sees EOF.
(Its parent pid alone would not do: a forkserver's workers are children of
the forkserver, which itself lives on while any of them does.)

Linux only (``memfd_create`` and ``eventfd``); ``available()`` says whether
this system has them, and elsewhere the pool uses the pipe transport.
"""

from __future__ import annotations

import math
import os
import select
import selectors
import struct
from collections import deque
from typing import Any

from .base import Channel, Message, WorkerChannel
from .ring_memory import RING_SIZE, Doorbell, Lifeline, Ring, available

__all__ = [
    "RING_SIZE",
    "Doorbell",
    "Frames",
    "Lifeline",
    "Ring",
    "RingChannel",
    "RingTransport",
    "RingWorkerChannel",
    "available",
]

_LENGTH = struct.Struct("<Q")
#: Messages up to this size are copied behind their length header into one
#: piece; larger ones go as two pieces, to avoid copying them once more.
_JOIN_LIMIT = 64 * 1024


class Frames:
    """Cuts a byte stream into length-prefixed messages.

    A message that arrives whole within one chunk is handed out as a view of
    that chunk (no copy); one that spans chunks is copied once, into a buffer
    of its final size.

    Example:
        >>> frames = Frames()
        >>> stream = b"".join(b"".join(map(bytes, Frames.frame((m,)))) for m in (b"ab", b"cde"))
        >>> frames.feed(stream[:5]); frames.feed(stream[5:])
        >>> [bytes(m) for m in (frames.pop(), frames.pop())]
        [b'ab', b'cde']
    """

    def __init__(self) -> None:
        self._ready: deque[memoryview] = deque()
        self._header = bytearray()  # a length header split between chunks
        self._body: bytearray | None = None  # a message split between chunks
        self._filled = 0

    @staticmethod
    def frame(parts: tuple[Message, ...]) -> list[Message]:
        """The pieces to write for one message made of ``parts``."""
        length = sum(memoryview(part).nbytes for part in parts)
        header = _LENGTH.pack(length)
        if length <= _JOIN_LIMIT:
            return [b"".join((header, *parts))]
        return [header, *parts]

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream."""
        data = memoryview(chunk)
        pos, end = 0, len(data)
        while pos < end:
            if self._body is not None:
                take = min(end - pos, len(self._body) - self._filled)
                self._body[self._filled : self._filled + take] = data[pos : pos + take]
                self._filled += take
                pos += take
                if self._filled == len(self._body):
                    self._ready.append(memoryview(self._body))
                    self._body = None
            elif self._header or end - pos < _LENGTH.size:
                take = min(end - pos, _LENGTH.size - len(self._header))
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) == _LENGTH.size:
                    self._start(_LENGTH.unpack(self._header)[0])
                    self._header.clear()
            else:
                length: int = _LENGTH.unpack_from(data, pos)[0]
                pos += _LENGTH.size
                if end - pos >= length:
                    self._ready.append(data[pos : pos + length])
                    pos += length
                else:
                    self._start(length)

    def _start(self, length: int) -> None:
        """A message of ``length`` bytes begins; its bytes come in later chunks."""
        if length:
            self._body = bytearray(length)
            self._filled = 0
        else:
            self._ready.append(memoryview(b""))

    def __bool__(self) -> bool:
        return bool(self._ready)

    def pop(self) -> memoryview:
        """The next complete message (IndexError when none is)."""
        return self._ready.popleft()


class _Sender:
    """Queued frames being written into a ring, as space allows."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.queue: deque[memoryview] = deque()

    def add(self, parts: tuple[Message, ...]) -> None:
        for piece in Frames.frame(parts):
            self.queue.append(memoryview(piece).cast("B"))

    def flush(self) -> bool:
        """Write what fits and announce it; True when nothing is left queued."""
        queue = self.queue
        while queue:
            written = self.ring.write(queue[0])
            if written == len(queue[0]):
                queue.popleft()
            else:
                if written:
                    queue[0] = queue[0][written:]
                break
        self.ring.publish()
        return not queue


class RingChannel(Channel):
    """Parent end: never blocks; readiness comes from the doorbells."""

    writable_event = selectors.EVENT_READ  # room to write is the space doorbell ringing

    def __init__(self, capacity: int = RING_SIZE) -> None:
        self._tasks = Ring(capacity)
        try:
            self._results = Ring(capacity)
        except BaseException:
            self._tasks.close()
            raise
        self._life_r, self._life_w = os.pipe()
        self._out = _Sender(self._tasks)
        self._in = Frames()
        self._closed = False

    def send(self, *parts: Message) -> None:
        self._out.add(parts)
        self._out.flush()

    def flush(self) -> bool:
        return self._out.flush()

    @property
    def has_output(self) -> bool:
        return bool(self._out.queue)

    def poll(self) -> bool:
        if not self._in:
            chunk = self._results.read()
            if chunk:
                self._in.feed(chunk)
        return bool(self._in)

    def recv(self) -> Message:
        if not self.poll():
            raise BlockingIOError("no complete message from the worker yet")
        return self._in.pop()

    def buffered(self) -> bool:
        return bool(self._in)  # bytes announced later ring the doorbell (readable_fd)

    @property
    def readable_fd(self) -> int:
        return self._results.data.fileno()

    @property
    def writable_fd(self) -> int:
        return self._tasks.space.fileno()

    def worker_end(self) -> Any:
        return (self._tasks, self._results, Lifeline(self._life_r, self._life_w))

    def after_start(self) -> None:
        # The worker holds the memory now; our mappings keep it alive for us.
        self._tasks.close_memfd()
        self._results.close_memfd()
        self._close_fd("_life_r")

    def _close_fd(self, attr: str) -> None:
        fd = getattr(self, attr)
        if fd >= 0:
            os.close(fd)
            setattr(self, attr, -1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.queue.clear()
        self._tasks.close()
        self._results.close()
        self._close_fd("_life_r")
        self._close_fd("_life_w")  # the worker's wait sees EOF, if it is still there


class RingWorkerChannel(WorkerChannel):
    """Worker end: blocking waits on a doorbell and the lifeline together."""

    #: How often a wait with no timeout also checks the parent pid.
    PARENT_CHECK = 1.0

    def __init__(self, end: Any) -> None:
        self._tasks, self._results, lifeline = end
        # With fork the rings came as they were, descriptors and all.
        self._tasks.close_memfd()
        self._results.close_memfd()
        lifeline.detach_inherited()
        self._life = lifeline.fd
        self._parent = os.getppid()
        self._in = Frames()
        self._out = _Sender(self._results)
        self._task_bell = self._poller(self._tasks.data)
        self._space_bell = self._poller(self._results.space)

    def _poller(self, bell: Doorbell) -> Any:
        poller = select.poll()
        poller.register(bell.fileno(), select.POLLIN)
        poller.register(self._life, select.POLLIN)  # EOF (POLLHUP) when the parent is gone
        return poller

    def _wait(self, poller: Any, timeout: float | None) -> bool:
        """Sleep until the doorbell rings or ``timeout`` passes; EOFError if the parent died."""
        while True:
            wait = self.PARENT_CHECK if timeout is None else timeout
            events = poller.poll(max(0, math.ceil(wait * 1000)))
            if any(fd == self._life for fd, _ in events):
                raise EOFError("the parent process is gone")
            if events or timeout is not None:
                return bool(events)
            # With fork, workers started later hold copies of this lifeline's
            # write end, so it may never see EOF; the parent pid still tells.
            if os.getppid() != self._parent:
                raise EOFError("the parent process is gone")

    def recv(self, timeout: float | None) -> Message | None:
        while not self._in:
            chunk = self._tasks.read()
            if chunk:
                self._in.feed(chunk)
            elif not self._wait(self._task_bell, timeout):
                return None
        return self._in.pop()

    def send(self, *parts: Message) -> None:
        self._out.add(parts)
        while not self._out.flush():
            self._wait(self._space_bell, None)


class RingTransport:
    """Factory of ring channels, one per worker."""

    name = "shm"

    def __init__(self, capacity: int = RING_SIZE) -> None:
        self._capacity = capacity

    def channel(self) -> RingChannel:
        """A new channel for one worker."""
        return RingChannel(self._capacity)

    @staticmethod
    def worker_channel(end: Any) -> RingWorkerChannel:
        """Build the worker side from what ``RingChannel.worker_end`` gave it."""
        return RingWorkerChannel(end)
