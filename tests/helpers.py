"""Module-level callables for tests: worker processes import them by name."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple


def add_one(x: int) -> int:
    return x + 1


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def raise_value_error(message: str) -> None:
    raise ValueError(message)  # the line tests look for in remote tracebacks


def wait_for(event: Any, timeout: float = 30.0) -> bool:
    return bool(event.wait(timeout))


def sleep_and_return(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def mark_and_sleep(path: str, seconds: float, value: Any) -> Any:
    """Create ``path`` (the job has started, for a test waiting on it), then sleep."""
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return value


def getpid(_: Any = None) -> int:
    return os.getpid()


def exit_now(code: int = 1) -> None:
    os._exit(code)


def sys_exit() -> None:
    sys.exit(1)


def echo(value: Any) -> Any:
    return value


def init_fail(*_: Any) -> None:
    raise ValueError("error in initializer")


_STATE = {"value": "uninitialized"}


def init_set(value: str) -> None:
    _STATE["value"] = value


def get_state() -> str:
    return _STATE["value"]


def record_batch_sizes(x: int) -> int:
    return x


class ErrorAtPickle:
    """Raises when pickled."""

    def __reduce__(self) -> Any:
        from pickle import PicklingError

        raise PicklingError("Error in pickle")


def _raise_unpickling() -> Any:
    from pickle import UnpicklingError

    raise UnpicklingError("Error in unpickle")


class ErrorAtUnpickle:
    """Pickles fine, raises when unpickled."""

    def __reduce__(self) -> Any:
        return _raise_unpickling, ()


def return_error_at_pickle(_: Any = None) -> ErrorAtPickle:
    return ErrorAtPickle()


def return_error_at_unpickle(_: Any = None) -> ErrorAtUnpickle:
    return ErrorAtUnpickle()


class Unpicklable(Exception):
    """An exception whose pickling fails (it holds a lock)."""

    def __init__(self) -> None:
        import threading

        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable()


class Payload:
    """A weak-referenceable object with a method, picklable by reference."""

    def method(self) -> str:
        return "ran"


def make_payload(_: Any = None) -> Payload:
    return Payload()


PICKLE_COUNT = {"n": 0}


def _rebuild_counting() -> CountingCallable:
    return CountingCallable()


class CountingCallable:
    """A callable that counts how often the parent pickles it."""

    def __call__(self, x: int) -> int:
        return x * 2

    def __reduce__(self) -> Any:
        PICKLE_COUNT["n"] += 1
        return _rebuild_counting, ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingCallable)

    def __hash__(self) -> int:
        return 1


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def hang_forever() -> None:
    import threading

    threading.Event().wait()


def exit_if(x: int, bad: int) -> int:
    if x == bad:
        os._exit(7)
    return x


def flaky(path: str, failures: int) -> int:
    """Fail the first ``failures`` calls (counted in a file), then return the count."""
    with open(path, "a+") as f:
        f.seek(0)
        count = len(f.read())
        f.write("x")
    if count < failures:
        raise ConnectionError(f"attempt {count + 1} fails")
    return count + 1


def count_run(path: str, x: int) -> int:
    """Record one execution of ``x`` (append-only, one line per run) and return x."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def _batched(fn: Any) -> Any:
    from batchpool import batched

    return batched(fn)


@_batched
def double_all(items: list[int]) -> list[Any]:
    """Doubles each item; a negative item gets its own ValueError."""
    return [ValueError(f"negative: {x}") if x < 0 else 2 * x for x in items]


@_batched
def batch_sizes(items: list[Any]) -> list[int]:
    return [len(items)] * len(items)


@_batched
def wrong_length(items: list[Any]) -> list[Any]:
    return items[:-1]


@_batched
def raise_if_poison(items: list[int]) -> list[int]:
    if 13 in items:
        raise RuntimeError("poison in batch")
    return [x * 10 for x in items]


@_batched
def slow_items(items: list[float]) -> list[int]:
    time.sleep(sum(items))
    return [len(items)] * len(items)


class InterruptStorm:
    """SIGALRM every ``period`` seconds, raising KeyboardInterrupt in the main thread while armed.

    Armed only around the calls under test, so that the test's own lines are
    not interrupted; the first interrupt disarms it. ``interrupted`` counts them.
    """

    def __init__(self) -> None:
        self.armed = False
        self.interrupted = 0

    def arm(self) -> None:
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def _raise(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            self.interrupted += 1
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_storm(period: float = 50e-6) -> Iterator[InterruptStorm]:
    """An ``InterruptStorm`` for the ``with`` block; the timer and handler are restored after.

    Tests using it take pytest-timeout's thread method: SIGALRM is theirs.
    """
    storm = InterruptStorm()
    old = signal.signal(signal.SIGALRM, storm._raise)
    try:
        signal.setitimer(signal.ITIMER_REAL, period, period)
        yield storm
    finally:
        storm.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def wait_for_path(path: str, timeout: float = 30.0) -> bool:
    """Block (as simulated work) until ``path`` exists: a gate across processes."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


SMALL_INPUTS = list(range(2000))


def describe_array(arr: Any) -> tuple[bool, bool, float]:
    """How an array arrived: (owns its data, writeable, sum)."""
    return bool(arr.flags.owndata), bool(arr.flags.writeable), float(arr.sum())


def bump_in_place(arr: Any) -> float:
    """Add 1 to every element in place (``arr += 1``); the first element after."""
    arr += 1.0
    return float(arr[0])


def make_array(n: int) -> Any:
    import numpy as np

    return np.ones(n)


def array_mapping(arr: Any) -> str:
    """The file the array's memory is mapped from ("" for anonymous memory)."""
    address = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) > 5 else ""
    return ""


