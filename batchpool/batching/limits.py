"""Per-key limits: how many jobs of a key may run at once, and how fast they may start.

Imports nothing of batchpool's. Pure bookkeeping with an injected clock (every
method takes ``now``); no lock of its own: the batcher calls it under the lanes'
lock, so a limit and the lanes it governs change together.

* **Concurrency**: ``running`` counts what was cut from the key's lanes and has
  not finished (or gone back to the lanes). A batch of plain calls counts one
  per job; a ``@batched`` batch is one call and counts one.
* **Rate**: a token bucket. Tokens refill at ``rate`` per second up to a small
  burst (``BURST_SECONDS`` of the rate, at least one), and each job start (each
  item, for ``@batched`` functions) takes one. So in any window of ``T``
  seconds at most ``rate * T + burst`` jobs start: smooth, with just enough
  burst that a batch can hold more than one job.
* **Ramp**: the rate rises linearly from ``RAMP_START`` of its target to the
  target over ``ramp`` seconds (a cold cache, a service that scales up). The
  refill integrates the rising rate exactly, so the bound above holds with the
  ramp's rate at every instant.

A limit is lifted with ``UNLIMITED`` (as ``resource.RLIM_INFINITY`` lifts an
rlimit): ``None`` means "not given" in ``set_policy``, which keeps a key's
current value.
"""

from __future__ import annotations

import enum
import math
import sys
from collections import deque
from typing import Final, Literal

__all__ = [
    "BURST_SECONDS",
    "RAMP_START",
    "UNLIMITED",
    "KeyLimit",
    "Limit",
    "TokenBucket",
    "linear",
]

#: The bucket holds this many seconds' worth of the rate (at least one token).
BURST_SECONDS = 0.1
#: A ramp starts at this fraction of its target rate.
RAMP_START = 0.1
#: "No limit" for an allowance (more than any batch holds).
NO_LIMIT = sys.maxsize
# A start is allowed this close below one whole token (float rounding of the refill).
_EPSILON = 1e-9


class Limit(enum.Enum):
    """Named limit values (``Limit.UNLIMITED``, exported as ``batchpool.UNLIMITED``).

    Example:
        >>> UNLIMITED
        batchpool.UNLIMITED
    """

    UNLIMITED = "unlimited"

    def __repr__(self) -> str:
        return "batchpool.UNLIMITED"


#: Pass as ``max_concurrency`` or ``rate_limit`` to lift that limit.
UNLIMITED: Final = Limit.UNLIMITED
Unlimited = Literal[Limit.UNLIMITED]


def linear(start: float, end: float, t0: float, duration: float, now: float) -> float:
    """The value at ``now`` of a line from ``start`` (at ``t0``) to ``end`` (``duration`` later), then flat.

    Example:
        >>> linear(1.0, 3.0, 10.0, 2.0, 11.0), linear(1.0, 3.0, 10.0, 2.0, 99.0)
        (2.0, 3.0)
    """
    if duration <= 0 or now >= t0 + duration:
        return end
    if now <= t0:
        return start
    return start + (end - start) * (now - t0) / duration


