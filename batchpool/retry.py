"""Retry policy, backoff, and the per-key circuit breaker. Pure logic.

Imports nothing from batchpool but ``errors``. Time and randomness are
injected, so every rule here is tested without sleeping.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import BatchPoolError

__all__ = ["CircuitBreaker", "CircuitOpenError", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how soon a failed job runs again.

    A job is retried while it has attempts left and its failure is retryable:
    an exception matching ``retry_on`` (an exception class, a tuple of them,
    or a predicate that takes the exception), or a crash of its worker, or its
    ``timeout`` (``JobTimeoutError``; a ``TimeoutError`` the job raises itself
    follows ``retry_on``). The
    n-th retry waits ``min(max_backoff, backoff * 2**(n-1))`` seconds, or,
    with ``jitter`` ("full jitter"), a uniformly random time up to that, so
    that retries of many jobs do not arrive together. No thread sleeps: the job
    waits in the pool until its time comes.

    Args:
        max_attempts: total runs allowed, the first one included (>= 1).
        backoff: base delay in seconds.
        max_backoff: cap on one delay.
        jitter: randomise each delay (full jitter).
        retry_on: an exception class, a tuple of them, or a predicate (a
            callable that is not a class) deciding what is retryable.

    Raises:
        TypeError: ``retry_on`` is none of those (the message names it).

    Example:
        >>> policy = RetryPolicy(max_attempts=3, backoff=0.1, jitter=False)
        >>> policy.delay(1), policy.delay(2)
        (0.1, 0.2)
        >>> policy.should_retry(ValueError(), attempt=1), policy.should_retry(ValueError(), attempt=3)
        (True, False)
        >>> RetryPolicy(retry_on=ConnectionError).retryable(ValueError())
        False
        >>> RetryPolicy(retry_on=lambda exc: "hiccup" in str(exc)).retryable(OSError("hiccup"))
        True
    """

    max_attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: bool = True
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (Exception,)
    _random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("RetryPolicy max_attempts must be an int")
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy {name} must be a finite number >= 0, got {value!r}")
        retry_on = self.retry_on
        # A class is callable too: without this check, retry_on=ConnectionError
        # was taken as a predicate, and ConnectionError(exc) is truthy, so
        # every exception counted as retryable.
        if isinstance(retry_on, type):
            if not issubclass(retry_on, BaseException):
                raise TypeError(f"RetryPolicy retry_on must be an exception class, got the class {retry_on.__name__}")
            object.__setattr__(self, "retry_on", (retry_on,))
        elif isinstance(retry_on, tuple):
            wrong = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
            if wrong:
                raise TypeError(f"RetryPolicy retry_on tuple must hold exception classes only, got {wrong[0]!r}")
        elif not callable(retry_on):
            raise TypeError(
                "RetryPolicy retry_on must be an exception class, a tuple of them, or a predicate,"
                f" got {type(retry_on).__name__}"
            )

    def retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` is a failure this policy retries."""
        from .errors import JobTimeoutError, WorkerCrashedError

        if isinstance(exc, (WorkerCrashedError, JobTimeoutError)):
            return True  # the job's run was cut short by the pool, not refused
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        try:
            return bool(self.retry_on(exc))
        except Exception:  # noqa: BLE001 - a broken predicate must not lose the job
            return False

    def should_retry(self, exc: BaseException, *, attempt: int) -> bool:
        """Retry after the ``attempt``-th run failed with ``exc``?"""
        return attempt < self.max_attempts and self.retryable(exc)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the run after the ``attempt``-th one."""
        ceiling = float(min(self.max_backoff, self.backoff * 2 ** max(0, attempt - 1)))
        return ceiling * float(self._random()) if self.jitter else ceiling


class CircuitOpenError(BatchPoolError):
    """Jobs of this key fail fast: it failed too often recently (see CircuitBreaker).

    Example:
        >>> str(CircuitOpenError("payments", 4.5))
        "circuit for key 'payments' is open; retry in 4.5 s"
    """

    def __init__(self, key: object, retry_in: float) -> None:
        super().__init__(key, retry_in)
        self.key = key
        self.retry_in = retry_in

    def __str__(self) -> str:
        return f"circuit for key {self.key!r} is open; retry in {self.retry_in:.1f} s"


class CircuitBreaker:
    """Fail jobs of one key fast after it failed ``failures`` times in a row.

    Closed: jobs run, consecutive failures are counted. Open (after
    ``failures`` in a row): every job fails at once with ``CircuitOpenError``
    for ``cooldown`` seconds. Half-open (after the cooldown): one trial job
    runs; its success closes the circuit, its failure opens it again.

    Example:
        >>> now = [0.0]
        >>> cb = CircuitBreaker(failures=2, cooldown=30.0, clock=lambda: now[0])
        >>> cb.record(False); cb.record(False)   # two failures in a row: open
        >>> now[0] = 1.0; cb.allow()             # fail fast
        False
        >>> now[0] = 31.0; cb.allow()            # the cooldown is over: one trial
        True
        >>> cb.allow()                           # and only one
        False
    """

    def __init__(self, failures: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise ValueError(f"CircuitBreaker failures must be an int >= 1, got {failures!r}")
        if not isinstance(cooldown, (int, float)) or cooldown < 0:
            raise ValueError(f"CircuitBreaker cooldown must be a number >= 0, got {cooldown!r}")
        self.failures = failures
        self.cooldown = float(cooldown)
        self._clock = clock
        self._lock = threading.Lock()  # outcomes arrive from pool threads
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        """'closed', 'open' or 'half-open'."""
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._trial_running else "open"

    def allow(self) -> bool:
        """May a job run now? (False: fail it with CircuitOpenError.)"""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial_running or self._clock() - self._opened_at < self.cooldown:
                return False
            self._trial_running = True
            return True

    def retry_in(self) -> float:
        """Seconds until the next trial may run."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def record(self, success: bool) -> None:
        """Feed the outcome of a job that was allowed to run."""
        with self._lock:
            if success:
                self._consecutive = 0
                self._opened_at = None
            else:
                self._consecutive += 1
                if self._trial_running or self._consecutive >= self.failures:
                    self._opened_at = self._clock()
            self._trial_running = False

    def release(self) -> None:
        """A job that was allowed to run never did (cancelled): free its trial slot.

        Counts neither a success nor a failure, so a cancelled half-open trial
        does not leave the breaker refusing every later job.

        Example:
            >>> now = [0.0]
            >>> cb = CircuitBreaker(failures=1, cooldown=1.0, clock=lambda: now[0])
            >>> cb.record(False); now[0] = 2.0
            >>> cb.allow(), cb.allow()       # the trial is taken
            (True, False)
            >>> cb.release(); cb.allow()     # cancelled: the next job is the trial
            True
        """
        with self._lock:
            self._trial_running = False
