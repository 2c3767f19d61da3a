"""Shared-memory segments for large buffers (pickle protocol 5, out of band).

A buffer of at least ``threshold`` bytes (a numpy array's data, a large
``bytes``) does not travel through the channel: the sender copies it once into
a segment and sends a reference; the receiver maps it read-only and unpickles
the object as a view of it, with no second copy.

Two kinds of segment:

* Task buffers (parent -> worker): a batch's buffers go back to back into
  one **block** of the worker's ``Arena``, reused from batch to batch
  (``arena``: why reuse pays, the worker's ``BlockCache``, pinned blocks).
* Results (worker -> parent) go into one-shot segments (``SegmentFactory``,
  read back with ``open_segment``): the parent hands the array to the user,
  who may keep it forever, so there is nothing to reuse.

This module holds the one-shot segments and the named shared ones behind
``ex.empty()``/``ex.zeros()`` (``create_shared``, ``map_shared``), and is the
face of the three segment modules: it re-exports ``arena``'s blocks and
``shm_names``'s names and sweeps, so ``shm.X`` is where callers find them.
Imports ``arena`` and ``shm_names`` only (nothing else of batchpool).

Names and who may touch what: ``shm_names`` (random names made with
``O_EXCL``, opened only if ours, swept only when provably ours).

Lifetime:

* the receiver unlinks a segment's name as soon as it has mapped it (the
  memory lives on while a mapping or descriptor does, and not a moment longer);
* the parent closes (and unlinks, in case the worker never mapped it) a
  worker's blocks when that worker exits or dies;
* at pool shutdown every segment with the pool's prefix is unlinked
  (``cleanup_prefix``), and a pool starting up unlinks segments of parents
  that no longer exist (``cleanup_orphans``: a parent killed with SIGKILL has
  no chance to clean up).

No ``multiprocessing.shared_memory`` here: its resource tracker, in Python
3.10-3.12, registers a segment in every process that attaches to it and warns
about (or unlinks) segments that belong to another process.

Only on Linux (``/dev/shm``); elsewhere ``available()`` is False and large
buffers stay in band.
"""

from __future__ import annotations

import errno
import mmap
import os

from .arena import _NO_FD, _POPULATE, Arena, Block, BlockCache, _as_bytes
from .shm_names import (
    _CLOEXEC,
    _NOFOLLOW,
    CREATE_ATTEMPTS,
    SHM_DIR,
    SegmentName,
    _check_prefix,
    _create,
    _open_own,
    _remove,
    available,
    cleanup_orphans,
    cleanup_prefix,
    owner_alive,
    parse_name,
    pool_prefix,
    unlink,
)

__all__ = [
    "CREATE_ATTEMPTS",
    "SHM_DIR",
    "Arena",
    "Block",
    "BlockCache",
    "SegmentFactory",
    "SegmentName",
    "available",
    "cleanup_orphans",
    "cleanup_prefix",
    "create_shared",
    "map_shared",
    "open_segment",
    "owner_alive",
    "parse_name",
    "pool_prefix",
    "unlink",
]


