"""A worker process's metric values: prometheus-client's multiprocess values, counted in memory and
copied to the process's files by one thread, rather than written to the files at every count.

prometheus-client's multiprocess mode writes each count to the process's mmap file under one lock for
the whole process (its comment: "we presume this means there is no threading going on"). A worker
runs 32 threads that count at once, a dozen times a message, and that lock convoys: with 32 threads
counting, a message's counts took 65 to 140 µs rather than 20, and the delivery drain lost 10 to 20 %
to metrics. Here each value counts under a lock of its own, as in prometheus-client's single-process
mode, and a thread of the process copies the values that changed to the files every
:data:`FLUSH_INTERVAL` seconds and once more when the worker stops (:func:`flush`). A scrape sees
counts at most that much late.

The per-message counts of a worker (notifier's delivery families, Dramatiq's Prometheus middleware's)
are not even made on the threads that deliver: they are noted on the process's
:class:`~notifier.observability.tally.Tally`, which the flusher adds up before it copies.

prometheus-client's private names (``values.ValueClass``, ``MultiProcessValue``'s ``_value``,
``_timestamp``, ``_file`` and ``_key``) are used here only, against a pinned minor version, and
``tests/unit/test_multiprocess.py`` checks them against the library's own collector.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from prometheus_client import values

from notifier.observability.tally import Counts, Direct, Tally

FLUSH_INTERVAL = 1.0
"""Seconds between two copies of the counts to the files."""


class Flusher:
    """Copies this process's buffered values to their files, every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.values: list[Any] = []
        self.tally = Tally()
        self.lock = threading.Lock()
        """Held to write the files: while a value is made (which may grow its file) and while copying."""
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def add(self, value: Any) -> None:
        self.values.append(value)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="metrics-flusher", daemon=True)
            self.thread.start()

    def flush(self) -> None:
        with self.lock:
            self.tally.add_up()
            for value in self.values:
                value.write()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.flush()

    def _forked(self) -> None:
        """A forked child has no flusher thread and may hold a copy of a lock taken at the fork: its
        own counting starts afresh (prometheus-client reopens its files for the child's pid)."""
        self.lock = threading.Lock()
        self.tally.clear()
        self.thread = None
        self.pid = os.getpid()


_flusher: Flusher | None = None


def install(interval: float = FLUSH_INTERVAL) -> None:
    """Make every metric value this process creates from now on a buffered multiprocess one.

    Called in each worker process before any metric exists; nothing changes unless prometheus-client
    is in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set as it was imported), nor the second time."""
    global _flusher
    if _flusher is not None or not getattr(values.ValueClass, "_multiprocess", False):
        return
    flusher = _flusher = Flusher(interval)
    base: Any = values.MultiProcessValue()  # type: ignore[no-untyped-call]

    class BufferedValue(base):  # type: ignore[misc]
        """A multiprocess value whose counts go to its file when :class:`Flusher` copies them."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with flusher.lock:
                super().__init__(*args, **kwargs)
            self._count_lock = threading.Lock()
            self._written = (self._value, self._timestamp)
            flusher.add(self)

        def inc(self, amount: float) -> None:
            with self._count_lock:
                self._value += amount
                self._timestamp = 0.0

        def set(self, value: float, timestamp: float | None = None) -> None:
            with self._count_lock:
                self._value = value
                self._timestamp = timestamp or 0.0

        def get(self) -> float:
            with self._count_lock:
                return float(self._value)

        def write(self) -> None:
            """Copy the value to the file if it changed (with :attr:`Flusher.lock` held)."""
            with self._count_lock:
                current = (self._value, self._timestamp)
            if current != self._written:
                self._file.write_value(self._key, *current)
                self._written = current

    values.ValueClass = BufferedValue
    atexit.register(flush)


def counts() -> Counts:
    """How this process counts: on the flusher's tally once :func:`install` took effect, else at once."""
    return _flusher.tally if _flusher is not None and _flusher.pid == os.getpid() else Direct()


def flush() -> None:
    """Copy every count not yet written to the files (a worker process that stops calls this)."""
    if _flusher is not None and _flusher.pid == os.getpid():
        _flusher.flush()
