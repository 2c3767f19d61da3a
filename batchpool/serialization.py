"""Pickling for everything that crosses a process boundary.

The only module of batchpool that imports ``pickle`` or ``cloudpickle``; it
imports nothing from batchpool. Rules:

* Protocol 5 everywhere.
* Plain ``pickle`` first (fast, by reference). What it refuses (lambdas,
  closures, local classes) falls back to ``cloudpickle``, which pickles by value.
* Callables defined in ``__main__`` go to workers by reference whenever the
  worker can import the main module (``pickle_callable``), as with
  ProcessPoolExecutor: under ``spawn`` and ``forkserver``, multiprocessing
  imports the parent's main script again in each worker as ``__mp_main__``.
  So the script's module-level locks, connections and large tables are the
  worker's own, and cost nothing per call. By value (cloudpickle) only when
  it cannot: lambdas, closures, nested functions, ``python -c``, the REPL, a
  script on stdin; and a callable the worker could not find by reference (one
  defined under ``if __name__ == "__main__":``) after ``send_by_value``.
  The journal stores callables for a later program: ``dumps_callable`` keeps
  every ``__main__`` callable by value.
* A batch's calls are pickled into one stream, each with a memo of its own
  (as if pickled alone, like the standard pools do): jobs never share an
  argument object in the worker. A call that cannot be pickled fails alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

__all__ = [
    "PROTOCOL",
    "dumps",
    "dumps_callable",
    "dumps_each",
    "loads_each",
    "dumps_oob",
    "digest",
    "main_importable",
    "pickle_callable",
    "send_by_value",
    "lend",
    "loads",
    "oob_header",
    "unframe_oob",
]

PROTOCOL = 5
_COUNT = struct.Struct("<I")
_SEGMENT = struct.Struct("<IQQH")  # block id (0: a one-shot segment), offset, size, length of the name


def dumps(obj: object) -> bytes:
    """Pickle ``obj``, falling back to cloudpickle for what pickle refuses.

    Raises:
        Exception: whatever the last pickler raised when neither can do it.

    Example:
        >>> loads(dumps(lambda x: x + 1))(1)
        2
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure gets a second chance
        data: bytes = cloudpickle.dumps(obj, PROTOCOL)
        return data


def dumps_callable(fn: Callable[..., Any]) -> bytes:
    """Pickle a callable, by value when it lives in ``__main__``.

    Example:
        >>> import operator
        >>> loads(dumps_callable(operator.add))(2, 3)
        5
    """
    if getattr(fn, "__module__", None) == "__main__":
        data: bytes = cloudpickle.dumps(fn, PROTOCOL)
        return data
    return dumps(fn)


def main_importable() -> bool:
    """Whether worker processes can import the parent's ``__main__`` (as multiprocessing does).

    The rule of ``multiprocessing.spawn.get_preparation_data``: a main module
    run with ``-m`` is imported by name, a script by its path; ``python -c``,
    the REPL and a script on stdin have neither (or a path that is no file).

    Example:
        >>> isinstance(main_importable(), bool)
        True
    """
    main = sys.modules.get("__main__")
    if main is None:
        return False
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return False
    global _main_file
    seen = _main_file
    if seen is None or seen[0] != path:
        # Asked for every batch of a __main__ function: the file system is
        # asked once per path (a stat call each time was a syscall per batch).
        seen = _main_file = (path, os.path.isfile(path))
    return seen[1]


_main_file: tuple[str, bool] | None = None  # the last __main__ path checked, and whether it is a file


def _main_reference(fn: Callable[..., Any]) -> bool:
    """``fn`` is a module-level name of an importable ``__main__`` (pickle finds it there)."""
    main = sys.modules.get("__main__")
    target: Any = main
    for part in getattr(fn, "__qualname__", "<>").split("."):
        target = getattr(target, part, None)
    return target is fn and main_importable()


