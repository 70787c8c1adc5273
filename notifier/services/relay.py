"""The outbox relay (sync): puts on Redis what PostgreSQL holds and Redis does not.

It runs in ``notifier scheduler``, every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL``: it promotes
far-future notifications as they come within the horizon, enqueues what the API could not
(Redis was away) and what rules fired, and re-enqueues what Redis lost or a dead worker held.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from notifier.services import Enqueue, delay_ms, now
from notifier.settings import Settings
from notifier.store import outbox
from notifier.store.delivery import Pool

logger = logging.getLogger("notifier.services.relay")

RELAY_GRACE = timedelta(seconds=2)
"""How long a fresh row is left to the API's own enqueue before the relay takes it over."""

RELAY_BATCH = 500


class Relay:
    def __init__(self, settings: Settings, pool: Pool, enqueue: Enqueue) -> None:
        self.settings = settings
        self.pool = pool
        self._enqueue = enqueue

    def relay_once(self, current: datetime | None = None) -> int:
        """One pass; returns how many notifications it enqueued."""
        current = current or now()
        delivery = self.settings.delivery

        def enqueue(pending: list[outbox.Pending]) -> None:
            self._enqueue([(p.id, delay_ms(p.send_at, current)) for p in pending])

        count = outbox.relay(
            self.pool,
            enqueue,
            now=current,
            horizon=timedelta(seconds=delivery.schedule_horizon),
            grace=RELAY_GRACE,
            requeue_after=timedelta(seconds=delivery.requeue_after),
            retry_allowance=timedelta(seconds=self.settings.retry.max_backoff),
            lease=timedelta(seconds=delivery.lease),
            limit=RELAY_BATCH,
        )
        if count:
            logger.info("outbox relay enqueued notifications", extra={"count": count})
        return count

    def run(self, stop: threading.Event) -> None:
        """Relay every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                while self.relay_once() == RELAY_BATCH and not stop.is_set():
                    pass
            except Exception as exc:
                logger.warning("outbox relay pass failed; will try again", extra={"error": repr(exc)})
            stop.wait(self.settings.delivery.outbox_interval)
