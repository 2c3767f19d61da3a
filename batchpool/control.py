"""Controlling a running pool: resize, pause/resume, per-key limits (a mixin of the executor).

Imports ``state``, ``batching``, ``ledger``, ``metrics``, ``options``, ``retry``.
Every control here is a change of shared state that the rest of the pool
already consults, so none of it adds work to the path of a job:

* ``resize(n)`` sets ``PoolState.target_workers``. The backends follow it
  (they watch the state): the process backend starts workers as work needs
  them and retires surplus ones, idle first, busy ones after their current
  batch (a prefetched batch that has not started goes back to the lanes); the
  thread backend's surplus threads exit when they next go idle. Nothing is
  failed, lost or run twice: a job leaves the lanes once and comes back only
  if it never started. ``ramp=`` steps the target there over time (a helper
  thread, ended by a new resize or by shutdown).
* ``pause()``/``resume()`` move PoolState between RUNNING and PAUSED. Paused,
  the lanes hand nothing out (retry backoffs still count down), submits are
  still accepted, and batches already on workers finish.
* Per-key ``max_concurrency``/``rate_limit``/``ramp`` (``set_policy``) live in
  the lanes (``batching.limits``): a lane at its limit is skipped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from .batching.limits import UNLIMITED, Unlimited
from .errors import QueueFullError
from .metrics import KeyLimitStats, Stats
from .options import check_int, check_seconds, check_timeout
from .retry import CircuitBreaker
from .state import PoolState

if TYPE_CHECKING:
    from .backends.base import Backend
    from .batching import Batcher
    from .jobs import Job
    from .ledger import Ledger
    from .options import PoolConfig

__all__ = ["PoolControl", "ramp_steps"]


def ramp_steps(start: int, end: int, duration: float) -> list[tuple[float, int]]:
    """When (seconds from now) a target moving linearly from ``start`` to ``end`` takes each value.

    One step per worker, evenly spaced, the last at ``duration``.

    Example:
        >>> ramp_steps(1, 4, 3.0)
        [(1.0, 2), (2.0, 3), (3.0, 4)]
        >>> ramp_steps(4, 2, 1.0)
        [(0.5, 3), (1.0, 2)]
    """
    steps = abs(end - start)
    sign = 1 if end > start else -1
    return [(duration * i / steps, start + sign * i) for i in range(1, steps + 1)]


class _Ramp:
    """A helper thread stepping a pool's target workers along ``ramp_steps``; ``cancel()`` ends it.

    It holds the PoolState only (not the executor), so it never keeps a pool alive.
    """

    def __init__(self, state: PoolState, steps: list[tuple[float, int]]) -> None:
        self._state = state
        self._steps = steps
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batchpool-ramp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        for at, target in self._steps:
            if self._cancelled.wait(max(0.0, t0 + at - time.monotonic())):
                return
            if not self._state.accepting:
                return  # shutting down: the target no longer matters
            self._state.set_target(target)

    def cancel(self) -> None:
        """Stop stepping, and wait for the thread (it exits at once)."""
        self._cancelled.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


_RESIZE_LOCK = threading.Lock()


def _check_limit(name: str, value: object, *, integer: bool) -> None:
    if value is None or value is UNLIMITED:
        return
    if integer:
        check_int(name, value, 1)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, batchpool.UNLIMITED or None, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (batchpool.UNLIMITED lifts it), got {value!r}")


def _readable(key: Hashable) -> str:
    return key if isinstance(key, str) else getattr(key, "__qualname__", None) or repr(key)


class PoolControl:
    """Run-time control of a pool: size, pause, per-key limits (mixed into the executor)."""

    _state: PoolState
    _batcher: Batcher
    _ledger: Ledger
    _backend: Backend
    _config: PoolConfig
    _breakers: dict[Hashable, CircuitBreaker]
    _block_timeout: float | None
    _add_shutdown_hook: Callable[[Callable[[], None]], None]
    _ramp: _Ramp | None = None
    _ramp_hooked = False

    def set_policy(
        self,
        key: Hashable,
        *,
        max_batch_size: int | None = None,
        max_delay: float | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        max_concurrency: int | Unlimited | None = None,
        rate_limit: float | Unlimited | None = None,
        ramp: float | None = None,
    ) -> None:
        """Batching, concurrency and rate limits, and a circuit breaker, for one key; at any time.

        ``key`` is what ``options(key=...)`` names, or a callable (the default
        key of its jobs). Only the arguments given change: one left out (None)
        keeps the key's current value (at first, the pool's defaults: no
        concurrency or rate limit). ``batchpool.UNLIMITED`` lifts a limit, as
        ``resource.RLIM_INFINITY`` does an rlimit.

        Args:
            max_batch_size: most jobs in one batch of this key.
            max_delay: seconds a partial batch of this key may wait for more.
            circuit_breaker: a ``CircuitBreaker`` for this key's jobs.
            max_concurrency: most jobs of this key running at once across
                workers (``@batched`` functions: calls).
            rate_limit: most job starts per second (``@batched``: items),
                smoothed, with a burst of a tenth of a second's worth.
            ramp: seconds over which the rate rises linearly from a tenth of
                ``rate_limit`` to all of it (a new ``rate_limit`` or ``ramp``
                ends a ramp in progress).

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.set_policy("emails", max_batch_size=100, max_delay=0.05)
            ...     ex.set_policy("emails", max_concurrency=2, rate_limit=50)  # batching kept
            ...     ex.options(key="emails").submit(len, "hi").result(timeout=10)
            2
        """
        self._apply_policy(key, max_batch_size, max_delay, circuit_breaker, max_concurrency, rate_limit, ramp)

    @property
    def max_workers(self) -> int:
        """The number of workers the pool aims at (what ``resize`` sets).

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(max_workers=2, backend="thread") as ex:
            ...     ex.max_workers
            2
        """
        return self._state.target_workers

    def resize(self, max_workers: int, ramp: float | None = None) -> None:
        """Change the number of workers; returns at once.

        Growing starts workers that take queued work immediately. Shrinking
        retires idle workers first and busy ones after their current batch;
        a batch prefetched for a retiring worker goes back to the queue. No
        Future fails, is lost or runs twice because of a resize. A resize (or
        a ramp in progress) is replaced by the next one.

        Args:
            max_workers: the new number of workers (>= 1).
            ramp: seconds over which to get there linearly, one worker at a
                time (None or 0: at once).

        Raises:
            TypeError: ``max_workers`` is not an int, or ``ramp`` not a number.
            ValueError: ``max_workers`` < 1, or ``ramp`` < 0.
            RuntimeError: the pool is shut down.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
            ...     ex.resize(3)
            ...     ex.max_workers, sorted(ex.map(abs, [-1, -2, -3]))
            (3, [1, 2, 3])
        """
        check_int("max_workers", max_workers, 1)
        duration = 0.0 if ramp is None else check_seconds("ramp", ramp)
        state = self._state
        if not state.accepting:
            raise RuntimeError("cannot resize a pool after shutdown")
        # Resizes are rare: one lock for all pools orders concurrent ones
        # (the last one wins, and no ramp outlives its replacement).
        with _RESIZE_LOCK:
            previous, self._ramp = self._ramp, None
            if previous is not None:
                previous.cancel()
            if duration == 0:
                state.set_target(max_workers)
                return
            steps = ramp_steps(state.target_workers, max_workers, duration)
            if not steps:
                return
            self._ramp = _Ramp(state, steps)
            hook = not self._ramp_hooked
            self._ramp_hooked = True
        if hook:
            self._add_shutdown_hook(self._cancel_ramp)

    def _cancel_ramp(self) -> None:
        with _RESIZE_LOCK:
            ramp, self._ramp = self._ramp, None
        if ramp is not None:
            ramp.cancel()

    def pause(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Stop handing out work; what is already running finishes.

        Submits are still accepted (subject to ``max_pending``/``on_full``;
        ``"caller_runs"`` blocks instead, since a paused pool runs nothing);
        queued Futures stay PENDING and cancellable; a job's time limit does
        not tick while it waits; retry backoffs keep counting down but the
        retries wait. ``shutdown()`` while paused drains the queue (with
        ``cancel_futures=True``, cancels it). Pausing a paused pool does nothing.

        Args:
            wait: return only once the batches already dispatched have finished.
            timeout: with ``wait``, wait at most this many seconds.

        Returns:
            True when nothing dispatched is unfinished (always True without
            ``wait``); False if ``timeout`` passed first, or at once when
            called from one of the pool's own threads (a job or a
            done-callback), which would otherwise wait for itself.

        Raises:
            RuntimeError: the pool is shut down.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.pause(wait=True, timeout=10)
            ...     fut = ex.submit(abs, -1)
            ...     fut.done(), ex.paused
            ...     ex.resume()
            ...     fut.result(timeout=10)
            True
            (False, True)
            1
        """
        deadline = check_timeout("timeout", timeout)
        state = self._state
        if not state.pause() and not state.paused:
            raise RuntimeError("cannot pause a pool after shutdown")
        if not wait:
            return True
        me = threading.current_thread()
        if me is getattr(self._backend, "manager_thread", None) or me in self._backend.compat_workers().values():
            # A job or a done-callback on a pool thread: waiting for the
            # dispatched batches would wait for itself (as shutdown() does not).
            return False
        return self._ledger.wait_idle(deadline)

    def resume(self) -> None:
        """Hand out work again after ``pause()`` (nothing happens if the pool is not paused).

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.pause(); ex.resume()
            ...     ex.paused
            True
            False
        """
        self._state.resume()

    @property
    def paused(self) -> bool:
        """``pause()`` is in force.

        Example:
            >>> from batchpool import BatchPoolExecutor
            >>> with BatchPoolExecutor(backend="thread") as ex:
            ...     ex.paused
            False
        """
        return self._state.paused

    # -- used by the executor ----------------------------------------------------------

    def _must_queue(self, job: Job) -> bool:
        """``on_full="caller_runs"`` may not run ``job`` here: the pool is paused, or its key has a limit."""
        return self._state.paused or self._batcher.is_limited(job)

    def _put_paused(self, job: Job) -> None:
        """``on_full="caller_runs"`` when the job may not run here: block for room instead.

        Raises:
            QueueFullError: no room came within ``block_timeout``.
        """
        if not self._batcher.put(job, block=True, timeout=self._block_timeout):
            assert self._batcher.max_pending is not None
            raise QueueFullError(self._batcher.max_pending)
        self._backend.notify()

    def _apply_policy(
        self,
        key: Hashable,
        max_batch_size: int | None,
        max_delay: float | None,
        circuit_breaker: CircuitBreaker | None,
        max_concurrency: int | Unlimited | None,
        rate_limit: float | Unlimited | None,
        ramp: float | None,
    ) -> None:
        """``set_policy``: validate everything first, then change only what was given."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}") from None
        size, delay = self._batcher.policy(key)
        if max_batch_size is not None:
            size = check_int("max_batch_size", max_batch_size, 1)
        if max_delay is not None:
            delay = check_seconds("max_delay", max_delay)
        _check_limit("max_concurrency", max_concurrency, integer=True)
        _check_limit("rate_limit", rate_limit, integer=False)
        if ramp is not None:
            check_seconds("ramp", ramp)
        if circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError("circuit_breaker must be a batchpool.CircuitBreaker")
        if max_concurrency is not None or rate_limit is not None or ramp is not None:
            self._batcher.set_limit(key, max_concurrency=max_concurrency, rate_limit=rate_limit, ramp=ramp)
        self._batcher.set_policy(key, size, delay)
        self._backend.notify()  # a raised limit may let a waiting lane go now
        if circuit_breaker is not None:
            self._breakers[key] = circuit_breaker

    def _control_stats(self, stats: Stats) -> Stats:
        """Add the target size, the pause and the per-key limits to a snapshot."""
        limits = {
            _readable(key): KeyLimitStats(running, limit, rate_limit, rate, waiting)
            for key, (running, limit, rate_limit, rate, waiting) in self._batcher.key_limits().items()
        }
        return replace(stats, target_workers=self._state.target_workers, paused=self._state.paused, key_limits=limits)
