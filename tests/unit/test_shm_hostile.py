"""Shared-memory naming and cleanup against a hostile /dev/shm.

Any local user can put anything in /dev/shm under any name. These tests put
there, under names shaped like a dead pool's segments, what a sweep or a
receiver must leave alone (a directory, a symlink to a file elsewhere, a fifo,
another user's file, malformed names) and take the next name before the
creator does (through the ``shm_names._token`` hook, so every collision is
certain, not hoped for). No processes: a dead owner is a pid above
``pid_max``, which no process can have.

Old code elsewhere on the machine (a checkout without these fixes) sweeping
/dev/shm while one of these tests runs can trip on, or remove, the entries
made here: the windows are kept to a few milliseconds.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchpool.transport import shm, shm_names

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs /dev/shm")

NOBODY = 65534
KINDS = ["directory", "symlink", "fifo", "other user's file"]


def _dead_pid() -> int:
    # Pids are below pid_max: this one is dead now and stays dead. Offset by
    # our own pid, it is this test run's alone: another run side by side
    # sweeps our orphans as we sweep theirs, but never counts ours as its own.
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + os.getpid()


DEAD = _dead_pid()


def _name(owner: int = DEAD, pool: str = "0", token: str | None = None) -> str:
    return f"bp-{owner}-{pool}-{token or secrets.token_hex(8)}"


def _path(name: str) -> str:
    return os.path.join(shm.SHM_DIR, name)


@pytest.fixture
def made() -> Iterator[list[str]]:
    """Names of /dev/shm entries the test makes; all removed afterwards, whatever they are."""
    names: list[str] = []
    yield names
    for name in names:
        path = _path(name)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside /dev/shm that a symlink in it points to: never to be touched."""
    target = tmp_path / "precious"
    target.write_bytes(b"precious")
    return target


@pytest.fixture
def hostile(made: list[str], outside: Path) -> Callable[[str, str], str]:
    """Make an entry of some kind that is not a segment of ours; returns its name."""

    def make(kind: str, name: str) -> str:
        made.append(name)
        path = _path(name)
        if kind == "directory":
            os.mkdir(path, 0o700)
        elif kind == "symlink":
            os.symlink(outside, path)
        elif kind == "fifo":
            os.mkfifo(path, 0o600)
        elif kind == "other user's file":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            with open(path, "xb") as f:
                f.write(b"theirs")
            os.chown(path, NOBODY, NOBODY)
        elif kind == "our file":  # ours, but under a name we never make
            with open(path, "xb") as f:
                f.write(b"x")
        else:  # pragma: no cover
            raise AssertionError(kind)
        return name

    return make


def _orphan(made: list[str], owner: int = DEAD) -> str:
    """A genuine orphan: a segment of ours whose owner is dead (the sweep's control)."""
    name = _name(owner)
    made.append(name)
    with open(_path(name), "xb") as f:
        f.write(b"orphan")
    os.chmod(_path(name), 0o600)
    return name


def _untouched(name: str, kind: str, outside: Path) -> None:
    mode = os.lstat(_path(name)).st_mode
    expected = {"directory": stat.S_ISDIR, "symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO}
    assert expected.get(kind, stat.S_ISREG)(mode), f"the {kind} is still there, as it was"
    assert outside.read_bytes() == b"precious", "a symlink's target is never written or removed"


# -- sweeps ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_orphan_sweep_skips_what_is_not_ours_and_removes_what_is(
    kind: str, hostile: Callable[[str, str], str], made: list[str], outside: Path
) -> None:
    name = hostile(kind, _name())
    orphan = _orphan(made)
    shm.cleanup_orphans()  # raises nothing
    _untouched(name, kind, outside)
    assert not os.path.exists(_path(orphan)), "the same dead owner's real segment is swept"


@pytest.mark.parametrize("kind", KINDS)
def test_a_pool_s_own_cleanup_skips_what_is_not_ours(
    kind: str, hostile: Callable[[str, str], str], made: list[str], outside: Path
) -> None:
    prefix = shm.pool_prefix("hostile")
    name = hostile(kind, prefix + secrets.token_hex(8))
    mine = shm.SegmentFactory(prefix).put(memoryview(b"mine"))
    made.append(mine)
    assert shm.cleanup_prefix(prefix) == 1
    _untouched(name, kind, outside)
    assert not os.path.exists(_path(mine))
    assert shm.unlink(name) is False


