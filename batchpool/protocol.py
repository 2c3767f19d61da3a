"""The wire format between the parent and a worker: tags, headers, batches, per-job outcomes.

Imports ``batchpool.serialization``, ``batchpool.errors`` and ``batchpool.jobs``
only; every backend that ships batches somewhere (worker processes, a Dask
cluster) speaks it, and a worker imports nothing heavier.

Messages, parent -> worker (one message each)::

    B  header(batch id, kind, len(fn), fn flags, fn digest, item time limit) + pickled callable
       + framed pickled calls. Flag ``FN_BY_VALUE``: the callable went by
       value; the worker caches it under the digest (``FnCache``), and the
       parent sends its bytes (len(fn) > 0) only the first time for that
       worker: later batches carry the digest alone (len(fn) == 0).
    D  pickled block ids: arena blocks the parent let go; unmap them
    Q  stop after the current batch

worker -> parent::

    R  header(batch id, start, count, flags, run time) + framed outcome payload:
       one outcome per job for jobs start .. start+count of the batch
    P  pickled block ids: the batch kept views of these blocks beyond its call
    S  pickled (batch id, exception, what failed): the batch did not unpickle;
       what failed is ``SPLIT_CALLS``, ``SPLIT_FN``, or ``SPLIT_FN_NOT_FOUND``
       (a callable sent by reference the worker cannot find: send it by value)
    H  the worker started (its main module imported): sent before anything else
    K  header(batch id): the worker skipped this batch (the parent took it back)
    I  pickled exception: the initializer failed; this worker is exiting

Outcomes are encoded **per job**: a value of a plain type (numbers, strings,
bytes, None) travels inline, since unpickling it cannot fail; any other value,
and every exception, is pickled on its own. So a result or an exception that
the parent cannot unpickle fails that one job with ``TransportError``, never its
batch-mates (the ledger issue measured 499 of 1,000 innocent jobs lost when a
batch's outcomes were one pickle).

The ``R`` header stays outside the pickle: if the payload cannot be read at
all, the parent still knows which jobs it was about. Flag ``YIELDED`` says the
worker stopped early (the parent asked it to give work back): jobs after
``start + count`` never started and go back to the lanes untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from . import serialization
from .errors import TransportError
from .jobs import ChunkResult, ExceptionWithTraceback

__all__ = [
    "FINAL",
    "MSG_BATCH",
    "MSG_DROP",
    "MSG_INIT_FAILED",
    "MSG_OUTCOME",
    "MSG_PINNED",
    "MSG_READY",
    "MSG_SKIPPED",
    "MSG_SPLIT",
    "MSG_STOP",
    "FN_BY_VALUE",
    "FN_CACHE_SIZE",
    "PROTOCOL_VERSION",
    "SPLIT_CALLS",
    "SPLIT_FN",
    "SPLIT_FN_NOT_FOUND",
    "FnCache",
    "FnCacheMirror",
    "YIELDED",
    "Outcome",
    "batch_item_timeout",
    "decode_batch_header",
    "decode_outcome",
    "decode_skipped",
    "encode_batch",
    "encode_outcome",
    "encode_skipped",
    "picklable_error",
]

#: Bumped whenever a message changes shape; a remote worker (Dask) running
#: another batchpool refuses batches of another version with a clear error.
PROTOCOL_VERSION = 3

MSG_BATCH = b"B"
MSG_DROP = b"D"
MSG_STOP = b"Q"
MSG_OUTCOME = b"R"
MSG_PINNED = b"P"
MSG_SPLIT = b"S"
MSG_SKIPPED = b"K"
MSG_INIT_FAILED = b"I"
MSG_READY = b"H"

FN_BY_VALUE = 1  # batch header flag: the callable went by value, cached under its digest

SPLIT_CALLS = 0  # the calls did not unpickle
SPLIT_FN = 1  # the callable did not unpickle
SPLIT_FN_NOT_FOUND = 2  # the callable, sent by reference, is not there: send it by value

#: Callables sent by value one worker keeps (by digest); the parent mirrors it.
FN_CACHE_SIZE = 64

FINAL = 1  # the batch's last outcome message
YIELDED = 2  # the worker gave the rest of the batch back unstarted

_BATCH_HEADER = struct.Struct("<cQBIB16sd")
_OUTCOME_HEADER = struct.Struct("<cQIIBd")
_SKIPPED_HEADER = struct.Struct("<cQ")

# Types whose pickles always load: their values travel inline, all in one pickle.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})

#: (ok, value): the job's result, or the exception it ended with.
Outcome = tuple[bool, Any]
# How a worker stores large buffers (returns their references for the header).
StoreBuffers = Callable[[list[memoryview]], list[tuple[int, int, int, str]]]
# How the parent opens them again.
OpenBuffers = Callable[[list[tuple[int, int, int, str]]], list[Any]]


# -- batches ------------------------------------------------------------------------


def encode_batch(
    batch_id: int,
    kind: int,
    fn_blob: bytes,
    oob_header: bytes,
    calls_blob: bytes,
    fn_flags: int = 0,
    fn_digest: bytes = b"",
    item_timeout: float | None = None,
) -> tuple[bytes, ...]:
    """One batch for the wire, as the parts of one message (callable and calls already pickled).

    With ``fn_flags=FN_BY_VALUE``, ``fn_digest`` names the callable in the
    worker's cache, and ``fn_blob`` may be empty (the worker has it).
    ``item_timeout`` is the time limit of each item of a ``map`` chunk, which
    the worker enforces itself (None: no limit).

    Example:
        >>> parts = encode_batch(7, 0, b"fn", b"", b"calls", item_timeout=2.5)
        >>> decode_batch_header(b"".join(parts))[:3], batch_item_timeout(b"".join(parts))
        ((7, 0, 2), 2.5)
    """
    header = _BATCH_HEADER.pack(MSG_BATCH, batch_id, kind, len(fn_blob), fn_flags, fn_digest, item_timeout or 0.0)
    return (header, fn_blob, oob_header, calls_blob)


def decode_batch_header(message: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, bytes]:
    """Batch id, kind, length of the pickled callable, where it starts, fn flags and fn digest."""
    _, batch_id, kind, fn_len, fn_flags, fn_digest, _ = _BATCH_HEADER.unpack_from(message)
    return batch_id, kind, fn_len, _BATCH_HEADER.size, fn_flags, fn_digest


class FnCacheMirror:
    """The parent's copy of one worker's ``FnCache`` keys: whether to send a callable's bytes.

    Both sides apply the same operations to the same keys in the same order
    (every batch message is read by the worker, in order, even one it then
    skips), so the mirror knows exactly what the worker holds.

    Example:
        >>> mirror = FnCacheMirror(2)
        >>> mirror.needs_bytes(b"a"), mirror.needs_bytes(b"a")
        (True, False)
    """

    def __init__(self, size: int = FN_CACHE_SIZE) -> None:
        self._size = size
        self._keys: dict[bytes, None] = {}  # insertion order is recency order

    def needs_bytes(self, fn_digest: bytes) -> bool:
        """Record one batch sent with this callable; True: it must carry the bytes."""
        if fn_digest in self._keys:
            del self._keys[fn_digest]
            self._keys[fn_digest] = None
            return False
        self._keys[fn_digest] = None
        if len(self._keys) > self._size:
            del self._keys[next(iter(self._keys))]
        return True


class FnCache:
    """A worker's callables sent by value, by digest: each crosses once, is unpickled once.

    Example:
        >>> cache = FnCache(2)
        >>> cache.receive(b"k", serialization.dumps(len))
        >>> cache.receive(b"k", b"")  # a later batch: the digest alone
        >>> cache.get(b"k")("abc")
        3
    """

    def __init__(self, size: int = FN_CACHE_SIZE) -> None:
        self._size = size
        # digest -> the pickle until first used, then the callable.
        self._entries: dict[bytes, tuple[bool, Any]] = {}

    def receive(self, fn_digest: bytes, blob: bytes | memoryview) -> None:
        """Apply one batch header's callable (as ``FnCacheMirror.needs_bytes`` did)."""
        if len(blob):
            self._entries[fn_digest] = (False, bytes(blob))
            if len(self._entries) > self._size:
                del self._entries[next(iter(self._entries))]
        elif fn_digest in self._entries:
            self._entries[fn_digest] = self._entries.pop(fn_digest)

    def get(self, fn_digest: bytes) -> Any:
        """The callable (unpickled on first use); raises KeyError or what unpickling raised."""
        loaded, value = self._entries[fn_digest]
        if loaded:
            return value
        fn = serialization.loads(value)
        self._entries[fn_digest] = (True, fn)
        return fn


