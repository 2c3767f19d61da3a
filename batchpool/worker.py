"""The worker process: read batches, run them with the runner, send outcomes back.

Imports ``batchpool.protocol``, ``batchpool.runner``, ``batchpool.serialization``
and the transport only; never the executor, the backends, metrics or rich
(spawned workers import this module, and it must stay light). The messages
are described in ``batchpool.protocol``.

A batch is started only once the worker holds its claim token (see
``transport.control``): a batch the parent took back is skipped unread, and
after a crash the parent knows which batches never started. While a batch
runs, finished outcomes stream back every ``STREAM_INTERVAL``, and between
jobs of a batch that has run a while the worker checks whether the parent
wants the unstarted rest back for an idle worker.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol, serialization
from .errors import JobTimeoutError
from .jobs import BATCHED_KINDS, CHUNK_KINDS, CHUNKS, ChunkResult, ExceptionWithTraceback
from .protocol import FINAL, YIELDED
from .runner import run_batch, run_one
from .transport import shm
from .transport.control import Control

__all__ = ["WorkerSpec", "unpack", "worker_main"]

#: A batch that runs longer than this sends what it has finished so far, so
#: one slow job does not hold its batch-mates' results hostage (and a crash
#: later in the batch loses nothing that already finished).
STREAM_INTERVAL = 0.05
#: A batch that has run this long looks, between jobs, whether the parent
#: wants its unstarted rest for an idle worker (a syscall, so not sooner).
YIELD_CHECK_AFTER = 0.002

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
    control: Control | None = None


# The worker's own segment factory (results) and its mappings of the
# parent's arena blocks (tasks); set by worker_main.
_segments: shm.SegmentFactory | None = None
_threshold: int | None = None
_blocks = shm.BlockCache()
# Callables sent by value, by digest: each crosses to this worker once.
_fns = protocol.FnCache()


def _store(big: list[memoryview]) -> list[tuple[int, int, int, str]]:
    """Put a result's large buffers into one-shot segments; their references."""
    assert _segments is not None
    names: list[str] = []
    try:
        for buf in big:
            names.append(_segments.put(buf))
    except OSError:
        for name in names:  # nobody will ever hear of these
            shm.unlink(name)
        raise  # the protocol then sends the results in band
    return [(0, 0, buf.nbytes, name) for buf, name in zip(big, names, strict=True)]


_Lent = list[tuple[int, memoryview, Any, int, int]]  # block id, view, wrapper, offset, size


def unpack(view: memoryview, lent: _Lent | None = None) -> Any:
    """Unpickle a batch's framed calls (a ``dumps_each`` stream), mapping their out-of-band buffers.

    One-shot segments are unlinked once mapped. Arena blocks are lent, and
    recorded in ``lent`` for ``_pinned`` to check after the call.
    """
    data, segments = serialization.unframe_oob(view)
    return serialization.loads_each(data, open_buffers(segments, lent))


def open_buffers(segments: list[tuple[int, int, int, str]], lent: _Lent | None = None) -> list[Any]:
    """Map the out-of-band buffers a message refers to (either direction)."""
    buffers: list[Any] = []
    for block_id, offset, size, name in segments:
        if block_id:
            block_view = _blocks.private_view(block_id, name, offset, size)
            # Handed over wrapped: every view made of a PickleBuffer is an
            # export of ``block_view`` itself (a view made of a memoryview
            # is not), so ``block_view.release()`` later tells whether any
            # object made from it is still alive.
            lent_buffer = serialization.lend(block_view)
            if lent is not None:
                lent.append((block_id, block_view, lent_buffer, offset, size))
            buffers.append(lent_buffer)
        else:
            buffers.append(shm.open_segment(name, size))
    return buffers


