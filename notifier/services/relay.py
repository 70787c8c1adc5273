"""The outbox relay (sync): puts on Redis what PostgreSQL holds and Redis does not.

It runs in ``notifier scheduler``, when the next scheduled notification falls due and at least
every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL``: it promotes scheduled notifications as they come
within the horizon (by default, as they fall due), enqueues what the API could not
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

MIN_WAIT = 0.005
"""The shortest pause between passes (the database's clock and this one may differ a little)."""


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
        """Relay until ``stop`` is set: again as soon as the next scheduled notification falls due,
        and at least every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL``."""
        interval = self.settings.delivery.outbox_interval
        horizon = timedelta(seconds=self.settings.delivery.schedule_horizon)
        while not stop.is_set():
            wait = interval
            try:
                while self.relay_once() == RELAY_BATCH and not stop.is_set():
                    pass
                upcoming = outbox.next_due(self.pool, horizon=horizon)
                if upcoming is not None:
                    wait = min(interval, max(upcoming, MIN_WAIT))
            except Exception as exc:
                logger.warning("outbox relay pass failed; will try again", extra={"error": repr(exc)})
            stop.wait(wait)
