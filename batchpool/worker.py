"""The worker: run a batch, job by job, and send back one outcome per job.

Imports ``batchpool.jobs``, ``batchpool.serialization`` and the transport
interface; never the executor, the backends or rich (spawned workers import
this module, and it must stay light).

Wire protocol, parent -> worker (one message each):
    ``B`` header(batch id, kind, len(fn)) + pickled callable + pickled calls
          (framed with their out-of-band buffers' references)
    ``D`` pickled block ids: arena blocks the parent let go; unmap them
    ``Q`` stop after the current batch
worker -> parent:
    ``R`` header(batch id, start, count, final, run time) + pickled
          (values, errors): a part or the rest of a batch
    ``P`` pickled block ids: the batch's job kept views of these blocks
          beyond its call; sent before the batch's final ``R``
    ``S`` pickled (batch id, exception, callable_failed): the batch could not
          be unpickled here; the parent fails or splits it
    ``I`` pickled exception: the initializer failed; this worker is exiting
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import serialization
from .errors import BatchResultError
from .jobs import BATCHED_BISECT, BATCHED_KINDS, CALLS, CHUNKS, ChunkResult, ExceptionWithTraceback
from .transport import shm

__all__ = [
    "MSG_BATCH",
    "MSG_DROP",
    "MSG_INIT_FAILED",
    "MSG_OUTCOME",
    "MSG_PINNED",
    "MSG_SPLIT",
    "MSG_STOP",
    "WorkerSpec",
    "encode_batch",
    "parse_outcome",
    "run_batched",
    "run_chunk",
    "worker_main",
]

MSG_BATCH = b"B"
MSG_DROP = b"D"
MSG_STOP = b"Q"
MSG_OUTCOME = b"R"
MSG_PINNED = b"P"
MSG_SPLIT = b"S"
MSG_INIT_FAILED = b"I"

_BATCH_HEADER = struct.Struct("<cQBI")
_OUTCOME_HEADER = struct.Struct("<cQII?d")

#: A batch that runs longer than this sends what it has finished so far, so
#: one slow job does not hold its batch-mates' results hostage (and a crash
#: later in the batch loses nothing that already finished).
STREAM_INTERVAL = 0.05

#: While idle, a worker looks this often whether its parent is still alive, so
#: workers of a killed parent exit on their own instead of lingering.
PARENT_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; pickled once to start it."""

    worker_channel: Callable[[Any], Any]
    channel_end: Any
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks: int | None
    shm_prefix: str | None = None  # None: no shared memory, everything in band
    oob_threshold: int | None = None


# The worker's own segment factory (results) and its mappings of the
# parent's arena blocks (tasks); set by worker_main.
_segments: shm.SegmentFactory | None = None
_threshold: int | None = None
_blocks = shm.BlockCache()


def _pack(obj: object) -> tuple[bytes, bytes]:
    """Pickle ``obj``, its large buffers in shared-memory segments: (header, pickle)."""
    data, big = serialization.dumps_oob(obj, _threshold if _segments is not None else None)
    segments = [(0, 0, buf.nbytes, _segments.put(buf)) for buf in big] if _segments is not None else []
    return serialization.oob_header(segments), data


_Lent = list[tuple[int, memoryview, Any]]


def unpack(view: memoryview, lent: _Lent | None = None) -> Any:
    """Unpickle a framed pickle, mapping its out-of-band buffers.

    One-shot segments are unlinked once mapped. Arena blocks are lent, and
    recorded in ``lent`` for ``_pinned`` to check after the call.
    """
    data, segments = serialization.unframe_oob(view)
    buffers: list[Any] = []
    for block_id, offset, size, name in segments:
        if block_id:
            block_view = _blocks.view(block_id, name, offset, size)
            # Handed over wrapped: every view made of a PickleBuffer is an
            # export of ``block_view`` itself (a view made of a memoryview
            # is not), so ``block_view.release()`` later tells whether any
            # object made from it is still alive.
            lent_buffer = serialization.lend(block_view)
            if lent is not None:
                lent.append((block_id, block_view, lent_buffer))
            buffers.append(lent_buffer)
        else:
            buffers.append(shm.open_segment(name, size))
    return serialization.loads(data, buffers)


def _pinned(lent: _Lent) -> list[int]:
    """Blocks an object still holds a view of (the job stored its argument)."""
    pinned: list[int] = []
    for block_id, view, wrapper in lent:
        wrapper.release()
        try:
            view.release()
        except BufferError:
            if block_id not in pinned:
                pinned.append(block_id)
    _blocks.forget(pinned)  # the live views keep their mappings; never reused
    return pinned


