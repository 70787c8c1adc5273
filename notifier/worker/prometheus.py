"""Dramatiq's Prometheus middleware as a worker process runs it: its families, its exposition server
and its counts, with the per-message counts noted on the process's tally
(:mod:`notifier.observability.tally`, added up by :mod:`notifier.observability.multiprocess`).

Dramatiq's middleware looks each series up by (queue, actor) four times a message, each time under
prometheus-client's lock, and counts each message four times: 8 µs of a worker's CPU a message.
:class:`Prometheus` looks a message's series up once, as it starts (kept for up to :data:`SIZE`
pairs: the queues and actors declared, and whatever a skipped message names), keeps them with its
start time for its end, and notes the counts on the tally, which the process's flusher adds up
once a second. It overrides the two hooks that run for every message (``before_process_message``,
``after_process_message`` and its alias ``after_skip_message``), counting in them what Dramatiq's
do (and handing a message failed for good to ``given_up``, which saves the worker a middleware of
its own on every message's hooks), and ``after_worker_shutdown``, to write the last counts before
Dramatiq marks the process dead; ``tests/unit/test_worker_metrics.py`` holds the source of
Dramatiq's three to the version pinned, so that an upgrade that changes them fails there. The rare
hooks (nacks, retries, delays) are Dramatiq's.

Importing this module reads Dramatiq's ``dramatiq_prom_*`` variables (as Dramatiq's module does),
which ``notifier worker`` sets before it starts Dramatiq: import it only where a worker is instrumented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import prometheus

from notifier.observability import multiprocess
from notifier.observability.tally import Counts

SIZE = 128
"""(queue, actor) pairs whose series are kept."""


class Kept(NamedTuple):
    """The series of one (queue, actor) that every message counts on."""

    inprogress: Any
    durations: Any
    total: Any
    errored: Any


class Prometheus(prometheus.Prometheus):
    """Dramatiq's Prometheus middleware, counting every message on ``counts``."""

    def __init__(self, counts: Counts, *, given_up: Callable[[MessageProxy], None] | None = None) -> None:
        super().__init__()
        self.given_up = given_up
        """Called with each message failed for good (Dramatiq's Retries gave up on it), as it ends."""
        self.count = counts.count
        self.observe = counts.observe
        self.kept: dict[tuple[str, str], Kept] = {}
        self.started: dict[int, tuple[int, Kept]] = {}
        """When each message in progress started (Dramatiq's ``message_start_times``), and its series,
        by its proxy (the one object a worker thread hands every hook for a message)."""

    def series(self, message: MessageProxy) -> Kept:
        """The series of ``message``'s queue and actor."""
        key = (message.queue_name, message.actor_name)
        found = self.kept.get(key)
        if found is None:
            found = Kept(
                self.inprogress_messages.labels(*key),
                self.message_durations.labels(*key),
                self.total_messages.labels(*key),
                self.total_errored_messages.labels(*key),
            )
            if len(self.kept) < SIZE:
                self.kept[key] = found
        return found

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.delayed_messages and message.message_id in self.delayed_messages:
            self.delayed_messages.remove(message.message_id)
            self.count(self.inprogress_delayed_messages.labels(message.queue_name, message.actor_name), -1)
        kept = self.series(message)
        self.count(kept.inprogress, 1)
        self.started[id(message)] = (current_millis(), kept)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        now = current_millis()
        found = self.started.pop(id(message), None)
        started, kept = (now, self.series(message)) if found is None else found
        self.observe(kept.durations, now - started)
        self.count(kept.inprogress, -1)
        self.count(kept.total, 1)
        if exception is not None:
            self.count(kept.errored, 1)
            if message.failed and self.given_up is not None:
                self.given_up(message)

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Write what the process has not yet copied to its files, its threads stopped, before
        Dramatiq marks the process dead (which removes its live gauges' file)."""
        multiprocess.flush()
        super().after_worker_shutdown(broker, worker)  # type: ignore[no-untyped-call]
