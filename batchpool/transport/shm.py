"""Shared-memory segments for large buffers (pickle protocol 5, out of band).

A buffer of at least ``threshold`` bytes (a numpy array's data, a large
``bytes``) does not travel through the channel: the sender copies it once into
a segment and sends a reference; the receiver maps it read-only and unpickles
the object as a view of it, with no second copy.

Two kinds of segment:

* Task buffers (parent -> worker): a batch's buffers go back to back into
  one **block** of the worker's ``Arena``, reused from batch to batch. A
  fresh segment costs more than the copy itself (the kernel allocates and
  zeroes its pages, and the worker faults every page into its mapping); a
  reused block has both done already, which is what takes 8 MB arrays from
  ~2 to ~8-10 GB/s. The worker maps a block the first time it sees its name
  and keeps the mapping (``BlockCache``). A block is back in the free list
  when its batch is settled, unless the worker reports it *pinned*: a job
  kept a view of its argument beyond the call (stored the array somewhere),
  so the block is never written again.
* Results (worker -> parent) go into one-shot segments (``SegmentFactory``):
  the parent hands the array to the user, who may keep it forever, so there
  is nothing to reuse.

Names. ``/dev/shm`` is shared by every user of the machine, and any of them
may put anything there, under any name. Every segment is a file named::

    bp-<owner pid>-<pool id>-<16 hex digits>      e.g. bp-4242-0-9f86d081884c7d65

``<owner pid>`` is the process whose pool it belongs to (the parent, also for
the results its workers write), ``<pool id>`` tells that process's pools
apart (1-32 letters, digits or ``_``), and the last part is 64 random bits
(``secrets``), drawn afresh for every segment: nobody can know a name before
it exists, so nobody can take it first. ``parse_name`` accepts exactly this
shape and nothing else. A segment is created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600: a name that exists already
(whatever it is: a file, a directory, a symlink to anywhere, a fifo) is never
opened, written through or truncated; the creator draws another name, up to
``CREATE_ATTEMPTS`` times, and then raises ``OSError`` (the caller sends the
buffer in band instead). A receiver opens a name only if it is a regular file
of this user (``lstat`` first, so a fifo or a device is never even opened;
``O_NOFOLLOW`` and ``fstat`` after), and otherwise fails with ``OSError``.

Lifetime:

* the receiver unlinks a segment's name as soon as it has mapped it (the
  memory lives on while a mapping or descriptor does, and not a moment longer);
* the parent closes (and unlinks, in case the worker never mapped it) a
  worker's blocks when that worker exits or dies;
* at pool shutdown every segment with the pool's prefix is unlinked
  (``cleanup_prefix``), and a pool starting up unlinks segments of parents
  that no longer exist (``cleanup_orphans``: a parent killed with SIGKILL has
  no chance to clean up).

What a sweep removes, and why that is safe: an entry is removed only if its
name parses as above, ``lstat`` (never following a symlink) shows a regular
file whose owner is this process's effective uid, and, for
``cleanup_orphans``, the owner pid in the name is not a live process (and not
us). Anything else (a directory, a symlink, a fifo, another user's file, a
name that does not parse, an entry that vanished or that we may not remove)
is skipped, logged at debug level at most: a sweep never raises, so nobody can
stop a pool from starting by leaving something in ``/dev/shm``. Between the
``lstat`` and the ``unlink`` nobody can swap the entry: ``/dev/shm`` is
sticky (mode 1777), so an entry we own can be removed or renamed only by us
or by root, and ``unlink`` removes a name without following it. A pid that
has been reused since makes the owner look alive: the segment stays (a leak
until the next sweep finds the pid gone, never a removal of a live pool's
segment). Limit: pools in another pid namespace sharing this ``/dev/shm``
under the same uid look dead from here; containers normally get their own.

No ``multiprocessing.shared_memory`` here: its resource tracker, in Python
3.10-3.12, registers a segment in every process that attaches to it and warns
about (or unlinks) segments that belong to another process.

Only on Linux (``/dev/shm``); elsewhere ``available()`` is False and large
buffers stay in band. Imports nothing of batchpool.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

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

log = logging.getLogger("batchpool")

SHM_DIR = "/dev/shm"

#: How many fresh random names a segment's creator tries before it gives up
#: with ``OSError``. With 64 random bits an honest collision never happens:
#: one means someone is creating our names, and the buffer goes in band.
CREATE_ATTEMPTS = 8

# The one shape of name this module makes, parsed strictly (ASCII classes,
# no leading zero). Linux pids are at most 4194304 (PID_MAX_LIMIT): 7 digits.
_POOL_ID = r"[0-9A-Za-z_]{1,32}"
_OWNER = re.compile(r"bp-([1-9][0-9]{0,6})-")
_POOL_PREFIX = re.compile(rf"bp-[1-9][0-9]{{0,6}}-{_POOL_ID}-")
_NAME = re.compile(rf"bp-([1-9][0-9]{{0,6}})-({_POOL_ID})-([0-9a-f]{{16}})")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
# O_NONBLOCK: should a fifo slip past the lstat check, opening it must not
# wait for a writer (it has no effect on a regular file).
_OPEN_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def available() -> bool:
    """True where segments can be made (Linux with /dev/shm).

    Example:
        >>> isinstance(available(), bool)
        True
    """
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class SegmentName(NamedTuple):
    """The parts of a segment's name (``parse_name``)."""

    owner: int
    """The pid of the process whose pool the segment belongs to."""
    pool: str
    """The pool's id within that process."""
    token: str
    """The random part: 16 lowercase hex digits."""


