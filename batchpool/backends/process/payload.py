"""A batch made ready for the wire: the callable pickled once, the calls with their large buffers.

Imports ``serialization``, ``protocol``, the shared-memory arena and ``jobs``.
Jobs whose arguments cannot be pickled fail alone, at once (the ledger is
told); a batch whose large buffers exceed ``MAX_BATCH_BYTES`` is halved
before anything is copied.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ... import protocol, serialization
from ...jobs import CHUNK_KINDS, Batch, Job
from ...options import OOB_THRESHOLD
from ...transport import shm
from ..base import logger

__all__ = ["MAX_BATCH_BYTES", "encode"]

#: Out-of-band bytes one batch may carry: a batch of more (and more than one
#: job) is halved before anything is copied, so that large payloads spread
#: over the workers, copying overlaps with running, and the shared memory in
#: flight stays bounded. (8 MB arrays, 2 workers: ~9 GB/s at 8 MiB, ~6.5 at 32.)
MAX_BATCH_BYTES = 8 * 2**20


class _Failer(Protocol):
    def fail_all(self, jobs: list[Job], exc: BaseException) -> None: ...


def encode(
    batch: Batch,
    arena: shm.Arena | None,
    ledger: _Failer,
    resend: deque[Batch],
    fns: protocol.FnCacheMirror | None = None,
) -> tuple[bytes, ...] | None:
    """The message parts of ``batch``, or None when nothing is left to send.

    Jobs whose call does not pickle are failed through ``ledger`` and dropped
    from the batch. A batch over the shared-memory budget is split in two
    (pushed to the front of ``resend``) and None returned. Raises whatever
    pickling the callable raised (the caller fails the whole batch with it).

    A callable that goes by value is named by its digest; its bytes travel
    only if ``fns`` (the mirror of the worker's cache) says the worker lacks
    them.
    """
    fn_blob, by_value = serialization.pickle_callable(batch.fn)
    threshold = OOB_THRESHOLD if arena is not None else None
    calls = [(j.args, j.kwargs) for j in batch.jobs]
    calls_blob, bad, big = serialization.dumps_each(calls, threshold)
    if bad:
        for i, error in bad.items():
            ledger.fail_all([batch.jobs[i]], error)
        batch.jobs = [j for i, j in enumerate(batch.jobs) if i not in bad]
        if not batch.jobs:
            return None
    if big and len(batch.jobs) > 1 and sum(buf.nbytes for buf in big) > MAX_BATCH_BYTES:
        half = len(batch.jobs) // 2
        resend.appendleft(Batch(batch.jobs[half:], batch.reason, batch.timing_key))
        resend.appendleft(Batch(batch.jobs[:half], batch.reason, batch.timing_key))
        return None
    refs: list[tuple[int, int, int, str]] = []
    if big:
        assert arena is not None
        try:
            block, offsets = arena.put(big)
        except OSError as exc:
            # /dev/shm is full (or gone): slower, but the jobs run.
            logger.warning("no shared memory for a batch (%s); it goes through the ring", exc)
            calls_blob, _, _ = serialization.dumps_each([(j.args, j.kwargs) for j in batch.jobs], None)
        else:
            batch.blocks.append(block)
            name = "" if block.shown else block.name
            block.shown = True
            refs = [(block.id, offset, buf.nbytes, name) for buf, offset in zip(big, offsets, strict=True)]
    fn_flags, fn_digest = 0, b""
    if by_value and fns is not None:
        fn_flags, fn_digest = protocol.FN_BY_VALUE, serialization.digest(fn_blob)
        if not fns.needs_bytes(fn_digest):
            fn_blob = b""  # the worker has it
    timeout = batch.jobs[0].opts.timeout if batch.kind in CHUNK_KINDS else None
    return protocol.encode_batch(
        batch.id, batch.kind, fn_blob, serialization.oob_header(refs), calls_blob, fn_flags, fn_digest, timeout
    )
