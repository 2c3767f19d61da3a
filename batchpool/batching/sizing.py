"""How many jobs one batch holds: measured run times, and the sizes cut from them.

Imports ``batchpool.jobs``, ``batchpool.options`` and ``batching.lane`` only.
No lock of its own: the Batcher (``batching.lanes``) calls it under the lanes'
lock.

* Size: up to ``max_batch_size``, split evenly over the idle workers, and for
  plain jobs whose measured run time is known, no more than
  ``target_batch_time`` worth of them, so slow jobs still spread over every
  worker. A callable never timed yet goes out one job at a time until its first
  batch is back. Jobs with a timeout go out alone (so a timeout is exact).
* Estimates are trusted only as far as they were measured: a batch holds at
  most twice as many jobs as the largest batch of its callable measured so far
  (sizes double as batches come back), and a measured time per job above the
  estimate replaces it at once (below, it moves it by a weighted average). So
  a few quick warm-up calls cannot send the slow calls that follow in one
  oversized batch: the first batch after them holds two jobs, and its time
  corrects the estimate before a larger one leaves.
* REALTIME: for ``REALTIME_WINDOW`` seconds after a REALTIME job was queued,
  other lanes' batches are cut to a quarter of the target time and nothing
  else is prefetched, so a worker frees up often for the next one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from ..jobs import BATCHED_KINDS
from ..options import Priority
from .lane import Lane

__all__ = ["REALTIME_WINDOW", "Sizer", "timing_key"]

#: For this long after a REALTIME job was queued, other work is not prefetched
#: into busy workers and its batches are cut to a quarter of the target time,
#: so a worker frees up often and the next REALTIME job finds it.
REALTIME_WINDOW = 1.0
# How strongly one new timing sample moves a callable's run-time estimate.
_EWMA_WEIGHT = 0.3
# Timing estimates are kept by name, not by object (an object key would keep
# the user's callable, and anything bound to it, alive); bounded like a cache.
_MAX_ESTIMATES = 4096


def timing_key(fn: Callable[..., Any], kind: int) -> Hashable:
    """Name-based key of a callable's run-time estimate (holds no reference)."""
    target = getattr(fn, "__func__", fn)
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return (module, name, kind)


class Sizer:
    """Run-time estimates per timing key, and batch sizes cut from them.

    Args:
        target_batch_time: seconds of measured work one batch should hold.
        auto: size batches of ``@batched`` functions by measured time too.

    Example:
        >>> s = Sizer(target_batch_time=0.005, auto=False)
        >>> s.record("f", 1, 0.0001); s.estimates["f"]
        (0.0001, 1)
    """

    def __init__(self, *, target_batch_time: float, auto: bool) -> None:
        self.target_batch_time = target_batch_time
        self.auto = auto
        #: Per timing key: (seconds per job, the largest batch measured at that estimate).
        self.estimates: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        #: When the latest REALTIME job was queued (batcher clock).
        self.last_realtime = -REALTIME_WINDOW * 2

    def size(
        self, lane: Lane, max_jobs: int, idle: int, prefetch: bool, workers: int, now: float, closing: bool
    ) -> int:
        """How many of the lane's jobs the next batch holds (0: none now); see the module docstring."""
        if lane.timed:
            return 0 if prefetch else 1  # a timeout is measured from the job's own start
        queued = len(lane.jobs)
        size = min(lane.max_batch_size, max_jobs, queued)
        if lane.max_delay and not closing:
            return size  # the user asked for size-or-delay batches: keep them whole
        if lane.jobs[0].kind in BATCHED_KINDS and not self.auto:
            return size  # batch functions: the batch is the user's unit of work
        known = self.estimates.get(lane.timing_key)
        if known is None:
            # Never timed: probe with single jobs until the first batch is back.
            return 0 if prefetch else min(size, 1)
        estimate, measured = known
        size = min(size, 2 * measured)  # grow only as far as measured (twice the largest batch)
        target = self.target_batch_time
        if lane.priority != Priority.REALTIME and now - self.last_realtime < REALTIME_WINDOW:
            if prefetch:
                return 0
            target /= 4
        if estimate > 0:
            size = min(size, max(1, int(target / estimate)))
        if prefetch and estimate * size > target:
            # Slow jobs: prefetch one only while the lane is deep enough that
            # every other worker still finds work when it frees up.
            return 1 if queued >= 2 * workers else 0
        return min(size, math.ceil(queued / idle))

    def record(self, key: Hashable, jobs: int, seconds: float) -> None:
        """Feed the measured run time of a finished batch of ``jobs`` jobs (> 0) into its estimate.

        Slower than estimated: the sample replaces the estimate (an
        underestimate makes oversized batches, which keep workers idle), and
        when it is more than twice the estimate, what was measured before no
        longer counts, so batch sizes grow again from this one. Quicker: the
        estimate moves by a weighted average.
        """
        sample = seconds / jobs
        old = self.estimates.pop(key, None)
        if old is None:
            self.estimates[key] = (sample, jobs)
        else:
            estimate, measured = old
            if sample > 2 * estimate:
                self.estimates[key] = (sample, jobs)  # a new regime: measure again from here
            elif sample > estimate:
                self.estimates[key] = (sample, max(measured, jobs))
            else:
                self.estimates[key] = (estimate + _EWMA_WEIGHT * (sample - estimate), max(measured, jobs))
        if len(self.estimates) > _MAX_ESTIMATES:
            self.estimates.popitem(last=False)