def batch_item_timeout(message: bytes | bytearray | memoryview) -> float | None:
    """The time limit of each item of a ``map`` chunk batch (None: no limit)."""
    limit = float(_BATCH_HEADER.unpack_from(message)[6])
    return limit if limit > 0 else None


def encode_skipped(batch_id: int) -> bytes:
    """A ``K`` message: the worker found this batch taken back and did not start it."""
    return _SKIPPED_HEADER.pack(MSG_SKIPPED, batch_id)


def decode_skipped(message: bytes | bytearray | memoryview) -> int:
    """The batch id of a ``K`` message."""
    return int(_SKIPPED_HEADER.unpack_from(message)[1])


# -- outcomes -------------------------------------------------------------------------


def encode_outcome(
    batch_id: int,
    start: int,
    outcomes: Sequence[Outcome],
    run_time: float,
    flags: int,
    store: StoreBuffers | None = None,
    threshold: int | None = None,
) -> tuple[bytes, ...]:
    """An ``R`` message for ``outcomes`` (jobs ``start``...), as the parts of one message.

    Failed outcomes carry an ``ExceptionWithTraceback`` (see ``jobs``). Values
    of plain types go inline; every other value and every exception is pickled
    on its own (with its large buffers out of band through ``store``, when
    given), so that each job can be decoded, or fail to, alone.

    Example:
        >>> parts = encode_outcome(3, 0, [(True, 1), (True, "a")], 0.5, FINAL)
        >>> head, outcomes = decode_outcome(b"".join(parts))
        >>> head, outcomes
        ((3, 0, 2, 1, 0.5), [(True, 1), (True, 'a')])
    """
    header = _OUTCOME_HEADER.pack(MSG_OUTCOME, batch_id, start, len(outcomes), flags, run_time)
    inline, encoded, big = _encode_all(outcomes, threshold if store is not None else None)
    refs: list[tuple[int, int, int, str]] = []
    if big and store is not None:
        try:
            refs = store(big)
        except OSError:
            # No shared memory to be had (/dev/shm full, or hostile): slower,
            # but the results still arrive, in band.
            inline, encoded, _ = _encode_all(outcomes, None)
    # Only exact plain types are inline, so this pickle cannot fail.
    return header, serialization.oob_header(refs), serialization.dumps((inline, encoded))


