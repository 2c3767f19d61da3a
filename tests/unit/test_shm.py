"""The arena of reusable shared-memory blocks (parent side) and the worker's cache of them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from batchpool.transport import shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs /dev/shm")


@pytest.fixture
def arena() -> Iterator[shm.Arena]:
    a = shm.Arena(shm.pool_prefix("unit"), keep=4 * 2**20)
    yield a
    a.close()


def _names() -> set[str]:
    return {n for n in os.listdir(shm.SHM_DIR) if n.startswith(shm.pool_prefix("unit"))}


def _read(block: shm.Block, size: int, offset: int = 0) -> bytes:
    with open(os.path.join(shm.SHM_DIR, block.name), "rb") as f:
        f.seek(offset)
        return f.read(size)


def _put(arena: shm.Arena, data: bytes) -> shm.Block:
    block, offsets = arena.put([memoryview(data)])
    assert offsets == [0]
    return block


def test_a_block_is_private_named_after_the_pool_and_holds_the_data(arena: shm.Arena) -> None:
    data = os.urandom(100_000)
    block = _put(arena, data)
    mode = os.stat(os.path.join(shm.SHM_DIR, block.name)).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert block.name.startswith(shm.pool_prefix("unit"))
    assert shm.parse_name(block.name) is not None, "a name a sweep recognises as ours"
    assert _read(block, len(data)) == data


def test_a_batch_s_buffers_share_one_block_each_aligned(arena: shm.Arena) -> None:
    parts = [os.urandom(n) for n in (70_000, 1, 65_537)]
    block, offsets = arena.put([memoryview(p) for p in parts])
    assert offsets[0] == 0 and all(o % 64 == 0 for o in offsets)
    assert [_read(block, len(p), o) for p, o in zip(parts, offsets, strict=True)] == parts
    assert len(_names()) == 1


def test_a_released_block_is_reused_for_a_buffer_of_about_its_size(arena: shm.Arena) -> None:
    first = _put(arena, os.urandom(100_000))
    assert arena.release([first]) == []
    again = os.urandom(90_000)
    second = _put(arena, again)
    assert second is first
    assert _read(second, len(again)) == again
    big = _put(arena, bytes(1_000_000))
    assert big is not first, "a buffer larger than every free block gets a new one"
    arena.release([second, big])
    small = _put(arena, b"x" * 40_000)
    assert small is second, "a small buffer does not take the large block"


def test_a_pinned_block_is_never_written_again(arena: shm.Arena) -> None:
    kept = _put(arena, b"a" * 100_000)
    kept.shown = True
    arena.pin([kept.id])
    assert arena.release([kept]) == [], "the worker forgets a pinned block by itself"
    other = _put(arena, b"b" * 100_000)
    assert other is not kept


def test_blocks_beyond_the_budget_are_let_go_and_the_worker_told(arena: shm.Arena) -> None:
    blocks = [_put(arena, bytes(2**20)) for _ in range(6)]
    for block in blocks:
        block.shown = True
    dropped = arena.release(blocks)
    assert sorted(dropped) == sorted(b.id for b in blocks[:2]), "4 MiB kept: the two oldest 1 MiB blocks go"
    assert len(_names()) == 4


def test_free_blocks_are_few_whatever_the_traffic(arena: shm.Arena) -> None:
    # Each kept mapping holds a descriptor (mmap keeps one before Python 3.13).
    blocks = [_put(arena, bytes(70_000 * (1 + i % 7))) for i in range(50)]
    arena.release(blocks)
    assert len(_names()) <= shm.Arena.MAX_FREE


def test_close_unlinks_every_block(arena: shm.Arena) -> None:
    for _ in range(3):
        _put(arena, bytes(70_000))
    assert len(_names()) == 3
    arena.close()
    assert not _names()


def test_the_worker_reads_each_buffer_at_its_offset(arena: shm.Arena) -> None:
    cache = shm.BlockCache()
    parts = [b"a" * 70_000, b"b" * 3, b"c" * 5000]
    block, offsets = arena.put([memoryview(p) for p in parts])
    views = [cache.view(block.id, block.name, o, len(p)) for p, o in zip(parts, offsets, strict=True)]
    assert [bytes(v) for v in views] == parts
    for view in views:
        view.release()
    cache.forget([block.id])


def test_the_worker_maps_a_block_once_and_reads_what_the_parent_wrote(arena: shm.Arena) -> None:
    cache = shm.BlockCache()
    block = _put(arena, b"first" * 20_000)
    view = cache.view(block.id, block.name, 0, 100_000)
    assert bytes(view[:5]) == b"first"
    assert not _names(), "the name goes once the worker has mapped it"
    view.release()
    arena.release([block])
    again = _put(arena, b"again" * 20_000)
    assert again is block
    view = cache.view(block.id, "", 0, 100_000)  # known: no name needed
    assert bytes(view[:5]) == b"again"
    view.release()
    cache.forget([block.id])
