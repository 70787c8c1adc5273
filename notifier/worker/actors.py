"""The delivery actor: thin, it takes an id and calls the dispatcher.

Nothing here runs at import. :func:`declare` declares the actor on the broker it is given, with
what it needs passed in; :mod:`notifier.worker.app` does that for ``notifier worker``, and a test
does it on Dramatiq's ``StubBroker``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage

from notifier.domain import Notification
from notifier.observability import metrics
from notifier.services.delivery import Dispatcher, NotDue, RetryLater
from notifier.worker.broker import DEAD_LETTER_STREAM_LENGTH, DELIVER_ACTOR, DELIVERY_QUEUE


class DeadLetterStream:
    """The capped Redis Stream every final failure is appended to (``broker.dead_letter_stream``)."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.name = name

    def append(self, notification: Notification, reason: str) -> None:
        self.client.xadd(
            self.name,
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


def declare(
    broker: dramatiq.Broker, dispatcher: Callable[[], Dispatcher], dead_letters: DeadLetterStream
) -> dramatiq.Actor[[str], None]:
    """Declare ``deliver_notification`` on ``broker``.

    ``dispatcher`` gives the process's dispatcher (opened on first use, after Dramatiq has started
    the process). ``broker`` needs the ``CurrentMessage`` and ``Retries`` middleware, as
    :func:`notifier.worker.broker.build` gives it.
    """

    @dramatiq.actor(broker=broker, actor_name=DELIVER_ACTOR, queue_name=DELIVERY_QUEUE)
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
            dead_letter(dead_letters, result.notification, result.reason or "")

    return deliver_notification


def dead_letter(dead_letters: DeadLetterStream, notification: Notification, reason: str) -> None:
    """Move the message to Dramatiq's dead-letter queue and append the failure to the stream."""
    metrics.delivered(notification.channel, "dead_lettered")
    message = CurrentMessage.get_current_message()
    if isinstance(message, MessageProxy):  # what the worker actually runs
        message.fail()
    dead_letters.append(notification, reason)