@pytest.mark.parametrize(
    "name",
    [
        f"bp-{DEAD}-0-{DEAD}-0",  # the old, predictable names
        f"bp-{DEAD}-0-{'a' * 15}",
        f"bp-{DEAD}-0-{'A' * 16}",
        f"bp-{DEAD}-0-{'a' * 16}.tmp",
        f"bp-0{DEAD}-0-{'a' * 16}",
        f"bp-{DEAD}-no-dash-{'a' * 16}",
        f"bp-{DEAD}-{'p' * 33}-{'a' * 16}",
        f"bp-{DEAD}0000-0-{'a' * 16}",  # no pid has 8 digits
    ],
)
def test_a_sweep_leaves_names_that_do_not_parse_alone(
    name: str, hostile: Callable[[str, str], str], outside: Path
) -> None:
    hostile("our file", name)
    assert shm.parse_name(name) is None
    assert shm.cleanup_orphans() >= 0
    assert shm.cleanup_prefix(f"bp-{DEAD}-") == 0
    _untouched(name, "our file", outside)


def test_a_segment_we_may_not_remove_is_skipped(made: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _orphan(made)
    # A segment of a live owner (us): no other test run's sweep removes it meanwhile.
    prefix = shm.pool_prefix("hostile")
    mine = shm.SegmentFactory(prefix).put(memoryview(b"mine"))
    made.append(mine)

    def refuse(path: str, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    with monkeypatch.context() as patch:
        patch.setattr(shm.os, "unlink", refuse)
        assert shm.cleanup_orphans() == 0
        assert shm.cleanup_prefix(prefix) == 0
        assert shm.unlink(mine) is False
    assert os.path.exists(_path(mine))


def test_an_entry_gone_between_listing_and_looking_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another sweep (another pool, another test run) may remove it first.
    monkeypatch.setattr(shm_names, "_listdir", lambda: [_name()])
    assert shm.cleanup_orphans() == 0
    assert shm.cleanup_prefix(f"bp-{DEAD}-") == 0


def test_a_dev_shm_that_cannot_be_listed_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> list[str]:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(shm.os, "listdir", refuse)
    assert shm.cleanup_orphans() == 0
    assert shm.cleanup_prefix(f"bp-{DEAD}-") == 0


def test_segments_of_live_owners_stay(made: list[str]) -> None:
    live = _orphan(made, owner=1)  # init: alive, and not us
    mine = _orphan(made, owner=os.getpid())
    shm.cleanup_orphans()
    assert os.path.exists(_path(live)) and os.path.exists(_path(mine))


# -- receivers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_receiver_refuses_what_is_not_ours_and_leaves_it(
    kind: str, hostile: Callable[[str, str], str], outside: Path
) -> None:
    # A fifo is never opened (that would wait for a writer): the pytest
    # timeout is the bound should it be.
    name = hostile(kind, _name(os.getpid()))
    with pytest.raises(OSError, match="not a segment of ours"):
        shm.open_segment(name, 8)
    with pytest.raises(OSError, match="not a segment of ours"):
        shm.BlockCache().view(1, name, 0, 8)
    _untouched(name, kind, outside)


@pytest.mark.parametrize("name", ["../../etc/passwd", "", "bp-1-0-..", f"{shm.pool_prefix('0')}{'a' * 15}"])
def test_a_receiver_refuses_names_we_never_make(name: str) -> None:
    with pytest.raises(OSError) as info:
        shm.open_segment(name, 8)
    assert info.value.errno == errno.EINVAL


def test_a_receiver_refuses_a_segment_shorter_than_announced_and_removes_it() -> None:
    name = shm.SegmentFactory(shm.pool_prefix("hostile")).put(memoryview(b"four"))
    with pytest.raises(OSError, match="shorter than 8"):
        shm.open_segment(name, 8)
    assert not os.path.exists(_path(name)), "ours: removed all the same"


def test_a_missing_segment_is_an_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        shm.open_segment(_name(os.getpid()), 8)


# -- creation -------------------------------------------------------------------


def _tokens(monkeypatch: pytest.MonkeyPatch, *tokens: str) -> list[str]:
    """Make ``shm_names._token`` draw ``tokens`` in order (the last one forever); returns what was drawn."""
    drawn: list[str] = []

    def draw() -> str:
        token = tokens[min(len(drawn), len(tokens) - 1)]
        drawn.append(token)
        return token

    monkeypatch.setattr(shm_names, "_token", draw)
    return drawn


TAKEN, FREE = "0" * 16, "f" * 16
CREATE_KINDS = ["our file", "other user's file", "directory", "symlink", "fifo"]


@pytest.mark.parametrize("kind", CREATE_KINDS)
def test_a_taken_name_makes_put_draw_another(
    kind: str, hostile: Callable[[str, str], str], outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = shm.SegmentFactory(shm.pool_prefix("hostile"))
    taken = hostile(kind, factory.prefix + TAKEN)
    drawn = _tokens(monkeypatch, TAKEN, FREE)
    name = factory.put(memoryview(b"result"))
    assert (name, drawn) == (factory.prefix + FREE, [TAKEN, FREE])
    assert bytes(shm.open_segment(name, 6)) == b"result"
    _untouched(taken, kind, outside)
    if kind in ("our file", "other user's file"):
        with open(_path(taken), "rb") as f:
            assert f.read() in (b"x", b"theirs"), "never opened, truncated or written"


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_a_taken_name_makes_the_arena_draw_another(
    kind: str, hostile: Callable[[str, str], str], outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena = shm.Arena(shm.pool_prefix("hostile"), keep=2**20)
    taken = hostile(kind, arena.prefix + TAKEN)
    _tokens(monkeypatch, TAKEN, FREE)
    try:
        block, _ = arena.put([memoryview(b"task" * 1000)])
        assert block.name == arena.prefix + FREE
    finally:
        arena.close()
    _untouched(taken, kind, outside)


def test_names_taken_forever_give_an_os_error_after_a_few_tries(
    hostile: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = shm.pool_prefix("hostile")
    hostile("directory", prefix + TAKEN)
    drawn = _tokens(monkeypatch, TAKEN)
    with pytest.raises(OSError) as info:
        shm.SegmentFactory(prefix).put(memoryview(b"result"))
    assert info.value.errno == errno.EEXIST
    assert len(drawn) == shm.CREATE_ATTEMPTS
    arena = shm.Arena(prefix, keep=2**20)
    with pytest.raises(OSError):
        arena.put([memoryview(b"task")])
    arena.close()
    assert [n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix)] == [prefix + TAKEN]


def test_a_full_dev_shm_is_an_os_error_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = shm.pool_prefix("hostile")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError) as info:
        patch.setattr(shm.os, "write", full)
        shm.SegmentFactory(prefix).put(memoryview(b"result"))
    assert info.value.errno == errno.ENOSPC
    assert not [n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix)]


def test_segments_are_private_and_names_unpredictable() -> None:
    prefix = shm.pool_prefix("hostile")
    first, second = shm.SegmentFactory(prefix), shm.SegmentFactory(prefix)
    names = [factory.put(memoryview(b"x")) for _ in range(20) for factory in (first, second)]
    try:
        assert len(set(names)) == len(names), "two factories of one pool never collide"
        for name in names:
            assert shm.parse_name(name) == (os.getpid(), "hostile", name[len(prefix) :])
            assert stat.S_IMODE(os.stat(_path(name)).st_mode) == 0o600
        numbers = [int(name[len(prefix) :], 16) for name in names]
        # Not a counter, nor anything near one: consecutive names are 64-bit
        # draws (a false alarm here is a 1 in 2**26 event).
        assert all(abs(a - b) > 2**32 for a, b in itertools.pairwise(numbers))
    finally:
        for name in names:
            shm.unlink(name)


def test_prefixes_and_pool_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="pool_id"):
        shm.pool_prefix("a-b")
    for prefix in ("bp-doc-", f"bp-{os.getpid()}-0", "", "/tmp/x-"):
        with pytest.raises(ValueError, match="prefix"):
            shm.SegmentFactory(prefix)
        with pytest.raises(ValueError, match="prefix"):
            shm.Arena(prefix, keep=0)
    with pytest.raises(ValueError, match="prefix"):
        shm.cleanup_prefix("")  # would be every segment of ours
