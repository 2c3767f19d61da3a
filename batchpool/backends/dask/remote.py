"""What runs on a Dask worker: one batch, through the same runner as every other backend.

Imports ``batchpool.protocol``, ``batchpool.runner``, ``batchpool.serialization``
and ``batchpool.jobs`` only (never ``distributed``, the executor or the
backend), so a Dask worker loads little to run a batch. The parent ships each
batch as one task, ``run_remote(version, batch id, kind, callable, calls, data)``:

* ``version`` is the parent's ``protocol.PROTOCOL_VERSION``; a worker running
  another batchpool refuses the batch with ``ProtocolMismatchError`` (the
  batch's jobs fail with it) rather than misreading it.
* the callable and the calls arrive pickled by batchpool (``serialization``):
  callables of ``__main__`` by value, and a call that cannot be pickled was
  already failed alone in the parent.
* ``data`` holds the large arguments the parent scattered once (Dask resolves
  them to the objects themselves); a call refers to them by ``Scattered(i)``.

The task returns ``(OUTCOMES, message)``, the protocol's ``R`` message (one
outcome pickled per job, so one result the parent cannot read fails only its
own job), or ``(UNDECODABLE, error, callable_failed)`` when the batch did not
unpickle here (the parent then fails the callable's jobs, or sends each call
alone to find the bad one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ... import protocol, serialization
from ...errors import ProtocolMismatchError
from ...jobs import ExceptionWithTraceback
from ...runner import run_batch

__all__ = ["OUTCOMES", "UNDECODABLE", "ProtocolMismatchError", "Scattered", "run_remote"]

OUTCOMES = 0
UNDECODABLE = 1


class Scattered:
    """Stands for the ``index``-th scattered argument of a batch (replaced before the call).

    Example:
        >>> resolve(((Scattered(0), 2), None), ["big"])
        (('big', 2), None)
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return Scattered, (self.index,)


def resolve(call: tuple[tuple[Any, ...], Any], data: Sequence[Any]) -> tuple[tuple[Any, ...], Any]:
    """Put the scattered objects back in place of their ``Scattered`` markers (top-level arguments)."""
    args, kwargs = call
    if any(type(a) is Scattered for a in args):
        args = tuple(data[a.index] if type(a) is Scattered else a for a in args)
    if kwargs and any(type(v) is Scattered for v in kwargs.values()):
        kwargs = {k: data[v.index] if type(v) is Scattered else v for k, v in kwargs.items()}
    return args, kwargs


def run_remote(
    version: int, batch_id: int, kind: int, fn_blob: bytes, calls_blob: bytes, data: Sequence[Any] = ()
) -> tuple[Any, ...]:
    """Run one batch on this (Dask) worker; see the module docstring for what it returns.

    Raises:
        ProtocolMismatchError: the parent speaks another protocol version.

    Example:
        >>> fn = serialization.dumps_callable(abs)
        >>> calls, _, _ = serialization.dumps_each([((-1,), None), ((2,), None)])
        >>> tag, message = run_remote(protocol.PROTOCOL_VERSION, 7, 0, fn, calls)
        >>> protocol.decode_outcome(message)[1]
        [(True, 1), (True, 2)]
    """
    if version != protocol.PROTOCOL_VERSION:
        raise ProtocolMismatchError(protocol.PROTOCOL_VERSION, version)
    try:
        fn = serialization.loads(fn_blob)
    except BaseException as exc:  # noqa: BLE001 - the parent fails the batch's jobs with it
        return UNDECODABLE, protocol.picklable_error(exc), True
    try:
        calls = serialization.loads_each(calls_blob)
    except BaseException as exc:  # noqa: BLE001 - the parent sends each call alone to find the bad one
        return UNDECODABLE, protocol.picklable_error(exc), False
    if data:
        calls = [resolve(call, data) for call in calls]
    t0 = time.perf_counter()
    outcomes = run_batch(fn, kind, calls, ExceptionWithTraceback)
    run_time = time.perf_counter() - t0
    del calls, data
    return OUTCOMES, b"".join(protocol.encode_outcome(batch_id, 0, outcomes, run_time, protocol.FINAL))
