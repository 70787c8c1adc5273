"""Counting without counting at once: counts noted by the code that counts, each thread on a shard of
its own, and added to their series later, by one thread, in a batch.

prometheus-client counts each ``inc`` and ``observe`` under a lock, and an ``observe`` walks the
histogram's bounds in Python: for a worker, a dozen counts a message, spread over 32 threads, and
18 µs of its CPU a message. Noted on a :class:`Tally`, a count adds to a running total in a plain
dict of the thread's own (no lock: a shard has one writer), and a histogram's observation to its
sum and to one bucket found by ``bisect``. :meth:`Tally.add_up` then reads every shard and makes one
``inc`` per series and per bucket that moved, by what it moved since the last call: its work grows
with the series a process counts, not with the counts, and nothing noted outlives a count (no
queue of notes for the garbage collector to walk). A worker process adds up once a second, as it
copies its counts to its multiprocess files (:mod:`notifier.observability.multiprocess`); the API
at each scrape.

A histogram's private names (``_upper_bounds``, ``_buckets``, ``_sum``) are used here only, against
the pinned minor version of prometheus-client; ``tests/unit/test_tally.py`` holds a tally's
exposition equal to counting at once.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
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


class Shard:
    """One thread's counts: running totals written by that thread only, and what of them
    :meth:`add_up` (under the tally's lock) has already added to the series."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.counted: dict[Counter | Gauge, float] = {}
        self.observed: dict[Histogram, list[float]] = {}
        """Per histogram: the sum of what it observed, then the observations in each bucket."""
        self._added: dict[Counter | Gauge, float] = {}
        self._added_observed: dict[Histogram, list[float]] = {}

    def add_up(self) -> None:
        # Copied first: the copies are made in C, so the writing thread cannot change them halfway.
        for series, total in list(self.counted.items()):
            moved = total - self._added.get(series, 0)
            if moved:
                series.inc(moved)
                self._added[series] = total
        for histogram, noted in list(self.observed.items()):
            now = list(noted)
            before = self._added_observed.get(histogram) or [0.0] * len(now)
            if now[0] != before[0]:
                histogram._sum.inc(now[0] - before[0])
            buckets = histogram._buckets
            for index in range(1, len(now)):
                if now[index] != before[index]:
                    buckets[index - 1].inc(now[index] - before[index])
            self._added_observed[histogram] = now


class Tally:
    """Counts noted by any thread and added to their series by one (:meth:`add_up`): exact, with one
    ``inc`` per series and bucket for all that was noted since the last call. A histogram's sum and
    its buckets are added as read, so for up to one call a scrape may see an observation in its sum
    and not yet in its bucket."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._shards: list[Shard] = []
        self._adding = threading.Lock()

    def _shard(self) -> Shard:
        shard = Shard(threading.current_thread())
        self._local.counted = shard.counted
        self._local.observed = shard.observed
        self._shards.append(shard)
        return shard

    def count(self, series: Counter | Gauge, amount: float) -> None:
        try:
            counted = self._local.counted
        except AttributeError:
            counted = self._shard().counted
        counted[series] = counted.get(series, 0) + amount

    def observe(self, series: Histogram, amount: float) -> None:
        try:
            observed = self._local.observed
        except AttributeError:
            observed = self._shard().observed
        bounds = series._upper_bounds
        noted = observed.get(series)
        if noted is None:
            noted = observed[series] = [0.0] + [0] * len(bounds)
        noted[0] += amount
        noted[1 + bisect_left(bounds, amount)] += 1  # the first bound >= amount

    def held(self) -> int:
        """Series held over all the shards: what a tally's memory grows with (not its counts)."""
        return sum(len(shard.counted) + len(shard.observed) for shard in list(self._shards))

    def add_up(self) -> None:
        """Add what every thread noted since the last call to the series; a shard whose thread has
        ended is dropped once added up."""
        with self._adding:
            for shard in list(self._shards):
                ended = not shard.thread.is_alive()  # read first: an ended thread notes nothing more
                shard.add_up()
                if ended:
                    self._shards.remove(shard)

    def clear(self) -> None:
        """Forget what was noted and not added up (a forked child's copy of its parent's counts)."""
        self._local = threading.local()
        self._shards = []
        self._adding = threading.Lock()