def _encode_all(
    outcomes: Sequence[Outcome], threshold: int | None
) -> tuple[list[Any], dict[int, tuple[bool, bytes, int]], list[memoryview]]:
    inline: list[Any] = []
    encoded: dict[int, tuple[bool, bytes, int]] = {}
    big: list[memoryview] = []
    for i, (ok, value) in enumerate(outcomes):
        if ok and type(value) in _PLAIN:
            inline.append(value)
            continue
        inline.append(None)
        encoded[i] = _encode_one(ok, value, big, threshold)
    return inline, encoded, big


def _encode_one(ok: bool, value: Any, big: list[memoryview], threshold: int | None) -> tuple[bool, bytes, int]:
    """One job's outcome, pickled alone: (ok, pickle, how many of ``big`` are its buffers)."""
    before = len(big)
    try:
        data, buffers = serialization.dumps_oob(value, threshold)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ fails this job only
        if ok and isinstance(value, ChunkResult):
            return _encode_one(True, _picklable_chunk(value), big, threshold)
        return False, _dumps_error(ExceptionWithTraceback(exc) if ok else value), 0
    big.extend(buffers)
    return ok, data, len(big) - before


def _dumps_error(error: ExceptionWithTraceback) -> bytes:
    try:
        return serialization.dumps(error)
    except BaseException:  # noqa: BLE001 - fall back to a stand-in that always pickles
        return serialization.dumps(error.as_remote_error())


def _picklable_chunk(chunk: ChunkResult) -> ChunkResult:
    """A map chunk whose items each pickle: an item that does not fails alone."""
    values = list(chunk.values)
    errors = dict(chunk.errors)
    for i, value in enumerate(values):
        if i in errors:
            try:
                serialization.dumps(errors[i])
            except BaseException:  # noqa: BLE001
                errors[i] = errors[i].as_remote_error()
            continue
        try:
            serialization.dumps(value)
        except BaseException as exc:  # noqa: BLE001 - becomes that item's error
            values[i] = None
            errors[i] = ExceptionWithTraceback(exc)
    return ChunkResult(values, errors)


def decode_outcome(
    message: bytes | bytearray | memoryview, open_buffers: OpenBuffers | None = None
) -> tuple[tuple[int, int, int, int, float], list[Outcome]]:
    """Read an ``R`` message: its header (batch id, start, count, flags, run time) and one outcome per job.

    A job whose outcome does not unpickle here gets ``(False, TransportError)``;
    the others are unaffected. If the payload itself is unreadable, every job
    of the message gets that error.
    """
    _, batch_id, start, count, flags, run_time = _OUTCOME_HEADER.unpack_from(message)
    head = (batch_id, start, count, flags, run_time)
    view = memoryview(message)[_OUTCOME_HEADER.size :]
    try:
        data, refs = serialization.unframe_oob(view)
        buffers = open_buffers(refs) if refs and open_buffers is not None else []
        inline, encoded = serialization.loads(data)
    except BaseException as exc:  # noqa: BLE001 - no job of the message is lost for it
        error = _transport_error("results", exc)
        return head, [(False, error)] * count
    if not encoded:
        return head, [(True, value) for value in inline]
    outcomes: list[Outcome] = []
    at = 0
    for i, value in enumerate(inline):
        item = encoded.get(i)
        if item is None:
            outcomes.append((True, value))
            continue
        ok, blob, nbuf = item
        try:
            outcomes.append((ok, serialization.loads(blob, buffers[at : at + nbuf])))
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __setstate__ included
            outcomes.append((False, _transport_error("result" if ok else "exception", exc)))
        at += nbuf
    return head, outcomes


def _transport_error(what: str, exc: BaseException) -> TransportError:
    error = TransportError(f"the job's {what} could not be unpickled in the parent: {exc!r}")
    error.__cause__ = exc
    return error


def picklable_error(exc: BaseException) -> ExceptionWithTraceback:
    """Wrap ``exc`` with its traceback, or a stand-in when it does not pickle.

    Example:
        >>> type(picklable_error(ValueError("x")).exc).__name__
        'ValueError'
    """
    wrapped = ExceptionWithTraceback(exc)
    try:
        serialization.dumps(wrapped)
    except BaseException:  # noqa: BLE001
        return wrapped.as_remote_error()
    return wrapped