def _root(fn: Any) -> Any:
    """The function under partials and bound methods: what a worker must find by reference."""
    for _ in range(32):
        inner = getattr(fn, "func", None) or getattr(fn, "__func__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    return fn


class _ByValue:
    """Callables a worker could not find by reference: they go by value from then on.

    Keyed by identity, weakly where the callable allows it, and bounded, so
    that remembering never keeps a callable (or what it captured) alive for
    long. Thread-safe: pools of several threads' executors share it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()  # the dict is read and written by every pool's manager
        self._refs: OrderedDict[int, Callable[[], object]] = OrderedDict()

    def add(self, fn: object) -> None:
        key = id(fn)
        try:
            ref: Callable[[], object] = weakref.ref(fn)
        except TypeError:
            ref = lambda: fn  # noqa: E731 - a strong reference, bounded by the dict's size
        with self._lock:
            self._refs[key] = ref
            self._refs.move_to_end(key)
            while len(self._refs) > self._size:
                self._refs.popitem(last=False)

    def __contains__(self, fn: object) -> bool:
        with self._lock:
            ref = self._refs.get(id(fn))
        return ref is not None and ref() is fn


_by_value = _ByValue(1024)


def send_by_value(fn: Callable[..., Any]) -> None:
    """From now on, pickle ``fn`` (and partials and methods of it) by value for workers.

    Example:
        >>> import textwrap  # (a registry for the process's life: pick one no test relies on)
        >>> send_by_value(textwrap.shorten)
        >>> pickle_callable(textwrap.shorten)[1]
        True
    """
    _by_value.add(_root(fn))


def pickle_callable(fn: Callable[..., Any]) -> tuple[bytes, bool]:
    """Pickle a callable for a worker process: the pickle, and whether it went by value.

    By reference when the worker can find it (see the module docstring),
    by value (cloudpickle) otherwise.

    Example:
        >>> import operator
        >>> data, by_value = pickle_callable(operator.mul)
        >>> loads(data)(2, 3), by_value
        (6, False)
        >>> pickle_callable(lambda x: x)[1]
        True
    """
    root = _root(fn)
    if root in _by_value or (getattr(root, "__module__", None) == "__main__" and not _main_reference(root)):
        data: bytes = cloudpickle.dumps(fn, PROTOCOL)
        return data, True
    try:
        return pickle.dumps(fn, PROTOCOL), False
    except Exception:  # noqa: BLE001 - what pickle refuses goes by value
        data = cloudpickle.dumps(fn, PROTOCOL)
        return data, True


def digest(data: bytes) -> bytes:
    """A 16-byte digest of a pickle: the name a worker caches a callable sent by value under.

    Example:
        >>> len(digest(b"abc")), digest(b"abc") == digest(b"abc")
        (16, True)
    """
    return hashlib.blake2b(data, digest_size=16).digest()


def dumps_oob(obj: object, threshold: int | None) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``, keeping buffers of ``threshold`` bytes or more out of band.

    Returns the pickle and the large buffers (contiguous views of the
    objects' own memory, not copies), for the caller to ship separately and
    pass back to ``loads(data, buffers)``. With ``threshold`` None, all in band.

    Example:
        >>> data, big = dumps_oob(pickle.PickleBuffer(bytearray(100)), threshold=50)
        >>> len(big), bytes(loads(data, big)) == bytes(100)
        (1, True)
    """
    if threshold is None:
        return dumps(obj), []
    big: list[memoryview] = []
    keep = _keeper(big, threshold)
    try:
        return pickle.dumps(obj, PROTOCOL, buffer_callback=keep), big
    except Exception:  # noqa: BLE001 - any pickling failure gets a second chance
        big.clear()
        data: bytes = cloudpickle.dumps(obj, PROTOCOL, buffer_callback=keep)
        return data, big


def oob_header(segments: Sequence[tuple[int, int, int, str]]) -> bytes:
    """What goes before a pickle: references to its out-of-band buffers.

    Each reference is (block id, offset, size, name): the block id is 0 for a
    one-shot segment, and the name may be empty for a block the receiver has
    mapped before. Header and pickle are sent as two parts of one message.

    Example:
        >>> framed = oob_header([(0, 0, 10, "seg"), (3, 64, 5, "")]) + b"pickle"
        >>> data, refs = unframe_oob(memoryview(framed))
        >>> bytes(data), refs
        (b'pickle', [(0, 0, 10, 'seg'), (3, 64, 5, '')])
    """
    parts = [_COUNT.pack(len(segments))]
    for block_id, offset, size, name in segments:
        encoded = name.encode()
        parts.append(_SEGMENT.pack(block_id, offset, size, len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


def unframe_oob(view: memoryview) -> tuple[memoryview, list[tuple[int, int, int, str]]]:
    """Split ``oob_header(...) + pickle`` into the pickle and the buffer references."""
    (count,) = _COUNT.unpack_from(view)
    offset = _COUNT.size
    segments = []
    for _ in range(count):
        block_id, at, size, length = _SEGMENT.unpack_from(view, offset)
        offset += _SEGMENT.size
        segments.append((block_id, at, size, bytes(view[offset : offset + length]).decode()))
        offset += length
    return view[offset:], segments


def _keeper(big: list[memoryview], threshold: int | None) -> Callable[[pickle.PickleBuffer], bool] | None:
    """A ``buffer_callback`` that keeps buffers of ``threshold`` bytes and more out of band."""
    if threshold is None:
        return None
    limit = threshold

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: let it travel in band
            return True
        if raw.nbytes < limit:
            return True
        big.append(raw)
        return False  # out of band

    return keep


def dumps_each(
    items: Sequence[object], threshold: int | None = None
) -> tuple[bytes, dict[int, BaseException], list[memoryview]]:
    """Pickle each item on its own, into one stream, leaving out those that cannot be pickled.

    Each item is a complete pickle with a memo of its own, as when each call
    is pickled alone (as the standard pools do): an object that two items
    share arrives as two objects, so one job changing its argument in place
    never changes another job's. ``loads_each`` reads them back.

    Returns the stream of the good items (in order); for each bad item, its
    index in ``items`` and the exception pickling raised; and the
    out-of-band buffers (see ``dumps_oob``), in the stream's order.

    Example:
        >>> import threading
        >>> shared = [0]
        >>> data, bad, _ = dumps_each([shared, threading.Lock(), shared])
        >>> a, b = loads_each(data)
        >>> a == b == [0], a is b, sorted(bad)
        (True, False, [1])
    """
    stream = io.BytesIO()
    big: list[memoryview] = []
    keep = _keeper(big, threshold)
    bad: dict[int, BaseException] = {}
    pickler = pickle.Pickler(stream, PROTOCOL, buffer_callback=keep)
    for i, item in enumerate(items):
        start, buffers = stream.tell(), len(big)
        try:
            pickler.dump(item)
            pickler.clear_memo()
            continue
        except BaseException:  # noqa: BLE001 - SystemExit from a __reduce__ too: fall back below
            stream.seek(start)
            stream.truncate()
            del big[buffers:]
            pickler = pickle.Pickler(stream, PROTOCOL, buffer_callback=keep)  # its state is unknown now
        try:
            stream.write(cloudpickle.dumps(item, PROTOCOL, buffer_callback=keep))
        except Exception as exc:  # noqa: BLE001 - reported on that job's Future
            bad[i] = exc
        except BaseException as exc:  # noqa: BLE001 - never let a __reduce__ stop the pool
            # Not raised as itself from the job's Future: a SystemExit there
            # would end the program that merely asked for a result.
            error = TypeError(f"the call could not be pickled: {exc!r}")
            error.__cause__ = exc
            bad[i] = error
        if i in bad:
            stream.seek(start)
            stream.truncate()
            del big[buffers:]
    return stream.getvalue(), bad, big


class _Reader:
    """A file over a memoryview, for ``pickle.Unpickler`` (``io.BytesIO`` would copy it)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self.pos + n)
        data = bytes(self._view[self.pos : end])
        self.pos = end
        return data

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = min(len(target), len(self._view) - self.pos)
        target[:n] = self._view[self.pos : self.pos + n]
        self.pos += n
        return n

    def readline(self) -> bytes:
        rest = self._view[self.pos :]
        end = bytes(rest).find(b"\n")  # only protocol 0 and 1 read lines; never used here
        return self.read(len(rest) if end < 0 else end + 1)


def loads_each(data: bytes | memoryview, buffers: Sequence[Any] = ()) -> list[Any]:
    """Unpickle every item of a ``dumps_each`` stream, in order."""
    view = memoryview(data).cast("B")
    reader = _Reader(view)
    unpickler = pickle.Unpickler(reader, buffers=buffers)
    items = []
    while reader.pos < len(view):
        items.append(unpickler.load())
    return items


def lend(view: memoryview) -> pickle.PickleBuffer:
    """Wrap an out-of-band buffer for ``loads`` so that its use can be checked afterwards.

    Every view an unpickled object makes of the wrapper is an export of
    ``view`` itself, so once the wrapper is released, ``view.release()``
    raises ``BufferError`` exactly while some object still uses the memory.

    Example:
        >>> view = memoryview(bytearray(8))
        >>> wrapper = lend(view)
        >>> kept = memoryview(wrapper)
        >>> wrapper.release()
        >>> try:
        ...     view.release()
        ... except BufferError:
        ...     print("still in use")
        still in use
    """
    return pickle.PickleBuffer(view)


def loads(data: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle what ``dumps`` or ``dumps_oob`` made (cloudpickle output loads with pickle)."""
    return pickle.loads(data, buffers=buffers)