def parse_name(name: str) -> SegmentName | None:
    """The parts of a segment name of ours, or None for any other name.

    Example:
        >>> parse_name("bp-4242-0-9f86d081884c7d65")
        SegmentName(owner=4242, pool='0', token='9f86d081884c7d65')
        >>> parse_name("bp-4242-0-4242-7") is None  # the old, predictable names
        True
    """
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return SegmentName(int(match[1]), match[2], match[3])


def pool_prefix(pool_id: str) -> str:
    """The name prefix of one pool's segments (this process is the owner).

    Raises:
        ValueError: ``pool_id`` is not 1-32 ASCII letters, digits or ``_``.

    Example:
        >>> pool_prefix("7") == f"bp-{os.getpid()}-7-"
        True
    """
    if not isinstance(pool_id, str) or re.fullmatch(_POOL_ID, pool_id) is None:
        raise ValueError(f"pool_id must be 1 to 32 ASCII letters, digits or '_', not {pool_id!r}")
    return f"bp-{os.getpid()}-{pool_id}-"


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or _POOL_PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"prefix must be a pool's prefix as pool_prefix() makes it ('bp-<pid>-<id>-'), not {prefix!r}")
    return prefix


def _token() -> str:
    # The unpredictable part of a name: 64 bits from the OS's CSPRNG, drawn
    # per segment. Tests replace this function to force collisions.
    return secrets.token_hex(8)


def _create(prefix: str) -> tuple[str, int]:
    """A new, empty segment of ours named ``prefix`` + a random part: (name, descriptor).

    Raises:
        OSError: no segment could be made: FileExistsError after
            ``CREATE_ATTEMPTS`` names that all existed, or whatever the
            system says (``/dev/shm`` full, no permission).
    """
    for _ in range(CREATE_ATTEMPTS):
        name = prefix + _token()
        try:
            # O_EXCL: an entry already there under this name (someone else's
            # file, a directory, a symlink to anywhere, a fifo) fails with
            # EEXIST instead of being opened, truncated or written through
            # (O_NOFOLLOW says so again for symlinks). 0600: this user only.
            fd = os.open(os.path.join(SHM_DIR, name), _CREATE_FLAGS, 0o600)
        except FileExistsError:
            log.debug("shared memory: %s exists already; drawing another name", name)
            continue
        return name, fd
    raise FileExistsError(
        errno.EEXIST,
        f"all of {CREATE_ATTEMPTS} fresh segment names {prefix}<random> exist already (is someone creating them?)",
        SHM_DIR,
    )


