"""The outbox relay (sync): puts on Redis what PostgreSQL holds and Redis does not.

It runs in ``notifier scheduler``. Whenever the next scheduled notification comes within the
horizon (by default: falls due) it enqueues the scheduled ones; every
``NOTIFIER_DELIVERY_OUTBOX_INTERVAL`` it also enqueues what the API could not
(Redis was away) and what rules fired, and re-enqueues what Redis lost or a dead worker held.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from notifier.observability import metrics, tracing
from notifier.services import Enqueue, delay_ms, now
from notifier.settings import Settings
from notifier.store import outbox
from notifier.store.delivery import Pool

logger = logging.getLogger("notifier.services.relay")

RELAY_GRACE = timedelta(seconds=2)
"""How long a fresh row is left to the API's own enqueue before the relay takes it over."""

RELAY_BATCH = 500

MIN_WAIT = 0.005
"""The shortest pause between passes (the database's clock and this one may differ a little)."""


class Relay:
    def __init__(self, settings: Settings, pool: Pool, enqueue: Enqueue) -> None:
        self.settings = settings
        self.pool = pool
        self._enqueue = enqueue

    def relay_once(self, current: datetime | None = None) -> int:
        """One full pass (everything the outbox holds for Redis); how many it enqueued."""
        return self._pass(outbox.relay, current)

    def relay_scheduled(self, current: datetime | None = None) -> int:
        """One pass over scheduled notifications only (those come within the horizon)."""
        return self._pass(outbox.relay_scheduled, current)

    def _pass(self, take: outbox.Take, current: datetime | None) -> int:
        current = current or now()
        delivery = self.settings.delivery

        def enqueue(pending: list[outbox.Pending]) -> None:
            # Linked, not parented: each row was created in a trace of its own (a request, a firing).
            with tracing.linked(
                "relay notifications", (p.trace_parent for p in pending), **{"notifier.relay.count": len(pending)}
            ):
                self._enqueue([(p.id, delay_ms(p.send_at, current)) for p in pending])

        done = take(
            self.pool,
            enqueue,
            outbox.Window(
                now=current,
                horizon=timedelta(seconds=delivery.schedule_horizon),
                grace=RELAY_GRACE,
                requeue_after=timedelta(seconds=delivery.requeue_after),
                retry_allowance=timedelta(seconds=self.settings.retry.max_backoff),
                lease=timedelta(seconds=delivery.lease),
                limit=RELAY_BATCH,
            ),
        )
        metrics.relayed(done.reasons)
        for notification_id, reason in done.failed.items():
            logger.error(
                "notification failed: its row cannot be relayed",
                extra={"notification_id": str(notification_id), "error": reason},
            )
        if done.enqueued:
            logger.info("outbox relay enqueued notifications", extra={"count": done.enqueued})
        return done.enqueued

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set: a full pass every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL``, and
        a pass over scheduled notifications whenever the next one falls due (both cheap queries
        whatever the backlog, on their own indexes)."""
        interval = self.settings.delivery.outbox_interval
        horizon = timedelta(seconds=self.settings.delivery.schedule_horizon)
        next_full = time.monotonic()
        while not stop.is_set():
            wait = interval
            try:
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + interval
                    take = self.relay_once
                else:
                    take = self.relay_scheduled
                while take() == RELAY_BATCH and not stop.is_set():
                    pass
                wait = next_full - time.monotonic()
                upcoming = outbox.next_due(self.pool, horizon=horizon)
                if upcoming is not None:
                    wait = min(wait, upcoming)
                wait = max(wait, MIN_WAIT)
            except Exception as exc:
                logger.warning("outbox relay pass failed; will try again", extra={"error": repr(exc)})
            stop.wait(wait)
