"""Pickling for everything that crosses a process boundary.

The only module of batchpool that imports ``pickle`` or ``cloudpickle``; it
imports nothing from batchpool. Rules:

* Protocol 5 everywhere.
* Plain ``pickle`` first (fast, by reference). What it refuses (lambdas,
  closures, local classes) falls back to ``cloudpickle``, which pickles by value.
* Callables defined in ``__main__`` always go by value: a worker started with
  ``spawn`` or ``forkserver`` may not be able to import the parent's
  ``__main__`` (an interactive session, ``python -c``), and one batch carries
  its callable once, so the extra cost is paid once per batch, not per job.
* A batch of calls is pickled in one go; only when that fails is each call
  pickled on its own, so that the one job that cannot be pickled fails alone.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

__all__ = ["PROTOCOL", "dumps", "dumps_callable", "dumps_each", "loads"]

PROTOCOL = 5


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


def dumps_each(items: Sequence[object]) -> tuple[bytes, dict[int, BaseException]]:
    """Pickle a list, leaving out the items that cannot be pickled.

    Returns the pickled list of the good items (in order) and, for each bad
    item, its index in ``items`` and the exception pickling raised.

    Example:
        >>> import threading
        >>> data, bad = dumps_each([1, threading.Lock(), 3])
        >>> loads(data), sorted(bad)
        ([1, 3], [1])
    """
    try:
        return dumps(list(items)), {}
    except Exception:  # noqa: BLE001 - find the culprits one by one below
        pass
    good: list[object] = []
    bad: dict[int, BaseException] = {}
    for i, item in enumerate(items):
        try:
            dumps(item)
        except Exception as exc:  # noqa: BLE001 - reported on that job's Future
            bad[i] = exc
        else:
            good.append(item)
    return dumps(good), bad


def loads(data: bytes | memoryview) -> Any:
    """Unpickle what ``dumps`` made (cloudpickle output loads with pickle)."""
    return pickle.loads(data)
