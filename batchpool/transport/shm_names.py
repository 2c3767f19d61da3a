"""Segment names, exclusive creation, owner-checked opening and the sweeps.

Every shared-memory segment of batchpool is a file in ``/dev/shm``; this
module decides what it is called, makes it without ever touching an entry
someone else put there, opens only entries of ours, and removes only what it
can prove is ours (``cleanup_prefix``, ``cleanup_orphans``, ``unlink``).
What goes into segments is ``arena``'s (task buffers) and ``shm``'s (results,
shared arrays) business. Imports nothing of batchpool.

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
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
from typing import NamedTuple

__all__ = [
    "CREATE_ATTEMPTS",
    "SHM_DIR",
    "SegmentName",
    "available",
    "cleanup_orphans",
    "cleanup_prefix",
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


def unlink(name: str) -> bool:
    """Remove segment ``name`` if it is ours; True if it was removed.

    Only a name of ours (``parse_name``) that is a regular file of this user
    is removed; anything else under that name, or nothing, is left as it is.
    Never raises.

    Example:
        >>> from batchpool.transport.shm import SegmentFactory
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
        >>> from batchpool.transport.shm import SegmentFactory
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
