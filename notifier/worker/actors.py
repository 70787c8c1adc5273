"""The actors: thin, they take an id and call a service."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import dramatiq

from notifier import channels
from notifier.errors import TransientDeliveryError
from notifier.services import Dispatcher, NotDue
from notifier.store import delivery as delivery_store
from notifier.worker.broker import DELIVERY_QUEUE, settings

_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    """This process's dispatcher, built on first use (after Dramatiq has forked the process)."""
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            pool = delivery_store.open_pool(settings.database.url, size=settings.database.pool_size)
            _dispatcher = Dispatcher(settings, pool, channels.build(settings))
        return _dispatcher


@dramatiq.actor(actor_name="deliver_notification", queue_name=DELIVERY_QUEUE)
def deliver_notification(notification_id: str) -> None:
    """Make one delivery attempt for the notification with this id."""
    try:
        result = dispatcher().deliver(uuid.UUID(notification_id))
    except TransientDeliveryError as exc:
        # Retry is Dramatiq's quiet way to ask for another attempt; without a delay of its own
        # (the provider's Retry-After), the Retries middleware backs off exponentially, with jitter.
        delay = None if exc.retry_after is None else int(exc.retry_after * 1000)
        raise dramatiq.Retry(exc.reason, delay=delay) from exc
    if isinstance(result, NotDue):
        deliver_notification.send_with_options(args=(notification_id,), delay=result.delay_ms)


def enqueue(items: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Put ``(id, delay in ms)`` pairs on the delivery queue, in one Redis round trip per message."""
    for notification_id, delay_ms in items:
        deliver_notification.send_with_options(args=(str(notification_id),), delay=delay_ms or None)
