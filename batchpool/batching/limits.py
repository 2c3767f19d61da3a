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

* **Registry**: ``KeyLimits`` holds one pool's limited keys, the lifted ones
  whose jobs still run, and the slot each running job holds (``holding``).

A limit is lifted with ``UNLIMITED`` (as ``resource.RLIM_INFINITY`` lifts an
rlimit): ``None`` means "not given" in ``set_policy``, which keeps a key's
current value.
"""

from __future__ import annotations

import enum
import math
import sys
from collections import deque
from collections.abc import Hashable
from typing import Any, Final, Literal

__all__ = [
    "BURST_SECONDS",
    "RAMP_START",
    "UNLIMITED",
    "KeyLimit",
    "KeyLimits",
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


class KeyLimits:
    """The limited keys of one pool, and the slot each running job of them holds.

    No lock of its own: the batcher calls it under the lanes' lock.

    Example:
        >>> keys = KeyLimits()
        >>> keys.change("api", 0.0, max_concurrency=1, rate_limit=None, ramp=None)
        >>> keys.hold(keys.limits["api"], [7], 0.0, batched=False, cost=1)
        >>> keys.rows(0.0, {})["api"][:2], keys.release(7), keys.release(7)
        ((1, 1), True, False)
    """

    def __init__(self) -> None:
        self.limits: dict[Hashable, KeyLimit] = {}
        self.lifted: dict[Hashable, KeyLimit] = {}  # lifted limits whose jobs were still running
        #: Job id -> the slot it holds, for jobs cut from a limited lane and not
        #: done yet. Read without the lock by the ledger: it is non-empty
        #: whenever a job in it is being settled (the job went in first).
        self.holding: dict[int, Any] = {}

    def change(
        self,
        key: Hashable,
        now: float,
        *,
        max_concurrency: int | Unlimited | None,
        rate_limit: float | Unlimited | None,
        ramp: float | None,
    ) -> None:
        """Change the concurrency and rate limits of one key (``Batcher.set_limit``).

        None keeps a limit as it is; ``UNLIMITED`` lifts it. A new
        ``rate_limit`` or ``ramp`` replaces the key's token bucket (ending a
        ramp in progress; the tokens saved up are kept, up to the new burst);
        ``ramp`` alone ramps the current rate again. Jobs running now keep
        counting against the new concurrency limit.

        Raises:
            ValueError: ``ramp`` without any rate limit.
        """
        # A limit lifted while its jobs ran is found again, so they still count.
        limit = self.limits.get(key) or self.lifted.pop(key, None) or KeyLimit()
        rate = limit.bucket.rate if limit.bucket is not None else None
        if rate_limit is UNLIMITED:
            rate = None
        elif rate_limit is not None:
            rate = float(rate_limit)
        if rate is None and ramp:
            raise ValueError("ramp needs a rate_limit (the rate to ramp up to)")  # before any change
        if max_concurrency is UNLIMITED:
            limit.max_concurrency = None
        elif max_concurrency is not None:
            limit.max_concurrency = max_concurrency
        if rate is None:
            limit.bucket = None
        elif rate_limit is not None or ramp is not None:
            saved = limit.bucket.available(now) if limit.bucket is not None else None
            limit.bucket = TokenBucket(rate, now=now, ramp=ramp or 0.0, tokens=saved)
        if not limit.unlimited:
            self.limits[key] = limit
        elif self.limits.pop(key, None) is not None and limit.running:
            self.lifted[key] = limit  # its running jobs still release into it

    def hold(self, limit: KeyLimit, job_ids: list[int], now: float, *, batched: bool, cost: int) -> None:
        """Jobs cut from a limited lane start: each holds a slot until ``release``."""
        holders = limit.started(len(job_ids), now, batched=batched, cost=cost)
        holding = self.holding
        for job_id, holder in zip(job_ids, holders, strict=True):
            holding[job_id] = holder

    def release(self, job_id: int) -> bool:
        """Free the job's slot, if it holds one; True if it did."""
        holder = self.holding.pop(job_id, None)
        if holder is None:
            return False
        holder.release()
        return True

    def rows(
        self, now: float, waiting: dict[Hashable, int]
    ) -> dict[Hashable, tuple[int, int | None, float | None, float, int]]:
        """Per limited key: (running, max_concurrency, rate limit now, starts in the last second, waiting)."""
        return {
            key: (
                limit.running,
                limit.max_concurrency,
                limit.rate_at(now),
                limit.measured_rate(now),
                waiting.get(key, 0),
            )
            for key, limit in self.limits.items()
        }