def _ours(st: os.stat_result) -> bool:
    """The entry is a regular file owned by this process's effective uid."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def _open_own(name: str, flags: int = _OPEN_FLAGS) -> tuple[int, os.stat_result]:
    """Open segment ``name`` (for reading, unless ``flags`` say otherwise) if it is ours: (descriptor, its fstat).

    Raises:
        OSError: the name is not one of ours, or the entry is not a regular
            file of this user (nothing is unlinked then), or it cannot be opened.
    """
    if _NAME.fullmatch(name) is None:
        raise OSError(errno.EINVAL, f"not a batchpool segment name: {name!r}")
    path = os.path.join(SHM_DIR, name)
    # lstat before open: a fifo (opening one can block) or a device (opening
    # one can act) under our name is never opened at all.
    before = os.lstat(path)
    if not _ours(before):
        raise PermissionError(errno.EPERM, f"not a segment of ours (a regular file of uid {os.geteuid()})", path)
    fd = os.open(path, flags)
    try:
        # The same entry still: /dev/shm is sticky, so nobody but us (or root)
        # can have swapped an entry we own in between, but say so for sure.
        st = os.fstat(fd)
        if not _ours(st) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise PermissionError(errno.EPERM, "segment replaced while being opened", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


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


def _as_bytes(data: memoryview) -> memoryview:
    if data.ndim == 1 and data.format == "B":
        return data
    if data.c_contiguous:
        return data.cast("B")
    # Never from pickle (PickleBuffer.raw() is flat bytes); a copy in memory
    # order beats failing.
    return memoryview(data.tobytes(order="A"))


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Python 3.13+: a mapping need not hold a duplicate of its file descriptor.
_NO_FD: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_ALIGN = 64


class Block:
    """One reusable segment of an ``Arena`` (parent side): a batch's buffers, back to back."""

    __slots__ = ("fd", "id", "mem", "name", "pinned", "shown", "size")

    def __init__(self, block_id: int, name: str, fd: int, size: int) -> None:
        self.id = block_id
        self.name = name
        self.fd = fd  # until the first write; the mapping after that
        self.size = size
        self.mem: mmap.mmap | None = None
        self.shown = False  # the worker has been sent its name (and maps it then)
        self.pinned = False  # the worker keeps a view of it: never reuse

    def write(self, views: Sequence[memoryview], offsets: Sequence[int]) -> None:
        """Copy each of ``views`` (bytes) to its offset in the block."""
        if self.mem is not None:
            # Reused: copying through the mapping runs at memcpy speed
            # (27 GB/s vs 6-9 for pwrite here, pages already in place).
            for view, offset in zip(views, offsets, strict=True):
                self.mem[offset : offset + view.nbytes] = view
            return
        # Fresh pages: write() lets the kernel allocate and fill them in one
        # pass, faster than faulting them into a mapping (1.5 vs 0.9 GB/s for
        # 8 MB); then map the block for later uses, page table filled in one
        # go, and let the descriptor go.
        for view, offset in zip(views, offsets, strict=True):
            written = 0
            while written < view.nbytes:
                written += os.pwrite(self.fd, view[written:], offset + written)
        self.mem = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED | _POPULATE, **_NO_FD)
        os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        """Unmap and close the parent's side of the block."""
        if self.mem is not None:
            self.mem.close()
            self.mem = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Arena:
    """The parent's reusable segments for one worker's task buffers.

    ``put`` copies one batch's buffers into one free block (a new one if
    none fits); ``release`` takes a settled batch's block back. At most
    ``keep`` bytes and ``MAX_FREE`` free blocks are kept (each mapping holds a
    descriptor); ``release`` returns the ids of blocks it let go, for the
    worker to unmap. Only the parent's manager thread uses an arena. Each
    block is a segment of its own, named ``prefix`` + a random part.

    Raises:
        ValueError: ``prefix`` is not a pool's prefix (``pool_prefix``).

    Example:
        >>> arena = Arena(pool_prefix("doc"), keep=2**20)
        >>> block, offsets = arena.put([memoryview(bytes(300_000))])
        >>> offsets, block.size
        ([0], 524288)
        >>> arena.release([block])
        []
        >>> arena.close()
    """

    #: Blocks are sized in powers of two from here, so that batches of about
    #: the same size share blocks (tmpfs only allocates the pages written).
    MIN_BLOCK = 2**16
    MAX_FREE = 8

    def __init__(self, prefix: str, keep: int) -> None:
        self.prefix = _check_prefix(prefix)
        self.keep = keep
        self._ids = itertools.count(1)
        self._free: list[Block] = []
        self._kept = 0
        self._all: dict[int, Block] = {}

    def put(self, buffers: Sequence[memoryview]) -> tuple[Block, list[int]]:
        """Copy ``buffers`` into one block; return it and each buffer's offset.

        Raises:
            OSError: no block could be made (``/dev/shm`` is full, or every
                fresh name was taken).
        """
        views = [_as_bytes(b) for b in buffers]
        offsets = []
        end = 0
        for view in views:
            offsets.append(end)
            end = _align(end + view.nbytes)  # aligned for any dtype (and cache lines)
        block = self._take(end)
        try:
            block.write(views, offsets)
        except BaseException:
            self.release([block])
            raise
        return block, offsets

    def _take(self, size: int) -> Block:
        best = None
        for block in self._free:
            if size <= block.size <= max(4 * size, self.MIN_BLOCK) and (best is None or block.size < best.size):
                best = block
        if best is not None:
            self._free.remove(best)
            self._kept -= best.size
            return best
        block_size = max(self.MIN_BLOCK, 1 << (size - 1).bit_length())
        block_id = next(self._ids)
        name, fd = _create(self.prefix)
        try:
            os.ftruncate(fd, block_size)
        except BaseException:
            os.close(fd)
            _remove(name)
            raise
        block = Block(block_id, name, fd, block_size)
        self._all[block_id] = block
        return block

    def pin(self, block_ids: Iterable[int]) -> None:
        """The worker keeps views of these blocks: never write them again."""
        for block_id in block_ids:
            block = self._all.get(block_id)
            if block is not None:
                block.pinned = True

    def release(self, blocks: Iterable[Block]) -> list[int]:
        """Take back a settled batch's blocks; return the ids the worker should unmap."""
        dropped = []
        for block in blocks:
            if block.pinned:
                # Its memory lives on in the worker's views, and the worker
                # forgets it by itself: not in ``dropped``.
                self._discard(block)
                continue
            self._free.append(block)
            self._kept += block.size
            while self._free and (self._kept > self.keep or len(self._free) > self.MAX_FREE):
                # Let the oldest go: what is used now was put back last.
                old = self._free.pop(0)
                self._kept -= old.size
                if old.shown:
                    dropped.append(old.id)
                self._discard(old)
        return dropped

    def _discard(self, block: Block) -> None:
        del self._all[block.id]
        block.close()
        # Normally gone already: the worker unlinks on mapping. The name was
        # visible in /dev/shm meanwhile, so anyone may have made an entry of
        # their own under it since: _remove leaves that alone.
        _remove(block.name)

    def close(self) -> None:
        """Let every block go (the worker is gone or going)."""
        for block in list(self._all.values()):
            self._discard(block)
        self._free.clear()
        self._kept = 0