class TokenBucket:
    """At most ``rate`` starts per second, smoothed, with a burst of ``BURST_SECONDS`` of it.

    Args:
        rate: tokens per second (> 0) once any ramp is over.
        now: the clock's reading at creation (the bucket starts full).
        ramp: seconds over which the rate rises from ``RAMP_START`` of ``rate``
            (0: no ramp).
        tokens: start with this many tokens instead of a full bucket (a
            changed limit keeps what its key had saved up, never more).

    Example:
        >>> bucket = TokenBucket(100.0, now=0.0)      # 100/s, a burst of 10
        >>> bucket.available(0.0)
        10.0
        >>> bucket.take(10, 0.0); bucket.available(0.05)
        5.0
        >>> round(bucket.ready_at(10, 0.05), 3)        # 5 more tokens take 50 ms
        0.1
    """

    __slots__ = ("_t0", "_t_last", "ramp", "rate", "tokens")

    def __init__(self, rate: float, *, now: float, ramp: float = 0.0, tokens: float | None = None) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        self.rate = float(rate)
        self.ramp = max(0.0, float(ramp))
        self._t0 = now
        self._t_last = now
        capacity = self.capacity(now)
        self.tokens = capacity if tokens is None else min(max(0.0, tokens), capacity)

    def rate_at(self, now: float) -> float:
        """The rate in force at ``now`` (rising during a ramp)."""
        return linear(self.rate * RAMP_START, self.rate, self._t0, self.ramp, now)

    def capacity(self, now: float) -> float:
        """Most tokens the bucket holds at ``now``: the burst."""
        return max(1.0, self.rate_at(now) * BURST_SECONDS)

    def _refill(self, now: float) -> None:
        last = self._t_last
        if now <= last:
            return
        # The area under the rate line from last to now (exact for a ramp:
        # the rate is linear there, so the mean of its ends times the time).
        mid = self._t0 + self.ramp
        if self.ramp and last < mid:
            end = min(now, mid)
            added = (self.rate_at(last) + self.rate_at(end)) / 2 * (end - last)
            if now > end:
                added += self.rate * (now - end)
        else:
            added = self.rate * (now - last)
        self.tokens = min(self.capacity(now), self.tokens + added)
        self._t_last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``."""
        self._refill(now)
        return self.tokens

    def allowance(self, now: float) -> int:
        """Whole starts allowed at ``now``."""
        return int(self.available(now) + _EPSILON)

    def take(self, n: int, now: float) -> None:
        """Spend ``n`` tokens (``n`` starts) at ``now``."""
        self._refill(now)
        self.tokens -= n

    def ready_at(self, n: float, now: float) -> float:
        """When ``n`` tokens (at most a full bucket) will be there; ``now`` if they are."""
        self._refill(now)
        need = min(n, self.capacity(now)) - self.tokens
        if need <= _EPSILON:
            return now
        # The rate only rises (or stays), so the rate now gives a time no
        # earlier than the real one: a waiter may wake a little late, never early.
        return now + need / self.rate_at(now) + 1e-6


class _Call:
    """The concurrency slot of one ``@batched`` call: freed when its last item is done."""

    __slots__ = ("limit", "remaining")

    def __init__(self, limit: KeyLimit, items: int) -> None:
        self.limit = limit
        self.remaining = items

    def release(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.limit.running -= 1


class KeyLimit:
    """The limits and counters of one key.

    Args:
        max_concurrency: most jobs (calls) of the key running at once; None: no limit.
        bucket: its rate limit; None: none.

    Example:
        >>> limit = KeyLimit(max_concurrency=2)
        >>> limit.allowance(0.0, batched=False)
        2
        >>> holds = limit.started(2, 0.0, batched=False)
        >>> limit.allowance(0.0, batched=False), limit.running
        (0, 2)
        >>> holds[0].release(); limit.allowance(0.0, batched=False)
        1
    """

    __slots__ = ("_starts", "bucket", "max_concurrency", "running")

    def __init__(self, max_concurrency: int | None = None, bucket: TokenBucket | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.bucket = bucket
        self.running = 0
        # (time, starts) of the last second, for the measured rate.
        self._starts: deque[tuple[float, int]] = deque()

    @property
    def unlimited(self) -> bool:
        """Neither limit is set."""
        return self.max_concurrency is None and self.bucket is None

    def allowance(self, now: float, *, batched: bool) -> int:
        """Most jobs of one batch that may start at ``now`` (0: the lane waits).

        For ``@batched`` lanes a batch is one call: it needs one free slot of
        concurrency, and its items are what the rate limit counts.
        """
        allowed = NO_LIMIT
        if self.max_concurrency is not None:
            free = self.max_concurrency - self.running
            if free <= 0:
                return 0
            if not batched:
                allowed = free
        if self.bucket is not None:
            allowed = min(allowed, self.bucket.allowance(now))
        return allowed

    def started(
        self, jobs: int, now: float, *, batched: bool, cost: int | None = None
    ) -> list[KeyLimit] | list[_Call]:
        """``jobs`` jobs start at ``now``; returns one holder per job, whose ``release()`` ends it.

        ``cost``: tokens they take (default one per job; a ``map`` chunk
        costs its items, and may leave the bucket in debt, which later starts
        wait out).
        """
        cost = jobs if cost is None else cost
        if self.bucket is not None:
            self.bucket.take(cost, now)
        starts = self._starts
        starts.append((now, cost))
        while starts and starts[0][0] <= now - 1.0:
            starts.popleft()
        if batched:
            self.running += 1
            call = _Call(self, jobs)
            return [call] * jobs
        self.running += jobs
        return [self] * jobs

    def release(self) -> None:
        """One job of this key finished (or went back to the lanes)."""
        self.running -= 1

    def ready_at(self, now: float) -> float | None:
        """When the rate limit alone lets a job start again, if that is what holds the key back.

        None when a start is allowed now or only a finishing job can allow one
        (the batcher is told of those).
        """
        if self.bucket is None:
            return None
        if self.max_concurrency is not None and self.running >= self.max_concurrency:
            return None
        at = self.bucket.ready_at(1, now)
        return at if at > now else None

    def measured_rate(self, now: float) -> float:
        """Starts in the last second."""
        return float(sum(n for t, n in self._starts if t > now - 1.0))

    def rate_at(self, now: float) -> float | None:
        """The rate limit in force (rising during a ramp), or None."""
        return None if self.bucket is None else self.bucket.rate_at(now)