def encode_batch(batch_id: int, kind: int, fn_blob: bytes, oob_header: bytes, calls_blob: bytes) -> tuple[bytes, ...]:
    """One batch for the wire, as the parts of one message (the callable and calls already pickled)."""
    return (_BATCH_HEADER.pack(MSG_BATCH, batch_id, kind, len(fn_blob)), fn_blob, oob_header, calls_blob)


def run_chunk(
    fn: Callable[..., Any],
    items: list[Any],
    wrap: Callable[[BaseException], Any],
    star: bool = True,
) -> ChunkResult:
    """Run ``fn(*item)`` (or ``fn(item)`` without ``star``) for each item of a ``map`` chunk.

    Each item runs exactly once; one that raises fails alone.
    """
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for i, item in enumerate(items):
        try:
            values.append(fn(*item) if star else fn(item))
        except BaseException as exc:  # noqa: BLE001 - reported on that item
            values.append(None)
            errors[i] = wrap(exc)
    return ChunkResult(values, errors)


def run_batched(
    fn: Callable[..., Any],
    items: list[Any],
    wrap: Callable[[BaseException], Any],
    bisect: bool,
) -> ChunkResult:
    """Call a ``@batched`` function once for ``items``; one outcome per item.

    With ``bisect``, a call that raises is repeated on each half of the items,
    down to single items, so that only the item(s) that make it fail fail
    (O(log n) extra calls per bad item).
    """
    try:
        out = fn(items)
    except BaseException as exc:  # noqa: BLE001 - reported on the items
        if bisect and len(items) > 1:
            mid = len(items) // 2
            left = run_batched(fn, items[:mid], wrap, bisect)
            right = run_batched(fn, items[mid:], wrap, bisect)
            merged = dict(left.errors)
            merged.update((mid + i, e) for i, e in right.errors.items())
            return ChunkResult(left.values + right.values, merged)
        error = wrap(exc)
        return ChunkResult([None] * len(items), dict.fromkeys(range(len(items)), error))
    if not isinstance(out, list) or len(out) != len(items):
        got = f"list of {len(out)}" if isinstance(out, list) else type(out).__name__
        name = getattr(fn, "__qualname__", repr(fn))
        error = wrap(BatchResultError(name, len(items), got))
        return ChunkResult([None] * len(items), dict.fromkeys(range(len(items)), error))
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for i, value in enumerate(out):
        if isinstance(value, BaseException):
            errors[i] = wrap(value)
            values.append(None)
        else:
            values.append(value)
    return ChunkResult(values, errors)


def _encode_outcome(
    batch_id: int, start: int, values: list[Any], errors: dict[int, Any], run_time: float, final: bool
) -> tuple[bytes, ...]:
    """An ``R`` message, as the parts of one message."""
    # The header stays outside the pickle: if the parent cannot unpickle the
    # payload it still knows which jobs to fail.
    header = _OUTCOME_HEADER.pack(MSG_OUTCOME, batch_id, start, len(values), final, run_time)
    try:
        return (header, *_pack((values, errors)))
    except BaseException:  # noqa: BLE001 - SystemExit in __reduce__ must not kill us
        pass
    return (header, *_pack(_make_picklable(values, errors)))


def parse_outcome(message: bytes | bytearray | memoryview) -> tuple[int, int, int, bool, float, memoryview]:
    """Split an ``R`` message into batch id, start, count, final, run time, payload."""
    _, batch_id, start, count, final, run_time = _OUTCOME_HEADER.unpack_from(message)
    return batch_id, start, count, bool(final), run_time, memoryview(message)[_OUTCOME_HEADER.size :]


def _make_picklable(values: list[Any], errors: dict[int, Any]) -> tuple[list[Any], dict[int, Any]]:
    """Replace each value or error that does not pickle by an error that does."""
    values = list(values)
    errors = dict(errors)
    for i, value in enumerate(values):
        if i in errors:
            continue
        if isinstance(value, ChunkResult):
            values[i] = ChunkResult(*_make_picklable(value.values, value.errors))
            continue
        try:
            serialization.dumps(value)
        except BaseException as exc:  # noqa: BLE001 - becomes that job's error
            values[i] = None
            errors[i] = ExceptionWithTraceback(exc)
    for i, error in errors.items():
        try:
            serialization.dumps(error)
        except BaseException:  # noqa: BLE001 - fall back to a stand-in that pickles
            errors[i] = error.as_remote_error()
    return values, errors


