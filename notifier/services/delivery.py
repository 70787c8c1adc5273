"""Delivering one notification (sync, for the worker's threads)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Literal

from notifier.channels.base import Channel as ChannelImpl
from notifier.domain import Channel, Notification, Status
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.settings import Settings
from notifier.store import delivery as delivery_store

logger = logging.getLogger("notifier.services")


@dataclass(frozen=True)
class Delivered:
    kind: Literal["sent", "failed", "skipped"]


@dataclass(frozen=True)
class NotDue:
    """The message came early (clock skew, a short delay); deliver again after ``delay_ms``."""

    delay_ms: int


class Dispatcher:
    """The worker's use case: claim one notification, make one attempt, record what happened.

    A transient failure with attempts left marks the notification ``retrying`` and re-raises
    :class:`TransientDeliveryError`, for Dramatiq's Retries middleware to schedule the next
    attempt. A permanent failure, or the last attempt, marks it ``failed`` and returns.
    """

    def __init__(self, settings: Settings, pool: delivery_store.Pool, channels: dict[Channel, ChannelImpl]) -> None:
        self.settings = settings
        self.pool = pool
        self.channels = channels

    def deliver(self, notification_id: uuid.UUID) -> Delivered | NotDue:
        notification = delivery_store.claim(self.pool, notification_id, lease=self.settings.delivery.lease)
        if notification is None:
            return self._unclaimed(notification_id)
        number = notification.attempts
        log = {"notification_id": str(notification.id), "channel": notification.channel, "attempt": number}
        channel = self.channels.get(notification.channel)
        try:
            if channel is None:
                raise PermanentDeliveryError(f"channel {notification.channel!r} is not configured on this worker")
            provider_message_id = channel.send(notification)
        except PermanentDeliveryError as exc:
            self._fail(notification, number, exc.outcome, exc.reason, log)
            return Delivered("failed")
        except TransientDeliveryError as exc:
            if number >= self.settings.retry.max_attempts:
                self._fail(notification, number, exc.outcome, exc.reason, log)
                return Delivered("failed")
            self._retry(notification, number, exc.outcome, exc.reason, log)
            raise
        except BaseException as exc:
            # Dramatiq's TimeLimit interrupts a hung call with an exception of its own; anything
            # unexpected is recorded too, and the message is retried by the middleware.
            outcome = "timeout" if "TimeLimit" in type(exc).__name__ else "error"
            reason = f"{type(exc).__name__}: {exc}"
            if number >= self.settings.retry.max_attempts:
                self._fail(notification, number, outcome, reason, log)
                return Delivered("failed")
            self._retry(notification, number, outcome, reason, log)
            raise
        delivery_store.finish(
            self.pool,
            notification.id,
            number=number,
            status=Status.SENT,
            outcome="sent",
            provider_message_id=provider_message_id,
        )
        logger.info("notification sent", extra={**log, "provider_message_id": provider_message_id})
        return Delivered("sent")

    def _unclaimed(self, notification_id: uuid.UUID) -> Delivered | NotDue:
        state = delivery_store.status_of(self.pool, notification_id)
        if state is None:
            logger.warning(
                "message for an unknown notification dropped", extra={"notification_id": str(notification_id)}
            )
            return Delivered("skipped")
        status, wait = state
        if status in (Status.SCHEDULED, Status.QUEUED) and wait > 0:
            return NotDue(int(wait * 1000) + 1)
        logger.info(
            "notification not claimable, message dropped",
            extra={"notification_id": str(notification_id), "status": status},
        )
        return Delivered("skipped")

    def _retry(
        self, notification: Notification, number: int, outcome: str, reason: str, log: dict[str, object]
    ) -> None:
        delivery_store.finish(
            self.pool, notification.id, number=number, status=Status.RETRYING, outcome=outcome, error=reason
        )
        logger.warning("delivery attempt failed; will retry", extra={**log, "outcome": outcome, "error": reason})

    def _fail(self, notification: Notification, number: int, outcome: str, reason: str, log: dict[str, object]) -> None:
        delivery_store.finish(
            self.pool, notification.id, number=number, status=Status.FAILED, outcome=outcome, error=reason
        )
        logger.error("notification failed", extra={**log, "outcome": outcome, "error": reason})
