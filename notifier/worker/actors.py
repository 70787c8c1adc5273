"""The actors: thin, they take an id and call a service.

Importing this module (as ``notifier worker`` does) reads the settings, builds the broker and sets
it as Dramatiq's global broker *before* the actors below are declared, because Dramatiq binds an
actor to the global broker when it is declared.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage

from notifier import channels
from notifier import settings as settings_module
from notifier.domain import Notification
from notifier.observability import configure_logging
from notifier.services.delivery import Dispatcher, NotDue, RetryLater
from notifier.store import delivery as delivery_store
from notifier.worker.broker import (
    DEAD_LETTER_STREAM_LENGTH,
    DELIVER_ACTOR,
    DELIVERY_QUEUE,
    build,
    dead_letter_stream,
)

settings = settings_module.load()
configure_logging(settings.log.level)
broker = build(settings)
dramatiq.set_broker(broker)
logger = logging.getLogger("notifier.worker")

_lock = threading.Lock()
_pool: delivery_store.Pool | None = None
_dispatcher: Dispatcher | None = None


def pool() -> delivery_store.Pool:
    """This process's database pool, opened on first use (after Dramatiq has forked the process)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = delivery_store.open_pool(settings.database.url, size=settings.database.pool_size)
        return _pool


def dispatcher() -> Dispatcher:
    """This process's dispatcher, with one instance of each configured channel."""
    global _dispatcher
    shared = pool()
    with _lock:
        if _dispatcher is None:
            _dispatcher = Dispatcher(settings, shared, channels.build(settings))
        return _dispatcher


class OpenOnBoot(dramatiq.Middleware):
    """Opens the database pool and the channels as a worker process boots, before its consumers
    start: done on the first delivery instead, it held up the deliveries of the first 1-2 seconds
    after a start under load (mostly importing the channels' libraries)."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        try:
            dispatcher()
        except Exception as exc:  # the first delivery opens them instead, and reports why it cannot
            logger.warning("could not open the database pool at boot", extra={"error": repr(exc)})


broker.add_middleware(OpenOnBoot())


@dramatiq.actor(actor_name=DELIVER_ACTOR, queue_name=DELIVERY_QUEUE)
def deliver_notification(notification_id: str) -> None:
    """Make one delivery attempt for the notification with this id."""
    try:
        result = dispatcher().deliver(uuid.UUID(notification_id))
    except RetryLater as exc:
        # Retry is Dramatiq's quiet way to ask for another attempt, after the channel's backoff.
        raise dramatiq.Retry(exc.reason, delay=exc.delay_ms) from exc
    if isinstance(result, NotDue):
        deliver_notification.send_with_options(args=(notification_id,), delay=result.delay_ms)
    elif result.kind == "failed" and result.notification is not None:
        dead_letter(result.notification, result.reason or "")


def dead_letter(notification: Notification, reason: str) -> None:
    """Move the message to Dramatiq's dead-letter queue and append the failure to the stream."""
    message = CurrentMessage.get_current_message()
    if isinstance(message, MessageProxy):  # what the worker actually runs
        message.fail()
    broker.client.xadd(
        dead_letter_stream(settings),
        {
            "notification_id": str(notification.id),
            "channel": notification.channel.value,
            "recipient": notification.recipient,
            "attempts": str(notification.attempts),
            "error": reason,
            "failed_at": datetime.now(UTC).isoformat(),
        },
        maxlen=DEAD_LETTER_STREAM_LENGTH,
        approximate=True,
    )