#: madvise(MADV_POPULATE_READ) (Linux 5.14+; Python has no name for it yet):
#: map every page of a private mapping for reading in one call, sharing the
#: page cache's pages (a write still copies just that page). Without it a job
#: reading its argument takes one page fault per 4 KiB.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)
_populate_works = _MADV_POPULATE_READ is not None


def _populate_read(region: mmap.mmap) -> None:
    global _populate_works
    if not _populate_works:
        return
    try:
        region.madvise(_MADV_POPULATE_READ)  # type: ignore[arg-type]
    except OSError:
        _populate_works = False  # an older kernel: pages fault in as they are read


class BlockCache:
    """The worker's mappings of its arena's blocks, by block id.

    Example:
        >>> arena = Arena(pool_prefix("doc"), keep=2**20)
        >>> block, [offset] = arena.put([memoryview(b"abc")])
        >>> cache = BlockCache()
        >>> bytes(cache.view(block.id, block.name, offset, 3))
        b'abc'
        >>> cache.forget([block.id]); arena.close()
    """

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        # One descriptor per block seen (its name is unlinked once opened), so
        # that each job can get a private mapping of its own buffers.
        self._fds: dict[int, int] = {}

    def _fd(self, block_id: int, name: str, offset: int, size: int) -> int:
        fd = self._fds.get(block_id)
        if fd is None:
            fd, st = _open_own(name)
            _remove(name)
            if st.st_size < max(offset + size, 1):
                os.close(fd)
                raise OSError(errno.EINVAL, f"block is {st.st_size} bytes, shorter than {offset + size}", name)
            self._fds[block_id] = fd
        return fd

    def view(self, block_id: int, name: str, offset: int, size: int) -> memoryview:
        """A read-only view of ``size`` bytes at ``offset`` of a block (mapping it on first sight).

        Raises:
            OSError: the block is new and ``name`` is not a segment of ours
                (see ``open_segment``), or too small for the view.
        """
        region = self._maps.get(block_id)
        if region is None:
            region = mmap.mmap(self._fd(block_id, name, offset, size), 0, access=mmap.ACCESS_READ, **_NO_FD)
            self._maps[block_id] = region
        return memoryview(region)[offset : offset + size]

    def private_view(self, block_id: int, name: str, offset: int, size: int) -> memoryview:
        """A writeable, copy-on-write view of ``size`` bytes at ``offset`` of a block: the job's own.

        As a standard pool's argument is: the job may change it in place, and
        the block (which the parent reuses for later batches) never sees it.
        No copy is made until a page is written; the mapping goes with the
        last view of it.

        Raises:
            OSError: as ``view``.
        """
        fd = self._fd(block_id, name, offset, size)
        if size == 0:
            return memoryview(bytearray())
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        region = mmap.mmap(
            fd,
            offset - start + size,
            flags=mmap.MAP_PRIVATE,  # no MAP_POPULATE: with PROT_WRITE it would copy every page
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=start,
            **_NO_FD,
        )
        _populate_read(region)
        return memoryview(region)[offset - start :]

    def forget(self, block_ids: Iterable[int]) -> None:
        """Unmap blocks (views still alive keep their memory mapped)."""
        for block_id in block_ids:
            region = self._maps.pop(block_id, None)
            if region is not None:
                try:
                    region.close()
                except BufferError:  # a view is alive: the mapping goes with it
                    pass
            fd = self._fds.pop(block_id, None)
            if fd is not None:
                os.close(fd)


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


