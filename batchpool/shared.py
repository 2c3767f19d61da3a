"""Shared arrays: numpy arrays that live in a pool's shared memory and travel as handles.

``ex.empty(shape)`` / ``ex.zeros(shape)`` (process backend) return a
``SharedArray``: an ``ndarray`` subclass whose data is a named segment of the
pool's (``transport.shm``). Passing it, or any view or slice of it, to a job
sends a *handle* (segment name, offset, shape, strides, dtype), not the data:
the worker maps the same pages, so nothing is copied either way and what the
worker writes, the parent sees. A worker returning such an array (or a view)
returns a handle too. This is the explicit way to share writes, e.g. workers
filling slices of one output::

    out = ex.zeros((4, 1000))
    wait([ex.submit(fill_row, out[i], i) for i in range(4)])   # out is filled

Imports numpy and ``transport.shm`` only: a worker imports this module when
it unpickles a handle (``_rebuild`` is pickled by reference).

Which arrays are shared. A ``SharedArray`` whose bytes lie inside its
segment travels as a handle; anything else is an ordinary array:

* the result of a computation (``a + 1``, ``np.sqrt(a)``, ``a.sum()``) is a
  plain ``ndarray`` (``__array_wrap__``), except an in-place one (``a += 1``,
  ``out=a``), which is still ``a``;
* a copy (``a.copy()``, ``a.astype(...)``) keeps the class but not the
  segment (``__array_finalize__`` checks the address): it pickles by value.

Lifetime (the parent, which made the segment, is its owner):

* the segment's name stays while the array (or any view of it) lives, so
  workers started later (a resize, a crashed worker's replacement) can map
  it; when the last array goes, ``weakref.finalize`` unlinks the name (also
  at interpreter exit);
* ``shutdown()`` of the pool sweeps its prefix, names included: the array
  stays valid in this process (the mapping outlives the name), and from then
  on travels by value, like any array;
* a parent killed with SIGKILL cannot unlink anything: its workers sweep the
  pool's prefix when they notice (within a second), and the next pool's
  orphan sweep removes what is left (``shm.cleanup_orphans``).

A worker keeps the segments it mapped (``_opened``, at most ``OPENED_KEEP``,
least recently used out first) so that the same array sent again costs no
system call; whenever it maps a new one it drops those whose name is gone
(their owner let them go). A handle whose segment cannot be mapped fails the
unpickling of that job's arguments (or result), as any unpicklable value does.
"""

from __future__ import annotations

import logging
import math
import mmap
import operator
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, SupportsIndex

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - exercised by monkeypatching the import
    raise ImportError(
        "batchpool's shared arrays (ex.empty(), ex.zeros()) need numpy: pip install 'batchpool[numpy]'"
    ) from exc

from .transport import shm

__all__ = ["OPENED_KEEP", "SharedArray", "empty", "is_shared", "zeros"]

log = logging.getLogger("batchpool")

#: Segments a process that did not make them keeps mapped for reuse.
OPENED_KEEP = 32

ShapeLike = SupportsIndex | Sequence[SupportsIndex]


class _Segment:
    """One mapped segment: its name, mapping, size and address in this process."""

    __slots__ = ("__weakref__", "addr", "mem", "name", "size")

    def __init__(self, name: str, mem: mmap.mmap, size: int) -> None:
        self.name = name
        self.mem = mem
        self.size = size
        self.addr: int = np.frombuffer(mem, np.uint8, count=1).__array_interface__["data"][0]

    def holds(self, arr: np.ndarray[Any, Any]) -> bool:
        """``arr``'s first element lies in this segment's mapping."""
        start: int = arr.__array_interface__["data"][0]
        return self.addr <= start <= self.addr + self.size


# Every segment mapped in this process, made here or opened, while an array
# uses it (weak: an owner's segment goes with its last array).
_segments: weakref.WeakValueDictionary[str, _Segment] = weakref.WeakValueDictionary()
# Opened (not made) here: kept mapped for the next job, least recently used first.
_opened: OrderedDict[str, _Segment] = OrderedDict()
# Orders mapping a segment against another thread mapping the same name (the
# parent's manager thread unpickles results while user threads make arrays).
_lock = threading.Lock()


class SharedArray(np.ndarray[Any, Any]):
    """A numpy array in a pool's shared memory; jobs receive it without a copy (see the module docstring).

    Made by ``BatchPoolExecutor.empty`` / ``zeros``, never directly. Views
    and slices are ``SharedArray`` too and also travel as handles; results of
    computations are plain ``ndarray``.

    Example:
        >>> from batchpool import BatchPoolExecutor
        >>> with BatchPoolExecutor(max_workers=1) as ex:
        ...     a = ex.zeros(4)
        ...     type(a).__name__, type(a + 1).__name__, is_shared(a[1:])
        ('SharedArray', 'ndarray', True)
    """

    _bp_segment: _Segment | None = None

    def __array_finalize__(self, obj: Any) -> None:
        segment = getattr(obj, "_bp_segment", None)
        # A view keeps the segment; a copy (new memory) does not.
        self._bp_segment = segment if segment is not None and segment.holds(self) else None

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if array is self or (isinstance(array, SharedArray) and array._bp_segment is not None):
            return array  # an in-place operation (out=...): still the shared array
        plain = array.view(np.ndarray) if isinstance(array, np.ndarray) else array
        return plain[()] if return_scalar else plain

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        handle = _handle(self)
        if handle is None:
            return self.view(np.ndarray).__reduce_ex__(protocol)
        return _rebuild, handle