def _run_batch(channel: Any, batch_id: int, kind: int, fn: Callable[..., Any], calls: list[Any]) -> tuple[bytes, ...]:
    """Run a batch, streaming partial outcomes; return the final outcome, unsent."""
    if kind in BATCHED_KINDS:
        t0 = time.perf_counter()
        items = [args[0] for args, _ in calls]
        out = run_batched(fn, items, ExceptionWithTraceback, kind == BATCHED_BISECT)
        return _encode_outcome(batch_id, 0, out.values, out.errors, time.perf_counter() - t0, True)
    values: list[Any] = []
    errors: dict[int, Any] = {}
    start = 0
    last = len(calls) - 1
    t0 = t_sent = time.perf_counter()
    for i, (args, kwargs) in enumerate(calls):
        try:
            if kind == CALLS:
                values.append(fn(*args, **kwargs) if kwargs else fn(*args))
            else:
                values.append(run_chunk(fn, args[0], ExceptionWithTraceback, kind == CHUNKS))
        except BaseException as exc:  # noqa: BLE001 - SystemExit included, as in the stdlib
            errors[len(values)] = ExceptionWithTraceback(exc)
            values.append(None)
        now = time.perf_counter()
        if now - t_sent > STREAM_INTERVAL and i < last:
            channel.send(*_encode_outcome(batch_id, start, values, errors, now - t0, False))
            start += len(values)
            values, errors = [], {}
            t_sent = now
    return _encode_outcome(batch_id, start, values, errors, time.perf_counter() - t0, True)


def _handle_batch(channel: Any, message: bytes | bytearray | memoryview) -> int:
    _, batch_id, kind, fn_len = _BATCH_HEADER.unpack_from(message)
    start = _BATCH_HEADER.size
    view = memoryview(message)
    try:
        fn = serialization.loads(view[start : start + fn_len])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the jobs
        channel.send(MSG_SPLIT + serialization.dumps((batch_id, ExceptionWithTraceback(exc), True)))
        return 0
    lent: _Lent = []
    try:
        calls = unpack(view[start + fn_len :], lent)
    except BaseException as exc:  # noqa: BLE001 - the parent splits the batch to find the bad job
        error = ExceptionWithTraceback(exc)  # drops the traceback, and the frames holding views
        _report_pinned(channel, lent)
        channel.send(MSG_SPLIT + serialization.dumps((batch_id, error, False)))
        return 0
    del view, message
    count = len(calls)
    final = _run_batch(channel, batch_id, kind, fn, calls)
    del calls  # the arguments, and with them the views of the blocks they came in
    _report_pinned(channel, lent)
    channel.send(*final)
    return count


def _report_pinned(channel: Any, lent: _Lent) -> None:
    """Tell the parent which blocks are still in use, before it settles (and reuses) them."""
    pinned = _pinned(lent)
    if pinned:
        channel.send(MSG_PINNED + serialization.dumps(pinned))


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process: initialize, then run batches until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what it means
    # (drain, cancel), so a worker must not die of it mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = spec.worker_channel(spec.channel_end)
    parent = os.getppid()
    global _segments, _threshold
    if spec.shm_prefix is not None:
        _segments = shm.SegmentFactory(spec.shm_prefix)
        _threshold = spec.oob_threshold
    if spec.initializer is not None:
        try:
            spec.initializer(*spec.initargs)
        except BaseException as exc:
            # Logged where ProcessPoolExecutor logs it, so handlers set up for
            # the standard pools see it too.
            logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
            channel.send(MSG_INIT_FAILED + serialization.dumps(_picklable_error(exc)))
            return
    try:
        _serve(channel, parent, spec.max_tasks)
    except (EOFError, OSError):
        # The parent closed our channel or died: nobody will free this pool's
        # segments but us (the next pool's start would, eventually).
        if spec.shm_prefix is not None and not shm.owner_alive(spec.shm_prefix):
            shm.cleanup_prefix(spec.shm_prefix)


def _serve(channel: Any, parent: int, max_tasks: int | None) -> None:
    done = 0
    while True:
        message = channel.recv(PARENT_CHECK_INTERVAL)
        if message is None:
            if os.getppid() != parent:
                raise EOFError("the parent process is gone")
            continue
        tag = message[:1]
        if tag == MSG_STOP:
            return
        if tag == MSG_DROP:
            _blocks.forget(serialization.loads(message[1:]))
            continue
        done += _handle_batch(channel, message)
        del message
        if max_tasks is not None and done >= max_tasks:
            return


def _picklable_error(exc: BaseException) -> ExceptionWithTraceback:
    wrapped = ExceptionWithTraceback(exc)
    try:
        serialization.dumps(wrapped)
    except BaseException:  # noqa: BLE001
        return wrapped.as_remote_error()
    return wrapped
