"""Shared-memory segments for large buffers (pickle protocol 5, out of band).

A buffer of at least ``threshold`` bytes (a numpy array's data, a large
``bytes``) does not travel through the channel: the sender copies it once into
a fresh segment and sends its name; the receiver maps it read-only and
unpickles the object as a view of it, with no second copy.

Segments are files in ``/dev/shm`` created with mode 0600 and ``O_EXCL``,
named ``bp-<parent pid>-<pool>-<n>``. Lifetime:

* the receiver unlinks a segment's name as soon as it has mapped it (the
  memory lives on while any view of it does, and not a moment longer);
* a batch's task segments are unlinked by the parent when the batch is
  settled (the worker may have died before mapping them);
* at pool shutdown every name with the pool's prefix is unlinked, and a pool
  starting up unlinks segments of parents that no longer exist (a parent
  killed with SIGKILL has no chance to clean up).

No ``multiprocessing.shared_memory`` here: its resource tracker, in Python
3.10-3.12, registers a segment in every process that attaches to it and warns
about (or unlinks) segments that belong to another process.

Only on Linux (``/dev/shm``); elsewhere ``available()`` is False and large
buffers stay in band.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Iterable

__all__ = ["SHM_DIR", "SegmentFactory", "available", "cleanup_orphans", "cleanup_prefix", "open_segment", "unlink"]

SHM_DIR = "/dev/shm"
_PREFIX = "bp-"


def available() -> bool:
    """True where segments can be made (Linux with /dev/shm)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class SegmentFactory:
    """Makes segments named after one pool (one instance per process side).

    Example:
        >>> factory = SegmentFactory("bp-1-demo-")
        >>> name = factory.put(memoryview(b"x" * 10))  # doctest: +SKIP
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._numbers = itertools.count()

    def put(self, data: memoryview) -> str:
        """Copy ``data`` into a new segment and return its name."""
        name = f"{self.prefix}{os.getpid()}-{next(self._numbers)}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # write() into tmpfs is twice as fast as mmap + copy here: the
            # kernel fills fresh pages directly, with no page faults or
            # zeroing on our side (measured: 2.6 vs 1.2 GB/s for 8 MB).
            view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
            written = 0
            while written < view.nbytes:
                written += os.write(fd, view[written:])
            if view.nbytes == 0:
                os.ftruncate(fd, 1)  # mmap cannot map an empty file
        except BaseException:
            os.close(fd)
            unlink(name)
            raise
        os.close(fd)
        return name


def open_segment(name: str, size: int) -> memoryview:
    """Map a segment read-only, unlink its name, and return a view of it."""
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDONLY)
    try:
        region = mmap.mmap(fd, max(size, 1), access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
        unlink(name)
    return memoryview(region)[:size]


def unlink(name: str) -> None:
    """Remove a segment's name (already gone is fine)."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def unlink_all(names: Iterable[str]) -> None:
    """Remove several segment names."""
    for name in names:
        unlink(name)


def cleanup_prefix(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix``; return how many."""
    if not available():
        return 0
    count = 0
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix):
            unlink(name)
            count += 1
    return count


def cleanup_orphans() -> int:
    """Unlink segments of batchpool parents that are no longer alive."""
    if not available():
        return 0
    count = 0
    for name in os.listdir(SHM_DIR):
        if not name.startswith(_PREFIX):
            continue
        try:
            owner = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if owner != os.getpid() and not _alive(owner):
            unlink(name)
            count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pool_prefix(pool_id: str) -> str:
    """The name prefix of one pool's segments."""
    return f"{_PREFIX}{os.getpid()}-{pool_id}-"