def _handle(arr: SharedArray) -> tuple[Any, ...] | None:
    """What a worker needs to map ``arr`` (None: send it by value)."""
    segment = arr._bp_segment
    if segment is None or arr.size == 0:
        return None
    start: int = arr.__array_interface__["data"][0]
    # The lowest and highest byte the strides reach (negative strides count).
    low = high = start
    for extent, stride in zip(arr.shape, arr.strides, strict=True):
        if stride < 0:
            low += (extent - 1) * stride
        else:
            high += (extent - 1) * stride
    high += arr.itemsize
    if low < segment.addr or high > segment.addr + segment.size:
        return None
    if not os.path.exists(os.path.join(shm.SHM_DIR, segment.name)):
        return None  # its pool shut down (or its owner let it go): an ordinary array now
    return (segment.name, segment.size, start - segment.addr, arr.shape, arr.strides, arr.dtype, arr.flags.writeable)


def _rebuild(
    name: str,
    size: int,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: np.dtype[Any],
    writeable: bool,
) -> SharedArray:
    """Unpickle a handle: the same memory, mapped here (or already)."""
    segment = _mapped(name, size)
    arr: SharedArray = np.ndarray.__new__(SharedArray, shape, dtype, buffer=segment.mem, offset=offset, strides=strides)
    arr._bp_segment = segment
    if not writeable:
        arr.flags.writeable = False
    return arr


def _mapped(name: str, size: int) -> _Segment:
    with _lock:
        segment = _segments.get(name)
        if segment is None:
            for gone in [n for n in _opened if not os.path.exists(os.path.join(shm.SHM_DIR, n))]:
                del _opened[gone]  # unmapped once no array here uses it
            segment = _Segment(name, shm.map_shared(name, size), size)
            _segments[name] = segment
        parsed = shm.parse_name(name)
        if parsed is None or parsed.owner != os.getpid():  # not ours to keep alive by arrays alone
            _opened[name] = segment
            _opened.move_to_end(name)
            while len(_opened) > OPENED_KEEP:
                _opened.popitem(last=False)
        return segment


def _release(name: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked child that inherited the record
        shm.unlink(name)


def _shape(shape: ShapeLike) -> tuple[int, ...]:
    try:
        if isinstance(shape, Sequence):
            dims = tuple(operator.index(d) for d in shape)
        else:
            dims = (operator.index(shape),)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    return dims


def _new(prefix: str | None, shape: ShapeLike, dtype: Any, order: str, zero: bool) -> np.ndarray[Any, Any]:
    dims = _shape(shape)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    try:
        kind = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: {exc}") from None
    if kind.hasobject:
        raise TypeError(f"dtype must not hold Python objects (they cannot be shared), got {kind}")
    if prefix is None:
        return np.zeros(dims, kind, order) if zero else np.empty(dims, kind, order)  # type: ignore[call-overload,no-any-return]
    size = math.prod(dims) * kind.itemsize
    name, mem = shm.create_shared(prefix, size)  # zero-filled: empty and zeros are the same here
    segment = _Segment(name, mem, max(size, 1))
    weakref.finalize(segment, _release, name, os.getpid())
    with _lock:
        _segments[name] = segment
    arr: SharedArray = np.ndarray.__new__(SharedArray, dims, kind, buffer=mem, order="F" if order == "F" else "C")
    arr._bp_segment = segment
    return arr


def _prefix(backend: Any) -> str | None:
    refusal = backend.state.refusal()  # what submit would raise: no arrays for a pool shut down
    if refusal is not None:
        raise refusal
    prefix: str | None = getattr(backend, "shared_prefix", None)
    return prefix


def empty(backend: Any, shape: ShapeLike, dtype: Any = float, order: str = "C") -> np.ndarray[Any, Any]:
    """An uninitialised array in ``backend``'s shared memory (a plain array if it has none).

    Raises:
        TypeError: ``shape`` is not an int or ints, or ``dtype`` is not a
            dtype or holds Python objects.
        ValueError: a negative dimension, or ``order`` not 'C' or 'F'.
        OSError: no shared memory could be made (``/dev/shm`` full).
        RuntimeError: the pool is shut down (what ``submit`` raises then).
    """
    return _new(_prefix(backend), shape, dtype, order, zero=False)


def zeros(backend: Any, shape: ShapeLike, dtype: Any = float, order: str = "C") -> np.ndarray[Any, Any]:
    """A zero-filled array in ``backend``'s shared memory (a plain array if it has none); see ``empty``."""
    return _new(_prefix(backend), shape, dtype, order, zero=True)


def is_shared(arr: object) -> bool:
    """True if ``arr`` travels to workers as a handle to shared memory (not by value).

    Example:
        >>> import numpy as np
        >>> is_shared(np.zeros(3))
        False
    """
    return isinstance(arr, SharedArray) and arr._bp_segment is not None
