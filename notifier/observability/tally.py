"""Counting without counting at once: counts noted by the code that counts and added up to their
series later, by one thread, in a batch.

prometheus-client counts each ``inc`` and ``observe`` under a lock, and an ``observe`` walks the
histogram's bounds in Python: for a worker, a dozen counts a message, spread over 32 threads, and
18 µs of its CPU a message. Noted on a :class:`Tally` a count is one ``deque.append`` (no lock of
Python's); :meth:`Tally.add_up` then makes one ``inc`` per series and per bucket for all that was
noted, a bucket found by ``bisect``. A worker process adds up once a second, as it copies its
counts to its multiprocess files (:mod:`notifier.observability.multiprocess`); the API at each
scrape and whenever a few thousand counts are waiting.

A histogram's private names (``_upper_bounds``, ``_buckets``, ``_sum``) are used here only, against
the pinned minor version of prometheus-client; ``tests/unit/test_tally.py`` holds a tally's
exposition equal to counting at once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram


class Counts(Protocol):
    """How a process counts: at once (:class:`Direct`) or noted to be added up later (:class:`Tally`).
    ``series`` is a family's child (``family.labels(...)``), or a family without labels."""

    def count(self, series: Counter | Gauge, amount: float) -> None: ...

    def observe(self, series: Histogram, amount: float) -> None: ...


class Direct:
    """Counts at once, with prometheus-client's own calls."""

    def count(self, series: Counter | Gauge, amount: float) -> None:
        series.inc(amount)

    def observe(self, series: Histogram, amount: float) -> None:
        series.observe(amount)


class Tally:
    """Counts noted by any thread and added to their series by one (:meth:`add_up`): exact, in order
    per series, with one ``inc`` per series and bucket for all that was noted since the last call."""

    def __init__(self) -> None:
        self.counted: deque[tuple[Counter | Gauge, float]] = deque()
        self.observed: deque[tuple[Histogram, float]] = deque()

    def __len__(self) -> int:
        """Counts noted and not yet added up."""
        return len(self.counted) + len(self.observed)

    def count(self, series: Counter | Gauge, amount: float) -> None:
        self.counted.append((series, amount))

    def observe(self, series: Histogram, amount: float) -> None:
        self.observed.append((series, amount))

    def clear(self) -> None:
        """Forget what was noted and not added up (a forked child's copy of its parent's counts)."""
        self.counted.clear()
        self.observed.clear()

    def add_up(self) -> None:
        """Add what was noted so far to the series; what is noted meanwhile waits for the next call."""
        counted, observed = self.counted, self.observed
        totals: dict[Counter | Gauge, float] = {}
        take = counted.popleft
        for _ in range(len(counted)):
            series, amount = take()
            totals[series] = totals.get(series, 0.0) + amount
        sums: dict[Histogram, float] = {}
        buckets: dict[tuple[Histogram, int], int] = {}
        take_observed = observed.popleft
        for _ in range(len(observed)):
            histogram, amount = take_observed()
            sums[histogram] = sums.get(histogram, 0.0) + amount
            bucket = histogram, bisect_left(histogram._upper_bounds, amount)  # the first bound >= amount
            buckets[bucket] = buckets.get(bucket, 0) + 1
        for series, total in totals.items():
            if total:
                series.inc(total)
        for histogram, total in sums.items():
            histogram._sum.inc(total)
        for (histogram, index), n in buckets.items():
            histogram._buckets[index].inc(n)