def _pinned(lent: _Lent) -> list[int]:
    """Blocks an object still holds a view of (the job stored its argument)."""
    pinned: list[int] = []
    for block_id, view, wrapper, _, _ in lent:
        wrapper.release()
        try:
            view.release()
        except BufferError:
            if block_id not in pinned:
                pinned.append(block_id)
    for block_id, _, _, offset, size in lent:
        if block_id not in pinned:
            _blocks.restore(block_id, offset, size)  # what a job wrote goes; the block is reused
    _blocks.forget(pinned)  # the live views keep their mappings; never reused
    return pinned


def _outcome(batch_id: int, start: int, outcomes: list[Any], run_time: float, flags: int) -> tuple[bytes, ...]:
    store = _store if _segments is not None else None
    return protocol.encode_outcome(batch_id, start, outcomes, run_time, flags, store, _threshold)


class _ItemClock:
    """The time limit of the map item running now, enforced with SIGALRM.

    One timer per chunk, not per item (two syscalls an item would cost more
    than the items): when it fires, the handler compares the running item's
    age with the limit, and either raises ``JobTimeoutError`` inside it or
    sets the timer again for the rest of that item's time.
    """

    limit = 0.0
    started = 0.0
    running = False


def _on_alarm(signum: int, frame: object) -> None:
    if not _ItemClock.running:
        return
    left = _ItemClock.started + _ItemClock.limit - time.monotonic()
    if left <= 0:
        _ItemClock.running = False
        raise JobTimeoutError(_ItemClock.limit)
    signal.setitimer(signal.ITIMER_REAL, left)


def _run_chunk_timed(fn: Callable[..., Any], items: list[Any], star: bool, limit: float) -> Any:
    """``runner.run_chunk`` with a time limit on each item (worker main thread only)."""
    values: list[Any] = []
    errors: dict[int, Any] = {}
    _ItemClock.limit = limit
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        for i, item in enumerate(items):
            try:
                _ItemClock.started = time.monotonic()
                _ItemClock.running = True
                values.append(fn(*item) if star else fn(item))
                _ItemClock.running = False
            except BaseException as exc:  # noqa: BLE001 - reported on that item, a timeout included
                _ItemClock.running = False
                values.append(None)
                errors[i] = ExceptionWithTraceback(exc)
    finally:
        _ItemClock.running = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    return ChunkResult(values, errors)


def _run(
    channel: Any,
    control: Control | None,
    batch_id: int,
    kind: int,
    fn: Callable[..., Any],
    calls: list[Any],
    item_timeout: float | None = None,
) -> tuple[tuple[bytes, ...], int]:
    """Run a batch, streaming partial outcomes; the final outcome (unsent) and jobs run."""
    t0 = time.perf_counter()
    if item_timeout is not None and kind in CHUNK_KINDS:
        outcomes = [(True, _run_chunk_timed(fn, args[0], kind == CHUNKS, item_timeout)) for args, _ in calls]
        return _outcome(batch_id, 0, outcomes, time.perf_counter() - t0, FINAL), len(calls)
    if kind in BATCHED_KINDS:
        outcomes = run_batch(fn, kind, calls, ExceptionWithTraceback)
        return _outcome(batch_id, 0, outcomes, time.perf_counter() - t0, FINAL), len(calls)
    if control is not None:
        control.yield_requested()  # a request left from an earlier batch is not for this one
    outcomes = []
    start = 0
    last = len(calls) - 1
    t_sent = t_checked = t0
    for i, (args, kwargs) in enumerate(calls):
        outcomes.append(run_one(fn, kind, args, kwargs, ExceptionWithTraceback))
        if i == last:
            break
        now = time.perf_counter()
        if control is not None and now - t_checked > YIELD_CHECK_AFTER:
            t_checked = now
            if control.yield_requested():
                # The parent has an idle worker for the rest: stop here; jobs
                # after these never started and go back to its lanes.
                return _outcome(batch_id, start, outcomes, now - t0, FINAL | YIELDED), i + 1
        if now - t_sent > STREAM_INTERVAL:
            channel.send(*_outcome(batch_id, start, outcomes, now - t0, 0))
            start += len(outcomes)
            outcomes = []
            t_sent = now
    return _outcome(batch_id, start, outcomes, time.perf_counter() - t0, FINAL), len(calls)


