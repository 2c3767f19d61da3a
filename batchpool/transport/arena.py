"""Task buffers' blocks: the parent's ``Arena`` of reusable segments and the worker's ``BlockCache``.

A batch's large buffers (parent -> worker) go back to back into one **block**
of the worker's ``Arena``, reused from batch to batch. A fresh segment costs
more than the copy itself (the kernel allocates and zeroes its pages, and the
worker faults every page into its mapping); a reused block has both done
already, which is what takes 8 MB arrays from ~2 to ~8-10 GB/s. The worker
maps a block the first time it sees its name and keeps the mapping
(``BlockCache``), handing each job a view of its own buffers: read-only, or a
private copy-on-write mapping the job may change (``private_view``). A block
is back in the free list when its batch is settled, unless the worker reports
it *pinned*: a job kept a view of its argument beyond the call (stored the
array somewhere), so the block is never written again.

Lifetime: the worker unlinks a block's name as soon as it has opened it; the
parent closes (and unlinks, in case the worker never mapped it) a worker's
blocks when that worker exits or dies (``Arena.close``).

Also here, because both kinds of segment need them: how a buffer is flattened
for copying (``_as_bytes``) and the mapping flags (``_POPULATE``, ``_NO_FD``).
Imports only ``shm_names`` (names, creation, owner-checked opening, removal).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import sys
from collections.abc import Iterable, Sequence

from .shm_names import _check_prefix, _create, _open_own, _remove

__all__ = ["Arena", "Block", "BlockCache"]


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
        >>> from batchpool.transport.shm_names import pool_prefix
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


def _populate_read(region: mmap.mmap, start: int = 0, length: int = 0) -> None:
    global _populate_works
    if not _populate_works:
        return
    try:
        region.madvise(_MADV_POPULATE_READ, start, length or len(region) - start)  # type: ignore[arg-type]
    except OSError:
        _populate_works = False  # an older kernel: pages fault in as they are read


_PAGE = mmap.PAGESIZE
# /proc/self/pagemap, top byte of an entry: bit 7 (63) "present", bit 5 (61)
# "file page or shared". Present and not a file page: a private copy.
_WRITTEN = bytes(1 if b & 0xA0 == 0x80 else 0 for b in range(256))
_WRITTEN_MARK = b"\x01"


def _open_pagemap() -> int | None:
    try:
        return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _private_map(fd: int, length: int, offset: int) -> mmap.mmap:
    region = mmap.mmap(
        fd,
        length,
        flags=mmap.MAP_PRIVATE,  # no MAP_POPULATE: with PROT_WRITE it would copy every page
        prot=mmap.PROT_READ | mmap.PROT_WRITE,
        offset=offset,
        **_NO_FD,
    )
    _populate_read(region)
    return region


def _address(region: mmap.mmap) -> int:
    """Where a mapping starts in this process's memory."""
    anchor = ctypes.c_char.from_buffer(region)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # let go of the buffer export at once


class BlockCache:
    """The worker's mappings of its arena's blocks, by block id.

    Example:
        >>> from batchpool.transport.shm_names import pool_prefix
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
        # Private (copy-on-write) mappings of whole blocks, kept from batch to
        # batch with their pages mapped, and their addresses: the pages a job
        # wrote are found in /proc/self/pagemap and dropped after its batch.
        self._private: dict[int, tuple[mmap.mmap, int]] = {}
        self._pagemap_of = (-1, -1)  # (pid, fd): /proc/self is resolved when opened, so per process

    @property
    def _pagemap(self) -> int | None:
        # Opened in the process that reads it: a worker forked from the
        # forkserver (which imports this module) must not read the server's.
        if self._pagemap_of[0] != os.getpid():
            opened = _open_pagemap()
            self._pagemap_of = (os.getpid(), -1 if opened is None else opened)
        return None if self._pagemap_of[1] < 0 else self._pagemap_of[1]

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
        No copy is made until a page is written. The block's private mapping
        is kept, its pages mapped, from batch to batch (as fast as a shared
        one); ``restore`` drops what a job wrote once its batch is over.

        Raises:
            OSError: as ``view``.
        """
        fd = self._fd(block_id, name, offset, size)
        if size == 0:
            return memoryview(bytearray())
        if self._pagemap is None:
            # No pagemap to tell what a job wrote: a mapping per buffer, dropped with it.
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            region = _private_map(fd, offset - start + size, start)
            return memoryview(region)[offset - start :]
        entry = self._private.get(block_id)
        if entry is None:
            region = _private_map(fd, os.fstat(fd).st_size, 0)
            entry = self._private[block_id] = (region, _address(region))
        return memoryview(entry[0])[offset : offset + size]

    def restore(self, block_id: int, offset: int, size: int) -> None:
        """After a batch: pages of these bytes a job wrote go back to the block's own contents."""
        entry = self._private.get(block_id)
        if entry is None or self._pagemap is None or size == 0:
            return
        region, address = entry
        first = offset // _PAGE
        last = (offset + size - 1) // _PAGE
        try:
            flags = os.pread(self._pagemap, 8 * (last - first + 1), 8 * (address // _PAGE + first))
        except OSError:
            flags = b"\x80" * 8 * (last - first + 1)  # unreadable: assume written, drop them all
        # The top byte of each 8-byte entry: "present" and not "file page"
        # means this process's own copy, made when the job wrote the page.
        if _WRITTEN_MARK in flags[7::8].translate(_WRITTEN):
            start, length = first * _PAGE, (last - first + 1) * _PAGE
            region.madvise(mmap.MADV_DONTNEED, start, length)
            _populate_read(region, start, length)

    def forget(self, block_ids: Iterable[int]) -> None:
        """Unmap blocks (views still alive keep their memory mapped)."""
        for block_id in block_ids:
            region = self._maps.pop(block_id, None)
            if region is not None:
                try:
                    region.close()
                except BufferError:  # a view is alive: the mapping goes with it
                    pass
            private = self._private.pop(block_id, None)
            if private is not None:
                try:
                    private[0].close()
                except BufferError:  # a job kept a view: the mapping goes with it
                    pass
            fd = self._fds.pop(block_id, None)
            if fd is not None:
                os.close(fd)
