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
import mmap
import os
import select
import selectors
import struct
from collections import deque
from multiprocessing import reduction
from typing import Any

from .base import Channel, Message, WorkerChannel

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

#: Bytes in each ring. Batches are small (large buffers travel out of band);
#: this holds many of them, and a larger message streams through anyway.
RING_SIZE = 4 * 2**20

_LENGTH = struct.Struct("<Q")
#: Messages up to this size are copied behind their length header into one
#: piece; larger ones go as two pieces, to avoid copying them once more.
_JOIN_LIMIT = 64 * 1024


def available() -> bool:
    """True where rings can be made (``memfd_create`` and ``eventfd`` exist)."""
    return hasattr(os, "memfd_create") and hasattr(os, "eventfd")


class Doorbell:
    """A counter one process adds to and another takes from, waitable with select.

    Example:
        >>> bell = Doorbell()
        >>> bell.ring(3); bell.ring(4)
        >>> bell.take(), bell.take()
        (7, 0)
        >>> bell.close()
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if fd is None else fd

    def ring(self, count: int) -> None:
        """Add ``count`` (> 0) to the counter, waking whoever waits on it."""
        os.eventfd_write(self._fd, count)

    def take(self) -> int:
        """Read and reset the counter: the sum of every ``ring`` since the last take."""
        try:
            return os.eventfd_read(self._fd)
        except BlockingIOError:
            return 0

    def fileno(self) -> int:
        """The descriptor to wait on: readable while the counter is not zero."""
        return self._fd

    def close(self) -> None:
        """Close this process's descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __reduce__(self) -> tuple[Any, ...]:
        # Only while starting a worker process (spawn/forkserver): the
        # descriptor is handed over as multiprocessing hands over a Pipe's.
        return _rebuild_doorbell, (reduction.DupFd(self._fd),)


def _rebuild_doorbell(dup: Any) -> Doorbell:
    return Doorbell(dup.detach())


class Ring:
    """One direction of a channel: shared memory plus its data and space doorbells.

    One process writes (``write`` then ``publish``), one reads (``read``).
    Positions are private to each side; see the module docstring.

    Example:
        >>> ring = Ring(4096)
        >>> written = ring.write(memoryview(b"hello"))
        >>> ring.publish()
        5
        >>> ring.read()
        b'hello'
        >>> ring.close()
    """

    def __init__(self, capacity: int = RING_SIZE, *, _attach: tuple[int, Doorbell, Doorbell] | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = capacity
        if _attach is None:
            self._memfd = os.memfd_create("batchpool-ring", os.MFD_CLOEXEC)
            try:
                os.ftruncate(self._memfd, capacity)
                self.data = Doorbell()
                self.space = Doorbell()
            except BaseException:
                os.close(self._memfd)
                raise
        else:
            self._memfd, self.data, self.space = _attach
        try:
            self._mem = mmap.mmap(self._memfd, capacity)
        except BaseException:
            self._closed = True
            self.close_memfd()
            self.data.close()
            self.space.close()
            raise
        self._closed = False
        self._written = 0  # producer: bytes written in all
        self._unpublished = 0  # producer: written but not yet announced
        self._freed = 0  # producer: bytes the consumer has announced free
        self._read = 0  # consumer: bytes read in all

    # -- producer side -----------------------------------------------------------

    def free(self, wanted: int) -> int:
        """Bytes the producer may write now.

        The space doorbell is only read when fewer than ``wanted`` bytes are
        known to be free: a syscall saved per write.
        """
        free = self.capacity - (self._written - self._freed)
        if free < wanted:
            self._freed += self.space.take()
            free = self.capacity - (self._written - self._freed)
        return free

    def write(self, data: memoryview) -> int:
        """Copy as much of ``data`` as fits; return how many bytes. Never blocks."""
        count = min(len(data), self.free(len(data)))
        if count <= 0:
            return 0
        start = self._written % self.capacity
        first = min(count, self.capacity - start)
        self._mem[start : start + first] = data[:first]
        if first < count:  # wrap around
            self._mem[0 : count - first] = data[first:count]
        self._written += count
        self._unpublished += count
        return count

    def publish(self) -> int:
        """Announce the bytes written since the last publish; return how many."""
        count = self._unpublished
        if count:
            self._unpublished = 0
            self.data.ring(count)
        return count

    # -- consumer side -----------------------------------------------------------

    def read(self) -> bytes:
        """Copy out every byte announced so far (b"" if none) and free its space."""
        count = self.data.take()
        if not count:
            return b""
        start = self._read % self.capacity
        first = min(count, self.capacity - start)
        if first == count:
            chunk = self._mem[start : start + count]
        else:
            chunk = b"".join((self._mem[start : self.capacity], self._mem[0 : count - first]))
        self._read += count
        self.space.ring(count)
        return chunk

    # -- both ------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and close this process's descriptors (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.close_memfd()
        self._mem.close()
        self.data.close()
        self.space.close()

    def close_memfd(self) -> None:
        """Close the memory's descriptor; the mapping stays (after a worker has its copy)."""
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_ring, (self.capacity, reduction.DupFd(self._memfd), self.data, self.space)


def _rebuild_ring(capacity: int, memfd: Any, data: Doorbell, space: Doorbell) -> Ring:
    ring = Ring(capacity, _attach=(memfd.detach(), data, space))
    ring.close_memfd()
    return ring


class Lifeline:
    """The worker's end of a pipe only the parent writes to: EOF means the parent is gone."""

    def __init__(self, read_fd: int, inherited_write_fd: int | None = None) -> None:
        self.fd = read_fd
        # With fork, the child gets the parent's write end too, and must not
        # keep it (it would hold its own lifeline open).
        self._inherited = inherited_write_fd

    def detach_inherited(self) -> None:
        """In the worker: close the write end a fork copied in, if any."""
        if self._inherited is not None:
            os.close(self._inherited)
            self._inherited = None

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_lifeline, (reduction.DupFd(self.fd),)


def _rebuild_lifeline(dup: Any) -> Lifeline:
    return Lifeline(dup.detach())


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