_kept: list[Any] = []


def keep_array(arr: Any) -> float:
    """Stores its argument in the worker beyond the call (as a cache would)."""
    _kept.append(arr)
    return float(arr.sum())


def kept_sums(_: Any = None) -> list[float]:
    """The sums of the arrays ``keep_array`` stored, as they read now."""
    return [float(a.sum()) for a in _kept]


def sums(*arrays: Any) -> list[float]:
    """The sum of each array argument."""
    return [float(a.sum()) for a in arrays]


# -- leak checks: the autouse ``no_leaks`` fixture (conftest.py) and its tests --

LEAK_DEADLINE = 10.0
SHM_DIR = "/dev/shm"


class LeakBaseline(NamedTuple):
    """What was there before a test, so that only what the test left counts."""

    children: frozenset[int]
    threads: frozenset[threading.Thread]
    segments: frozenset[str]


def service_pids() -> set[int]:
    """Long-lived helpers multiprocessing keeps for the whole session."""
    pids: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
        if pid:
            pids.add(pid)
        pid = getattr(resource_tracker._resource_tracker, "_pid", None)
        if pid:
            pids.add(pid)
    except ImportError:  # pragma: no cover
        pass
    return pids


def own_segments(owners: Iterable[int]) -> set[str]:
    """Names in /dev/shm of pools owned by one of the pids ``owners``.

    A pool's segments are named ``bp-<owner pid>-...`` (transport/shm_names.py),
    its workers' results included. Matched by prefix, not parsed, so that a
    malformed name of ours is a leak too; nothing under any other name, or
    of any other owner (another test run, another program), is looked at.
    """
    prefixes = tuple(f"bp-{pid}-" for pid in owners)
    try:
        return {name for name in os.listdir(SHM_DIR) if name.startswith(prefixes)}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


def leak_baseline() -> LeakBaseline:
    """Take stock before a test: this process's descendants, threads and pool segments."""
    import psutil

    children = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    return LeakBaseline(
        children=children,
        threads=frozenset(threading.enumerate()),
        segments=frozenset(own_segments({os.getpid(), *children})),
    )


def find_leaks(baseline: LeakBaseline, timeout: float = LEAK_DEADLINE) -> list[str]:
    """What a test left behind since ``baseline``: one message per kind, [] if nothing.

    Looks only at this process's own things: its threads, its descendants
    that were not there before (multiprocessing's forkserver and resource
    tracker aside), and segments of pools owned by this process or by one of
    those new descendants. Threads and children get until ``timeout`` to end.
    A descendant that is gone by now cannot be told apart from any other dead
    pid, so its segments are the test's to check (as the tests of
    tests/integration/test_shared_memory.py that run scripts do).
    """
    import multiprocessing

    import psutil

    deadline = time.monotonic() + timeout
    # Threads: a pool's threads may still be finishing their last statement.
    for thread in set(threading.enumerate()) - baseline.threads:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
        except RuntimeError:  # never started (a start() interrupted early): listed, never alive
            pass
    stray_threads = [t.name for t in set(threading.enumerate()) - baseline.threads if t.is_alive()]
    ignore = baseline.children | service_pids()
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in ignore]
    # Their pids before waiting: a child that exits now may still have left segments.
    owners = {os.getpid(), *(p.pid for p in new)}
    _, alive = psutil.wait_procs(new, timeout=max(0.1, deadline - time.monotonic()))
    # Reap our own zombies so later tests do not count them.
    for child in multiprocessing.active_children():
        child.join(0)
    stray_shm = sorted(own_segments(owners) - baseline.segments)
    leaks = []
    if stray_threads:
        leaks.append(f"threads outlived the test: {stray_threads}")
    if alive:
        leaks.append(f"child processes outlived the test: {[p.pid for p in alive]}")
    if stray_shm:
        leaks.append(f"/dev/shm segments outlived the test: {stray_shm}")
    return leaks


class ReduceRaises:
    """An argument whose pickling raises a BaseException that is not an Exception."""

    def __init__(self, exc_type: type[BaseException]) -> None:
        self.exc_type = exc_type

    def __reduce__(self) -> Any:
        raise self.exc_type("raised by __reduce__")


def wait_for_barrier(barrier: Any) -> int:
    """A thread-backend job that returns only once ``barrier``'s parties all arrived."""
    return int(barrier.wait())


@_batched
def item_lists(items: list[Any]) -> list[Any]:
    """Each item's result is the list the batch function was called with."""
    return [list(items) for _ in items]


def gate_job(started: str, release: str, seconds: float) -> str:
    """Say it started (a file), then hold its worker until ``release`` exists (or ``seconds`` pass)."""
    with open(started, "w"):
        pass
    wait_for_path(release, seconds)
    return "gate"


def slow_at(x: int, slow: int, seconds: float) -> int:
    """Return ``x``; item ``slow`` first sleeps ``seconds`` (a map item past its time limit)."""
    if x == slow:
        time.sleep(seconds)
    return x


def fail_once_at(path_prefix: str, x: int, every: int) -> int:
    """Raise ConnectionError the first time for multiples of ``every`` (a file remembers)."""
    marker = f"{path_prefix}-{x}"
    if x % every == 0 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise ConnectionError(f"item {x} failed once")
    return x


def append_and_len(items: list[Any]) -> int:
    """Change the argument in place; how long it is now."""
    items.append(1)
    return len(items)