def _handle_batch(channel: Any, control: Control | None, message: bytes | bytearray | memoryview) -> int:
    batch_id, kind, fn_len, start, fn_flags, fn_digest = protocol.decode_batch_header(message)
    item_timeout = protocol.batch_item_timeout(message)
    view = memoryview(message)
    by_value = bool(fn_flags & protocol.FN_BY_VALUE)
    if by_value:
        # Before the claim: the parent's mirror counted this message whether
        # or not the batch runs here.
        _fns.receive(fn_digest, view[start : start + fn_len])
    if control is not None and not control.claim():
        channel.send(protocol.encode_skipped(batch_id))  # the parent took it back
        return 0
    try:
        fn = _fns.get(fn_digest) if by_value else serialization.loads(view[start : start + fn_len])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the jobs
        # By reference and not found here (defined under the main guard, or
        # in a module this process cannot import): the parent sends it again
        # by value. Anything else fails the batch's jobs.
        missing = not by_value and isinstance(exc, (AttributeError, ImportError))
        what = protocol.SPLIT_FN_NOT_FOUND if missing else protocol.SPLIT_FN
        channel.send(protocol.MSG_SPLIT + serialization.dumps((batch_id, protocol.picklable_error(exc), what)))
        return 0
    lent: _Lent = []
    try:
        calls = unpack(view[start + fn_len :], lent)
    except BaseException as exc:  # noqa: BLE001 - the parent splits the batch to find the bad job
        error = protocol.picklable_error(exc)  # drops the traceback, and the frames holding views
        _report_pinned(channel, lent)
        channel.send(protocol.MSG_SPLIT + serialization.dumps((batch_id, error, protocol.SPLIT_CALLS)))
        return 0
    del view, message
    final, count = _run(channel, control, batch_id, kind, fn, calls, item_timeout)
    del calls  # the arguments, and with them the views of the blocks they came in
    _report_pinned(channel, lent)
    channel.send(*final)
    return count


def _report_pinned(channel: Any, lent: _Lent) -> None:
    """Tell the parent which blocks are still in use, before it settles (and reuses) them."""
    pinned = _pinned(lent)
    if pinned:
        channel.send(protocol.MSG_PINNED + serialization.dumps(pinned))


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process: initialize, then run batches until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides what it means
    # (drain, cancel), so a worker must not die of it mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = spec.worker_channel(spec.channel_end)
    # Started: the main module imported (a worker that dies before this
    # failed in multiprocessing's bootstrap, e.g. a main script without a guard).
    channel.send(protocol.MSG_READY)
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
            channel.send(protocol.MSG_INIT_FAILED + serialization.dumps(protocol.picklable_error(exc)))
            return
    try:
        _serve(channel, spec.control, parent, spec.max_tasks)
    except (EOFError, OSError):
        # The parent closed our channel or died: nobody will free this pool's
        # segments but us (the next pool's start would, eventually).
        if spec.shm_prefix is not None and not shm.owner_alive(spec.shm_prefix):
            shm.cleanup_prefix(spec.shm_prefix)


def _serve(channel: Any, control: Control | None, parent: int, max_tasks: int | None) -> None:
    done = 0
    while True:
        message = channel.recv(PARENT_CHECK_INTERVAL)
        if message is None:
            if os.getppid() != parent:
                raise EOFError("the parent process is gone")
            continue
        tag = message[:1]
        if tag == protocol.MSG_STOP:
            return
        if tag == protocol.MSG_DROP:
            _blocks.forget(serialization.loads(message[1:]))
            continue
        done += _handle_batch(channel, control, message)
        del message
        if max_tasks is not None and done >= max_tasks:
            return
