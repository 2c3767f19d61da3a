"""Ring memory and doorbells: the shared-memory primitives under ``ring``'s channels.

Imports nothing from batchpool. A ``Ring`` is an anonymous ``memfd`` region
mapped by both processes plus two ``Doorbell`` counters (``eventfd``) whose
sums carry the byte counts; a ``Lifeline`` is the pipe whose EOF tells a
worker its parent is gone. The design, and why the counts travel through the
doorbells, is in ``batchpool.transport.ring``'s docstring.
"""

from __future__ import annotations

import mmap
import os
from multiprocessing import reduction
from typing import Any

__all__ = ["RING_SIZE", "Doorbell", "Lifeline", "Ring", "available"]

#: Bytes in each ring. Batches are small (large buffers travel out of band);
#: this holds many of them, and a larger message streams through anyway.
RING_SIZE = 4 * 2**20



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