def unlink(name: str) -> bool:
    """Remove segment ``name`` if it is ours; True if it was removed.

    Only a name of ours (``parse_name``) that is a regular file of this user
    is removed; anything else under that name, or nothing, is left as it is.
    Never raises.

    Example:
        >>> name = SegmentFactory(pool_prefix("doc")).put(memoryview(b"x"))
        >>> unlink(name), unlink(name)
        (True, False)
    """
    return _remove(name)


def _remove(name: str) -> bool:
    if _NAME.fullmatch(name) is None:
        log.debug("shared memory: %r is not a segment name of ours; left alone", name)
        return False
    path = os.path.join(SHM_DIR, name)
    try:
        st = os.lstat(path)  # the entry itself: a symlink is never followed
        if not _ours(st):
            log.debug("shared memory: %s is not a regular file of ours (mode %o, uid %d)", path, st.st_mode, st.st_uid)
            return False
        # No race with the lstat: /dev/shm is sticky, so an entry we own can
        # be removed or renamed only by us (or root) meanwhile, and unlink
        # removes the name itself, never what a symlink would point to.
        os.unlink(path)
    except FileNotFoundError:
        return False  # gone already (unlinked by the receiver, say)
    except OSError as exc:
        log.debug("shared memory: cannot remove %s: %s", path, exc)
        return False
    return True


def _listdir() -> list[str]:
    try:
        return os.listdir(SHM_DIR)
    except OSError as exc:
        log.debug("shared memory: cannot list %s: %s", SHM_DIR, exc)
        return []


def cleanup_prefix(prefix: str) -> int:
    """Unlink every segment of ours whose name starts with ``prefix``; return how many.

    Whether the owner is alive is the caller's business (a pool shutting
    down, a worker whose parent died). Entries that are not ours are skipped;
    never raises for what it finds in ``/dev/shm``.

    Raises:
        ValueError: ``prefix`` does not start with ``bp-<pid>-``.

    Example:
        >>> prefix = pool_prefix("doc")
        >>> names = [SegmentFactory(prefix).put(memoryview(b"x")) for _ in range(2)]
        >>> cleanup_prefix(prefix)
        2
    """
    if not isinstance(prefix, str) or _OWNER.match(prefix) is None:
        raise ValueError(f"prefix must start with 'bp-<pid>-', not {prefix!r}")
    if not available():
        return 0
    return sum(_remove(name) for name in _listdir() if name.startswith(prefix))


def cleanup_orphans() -> int:
    """Unlink segments of ours whose owner process is gone; return how many.

    A segment is removed only if its name parses (``parse_name``), its owner
    pid is not this process and not alive, and it is a regular file of this
    user; everything else in ``/dev/shm`` is skipped. Never raises.

    Example:
        >>> cleanup_orphans() >= 0
        True
    """
    if not available():
        return 0
    me = os.getpid()
    dead: dict[int, bool] = {}  # one liveness check per owner
    count = 0
    for name in _listdir():
        parsed = parse_name(name)
        if parsed is None or parsed.owner == me:
            continue
        if parsed.owner not in dead:
            dead[parsed.owner] = not _alive(parsed.owner)
        if dead[parsed.owner] and _remove(name):
            count += 1
    return count


def owner_alive(prefix: str) -> bool:
    """True while the process that owns the segments ``prefix...`` may be alive.

    A prefix that does not start with ``bp-<pid>-`` counts as alive (so that
    nobody cleans up after it).

    Example:
        >>> owner_alive(pool_prefix("doc"))
        True
    """
    match = _OWNER.match(prefix) if isinstance(prefix, str) else None
    return True if match is None else _alive(int(match[1]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's; anything else: assume alive
        return True
    return True
