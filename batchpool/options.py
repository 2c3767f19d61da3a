"""Priorities, the pool's configuration record, and argument validation.

Imports nothing from batchpool. Every constructor argument is checked here, at
the call, and a bad value raises ``TypeError``/``ValueError`` naming the
argument, so the executor and the backends can trust their configuration.
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import multiprocessing.context
import os
import sys
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .retry import RetryPolicy

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "JobOptions",
    "PoolConfig",
    "Priority",
    "check_int",
    "check_seconds",
    "check_timeout",
    "make_config",
]

#: Largest batch a lane cuts unless told otherwise. Measured with
#: ``batchpool bench --workload submit``: throughput of tiny jobs stops growing
#: well below this, and bigger batches only delay the first results.
DEFAULT_MAX_BATCH_SIZE = 512

#: How long one batch of plain jobs should run in a worker. Batches of jobs
#: known to be slow are cut smaller than this so that slow work still spreads
#: over every worker instead of queueing behind one.
DEFAULT_TARGET_BATCH_TIME = 0.005

#: The same on the Dask backend: each task costs the scheduler about a
#: millisecond, so a batch should hold at least a hundred times that.
DASK_TARGET_BATCH_TIME = 0.1

#: Hard upper bound of a batch under ``max_batch_size="auto"``.
AUTO_MAX_BATCH_SIZE = 4096

BACKENDS = ("process", "thread", "dask")
TRANSPORTS = ("shm", "pipe")
#: Buffers at least this large travel out of band, in shared-memory blocks
#: (transport "shm"). ``python benchmarks/oob_threshold.py`` (float64 arrays,
#: 2 workers, GB/s out of band vs in band): 16 KiB 0.92 vs 0.43, 32 KiB 0.90
#: vs 0.61, 64 KiB 1.63 vs 0.60, 256 KiB 4.06 vs 0.57. Out of band pays from
#: 16 KiB already (a batch's buffers share one block); 64 KiB is kept because
#: an out-of-band argument arrives read-only in the worker, and the fewer
#: small arrays that differ from ProcessPoolExecutor there, the better.
OOB_THRESHOLD = 64 * 1024


class Priority(enum.IntEnum):
    """Dispatch priority of a job; a lower value goes first.

    Example:
        >>> Priority.REALTIME < Priority.NORMAL < Priority.BULK
        True
    """

    REALTIME = 0
    NORMAL = 1
    BULK = 2


@dataclass(frozen=True)
class JobOptions:
    """Options applied to a job (see ``BatchPoolExecutor.options``).

    Attributes:
        priority: dispatch priority.
        key: lane of the job (None: its callable).
        timeout: seconds the job may run (None: no limit).
        retry: a ``RetryPolicy`` (None: no retries).
    """

    priority: Priority = Priority.NORMAL
    key: Hashable | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None


def check_timeout(name: str, value: object) -> float | None:
    """Validate a per-job timeout: None, or seconds > 0."""
    if value is None:
        return None
    seconds = check_seconds(name, value)
    if seconds == 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
    return seconds


@dataclass(frozen=True)
class PoolConfig:
    """The validated configuration of one pool (see ``BatchPoolExecutor``)."""

    backend: str
    max_workers: int
    mp_context: multiprocessing.context.BaseContext | None
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None
    thread_name_prefix: str
    transport: str
    max_batch_size: int
    max_delay: float
    target_batch_time: float = DEFAULT_TARGET_BATCH_TIME
    auto_batch_size: bool = False
    client: Any = None  # backend "dask": the user's distributed.Client
    address: str | None = None  # backend "dask": a scheduler to connect to


def _cpu_count() -> int:
    counter = getattr(os, "process_cpu_count", None) or os.cpu_count
    return counter() or 1


def check_int(name: str, value: object, minimum: int) -> int:
    """Validate an int argument: TypeError for another type, ValueError below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(name: str, value: object) -> float:
    """Validate a duration: a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _default_context(max_tasks_per_child: int | None) -> multiprocessing.context.BaseContext:
    if max_tasks_per_child is not None:
        # Same choice as ProcessPoolExecutor: fork cannot replace workers safely.
        return multiprocessing.get_context("spawn")
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        # The pool has a manager thread, and it forks replacement workers;
        # forking a threaded parent can deadlock the child on a lock some other
        # thread held. forkserver forks from a single-threaded server instead
        # (it is also Python 3.14's default for ProcessPoolExecutor).
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def make_config(
    *,
    max_workers: int | None,
    mp_context: multiprocessing.context.BaseContext | str | None,
    initializer: Callable[..., object] | None,
    initargs: Iterable[Any],
    max_tasks_per_child: int | None,
    thread_name_prefix: str,
    backend: str,
    transport: str | None,
    max_batch_size: int | str,
    max_delay: float,
    target_batch_time: float | None = None,
    client: Any = None,
    address: str | None = None,
) -> PoolConfig:
    """Validate the constructor's arguments and fill in the defaults.

    Raises:
        TypeError: an argument has the wrong type (the message names it).
        ValueError: an argument has a bad value (the message names it).

    Example:
        >>> cfg = make_config(max_workers=2, mp_context=None, initializer=None,
        ...     initargs=(), max_tasks_per_child=None, thread_name_prefix="",
        ...     backend="thread", transport="pipe", max_batch_size=64, max_delay=0)
        >>> cfg.max_workers, cfg.max_batch_size
        (2, 64)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_dask(backend, client, address, mp_context, transport, max_tasks_per_child)
    if transport is None:
        transport = "shm"
    if target_batch_time is None:
        target_batch_time = DASK_TARGET_BATCH_TIME if backend == "dask" else DEFAULT_TARGET_BATCH_TIME
    if isinstance(mp_context, str):
        if backend != "thread":
            raise TypeError(
                "mp_context must be a multiprocessing context such as "
                f"multiprocessing.get_context('spawn'), got the string {mp_context!r}"
            )
        # ThreadPoolExecutor's second positional parameter is thread_name_prefix.
        thread_name_prefix, mp_context = mp_context, None
    if max_workers is None:
        cpus = _cpu_count()
        max_workers = min(32, cpus + 4) if backend == "thread" else cpus
    elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(f"max_workers must be an int, got {type(max_workers).__name__}")
    elif max_workers <= 0:
        # Same wording as the standard library, which callers match on.
        raise ValueError("max_workers must be greater than 0")
    elif sys.platform == "win32" and backend == "process" and max_workers > 61:
        raise ValueError("max_workers must be <= 61")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if not isinstance(thread_name_prefix, str):
        raise TypeError(f"thread_name_prefix must be a str, got {type(thread_name_prefix).__name__}")
    if max_tasks_per_child is not None:
        check_int("max_tasks_per_child", max_tasks_per_child, 1)
    if mp_context is not None and not isinstance(mp_context, multiprocessing.context.BaseContext):
        raise TypeError(f"mp_context must be a multiprocessing context, got {type(mp_context).__name__}")
    if backend == "process":
        if mp_context is None:
            mp_context = _default_context(max_tasks_per_child)
        elif max_tasks_per_child is not None and mp_context.get_start_method(allow_none=False) == "fork":
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' "
                "multiprocessing start method; supply a different mp_context."
            )
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    auto = max_batch_size == "auto"
    size = AUTO_MAX_BATCH_SIZE if auto else check_int("max_batch_size", max_batch_size, 1)
    delay = check_seconds("max_delay", max_delay)
    target = check_seconds("target_batch_time", target_batch_time)
    if target == 0:
        raise ValueError("target_batch_time must be > 0 seconds")
    return PoolConfig(
        backend=backend,
        max_workers=max_workers,
        mp_context=mp_context,
        initializer=initializer,
        initargs=tuple(initargs),
        max_tasks_per_child=max_tasks_per_child,
        thread_name_prefix=thread_name_prefix,
        transport=transport,
        max_batch_size=size,
        max_delay=delay,
        target_batch_time=target,
        auto_batch_size=auto,
        client=client,
        address=address,
    )


def _check_dask(
    backend: str, client: Any, address: object, mp_context: object, transport: object, max_tasks_per_child: object
) -> None:
    """The arguments only the Dask backend takes, and those it cannot honour."""
    if backend != "dask":
        for name, value in (("client", client), ("address", address)):
            if value is not None:
                raise ValueError(f"{name} is for backend='dask' only, got backend={backend!r}")
        return
    if client is not None and address is not None:
        raise ValueError("give client or address, not both")
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a str such as 'tcp://scheduler:8786', got {type(address).__name__}")
    for name, value in (
        ("mp_context", mp_context),
        ("transport", transport),
        ("max_tasks_per_child", max_tasks_per_child),
    ):
        if value is not None:
            raise ValueError(f"{name} cannot be used with backend='dask' (the Dask cluster runs the workers)")