class SegmentFactory:
    """Makes one-shot segments for one pool (one instance per process side).

    Raises:
        ValueError: ``prefix`` is not a pool's prefix (``pool_prefix``).

    Example:
        >>> factory = SegmentFactory(pool_prefix("doc"))
        >>> name = factory.put(memoryview(b"hello"))
        >>> parse_name(name).owner == os.getpid()
        True
        >>> bytes(open_segment(name, 5))  # and its name is gone
        b'hello'
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = _check_prefix(prefix)

    def put(self, data: memoryview) -> str:
        """Copy ``data`` into a new segment and return its name.

        Raises:
            OSError: no segment could be made or filled (``/dev/shm`` full,
                every fresh name taken); nothing is left behind. The caller
                sends the buffer in band instead.
        """
        view = _as_bytes(data)
        name, fd = _create(self.prefix)
        try:
            # write() into tmpfs is twice as fast as mmap + copy here: the
            # kernel fills fresh pages directly, with no page faults or
            # zeroing on our side (measured: 2.6 vs 1.2 GB/s for 8 MB).
            written = 0
            while written < view.nbytes:
                written += os.write(fd, view[written:])
            if view.nbytes == 0:
                os.ftruncate(fd, 1)  # mmap cannot map an empty file
        except BaseException:
            os.close(fd)
            _remove(name)
            raise
        os.close(fd)
        return name


#: One-shot segments smaller than this are read into private memory rather
#: than mapped: before Python 3.13 every mapping holds a file descriptor for
#: as long as it lives, and a caller keeping thousands of results would run
#: out of them. Above it, a mapping saves a copy worth more than a descriptor.
MAP_THRESHOLD = 2**20


def open_segment(name: str, size: int) -> memoryview:
    """The contents of a one-shot segment (mapped when large), writeable, its name unlinked.

    Raises:
        OSError: ``name`` is not a segment name of ours, or the entry is not
            a regular file of this user (a directory, a symlink, a fifo,
            another user's file: left as it is), or it is shorter than
            ``size``, or it is gone.

    Example:
        >>> name = SegmentFactory(pool_prefix("doc")).put(memoryview(b"abc"))
        >>> bytes(open_segment(name, 3)), os.path.exists(os.path.join(SHM_DIR, name))
        (b'abc', False)
        >>> open_segment("../etc/passwd", 3)
        Traceback (most recent call last):
        ...
        OSError: [Errno 22] not a batchpool segment name: '../etc/passwd'
    """
    fd, st = _open_own(name)
    try:
        if st.st_size < max(size, 1):
            raise OSError(errno.EINVAL, f"segment is {st.st_size} bytes, shorter than {size}", name)
        if size < MAP_THRESHOLD and not _NO_FD:
            buffer = bytearray(size)
            view = memoryview(buffer)
            done = 0
            while done < size:
                read = os.preadv(fd, [view[done:]], done)
                if not read:
                    raise OSError(errno.EIO, f"segment ended at {done} of {size} bytes", name)
                done += read
            return view
        # Copy-on-write: the receiver owns what it got (a result array is
        # writeable, as from any pool), still without copying it up front.
        region = mmap.mmap(fd, max(size, 1), access=mmap.ACCESS_COPY, **_NO_FD)
    finally:
        os.close(fd)
        _remove(name)
    return memoryview(region)[:size]


def create_shared(prefix: str, size: int) -> tuple[str, mmap.mmap]:
    """A new zero-filled segment of ``size`` bytes, mapped read-write and shared: (name, mapping).

    Unlike every other segment here, its name stays until someone unlinks it
    (``unlink``, or the sweeps): processes that start later open it by name
    (``map_shared``). The mapping stays valid after the name is gone.

    Raises:
        ValueError: ``prefix`` is not a pool's prefix.
        OSError: no segment could be made (``/dev/shm`` full, names taken).

    Example:
        >>> name, region = create_shared(pool_prefix("doc"), 8)
        >>> region[:2] = b"hi"
        >>> bytes(map_shared(name, 8)[:2]), unlink(name)
        (b'hi', True)
    """
    name, fd = _create(_check_prefix(prefix))
    try:
        os.ftruncate(fd, max(size, 1))  # mmap cannot map an empty file
        region = mmap.mmap(fd, max(size, 1), **_NO_FD)  # MAP_SHARED, read-write
    except BaseException:
        os.close(fd)
        _remove(name)
        raise
    os.close(fd)
    return name, region


def map_shared(name: str, size: int) -> mmap.mmap:
    """Map segment ``name`` (made by ``create_shared``) read-write and shared; its name stays.

    The pages are mapped up front (``MAP_POPULATE``): one system call instead
    of a page fault per 4 KiB on first touch.

    Raises:
        OSError: ``name`` is not a segment of ours (see ``open_segment``), it
            is shorter than ``size``, or it is gone.
    """
    fd, st = _open_own(name, os.O_RDWR | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    try:
        if st.st_size < max(size, 1):
            raise OSError(errno.EINVAL, f"segment is {st.st_size} bytes, shorter than {size}", name)
        return mmap.mmap(
            fd,
            max(size, 1),
            flags=mmap.MAP_SHARED | _POPULATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            **_NO_FD,
        )
    finally:
        os.close(fd)
