"""The use cases: accept, look up, cancel, relay (async, for the API) and deliver (sync, for workers).

Both the API and the actors go through here. PostgreSQL is the source of truth and is written
first; Redis only carries ids. Anything that puts work on Redis goes through an injected
``Enqueue`` callable, so this module knows no broker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio.to_thread

from notifier.channels.base import Channel as ChannelImpl
from notifier.domain import (
    Attempt,
    Channel,
    NewNotification,
    Notification,
    NotificationFilter,
    Status,
    check_transition,
    validate,
)
from notifier.errors import (
    ChannelNotConfigured,
    IdempotencyConflict,
    InvalidTransition,
    NotificationNotFound,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from notifier.store import notifications as store
from notifier.store import outbox

logger = logging.getLogger("notifier.services")

Enqueue = Callable[[Sequence[tuple[uuid.UUID, int]]], None]
"""Puts ``(notification id, delay in ms)`` pairs on the delivery queue; blocking, may raise."""

RELAY_GRACE = timedelta(seconds=2)
"""How long a fresh row is left to the API's own enqueue before the relay takes it over."""

RELAY_BATCH = 500


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Accepted:
    notification: Notification
    created: bool
    """``False`` when an earlier request with the same idempotency key is being answered again."""


class Notifications:
    """The API's use cases. ``configured`` lists the channels this deployment can deliver on."""

    def __init__(self, settings: Settings, enqueue: Enqueue, configured: frozenset[Channel]) -> None:
        self.settings = settings
        self._enqueue = enqueue
        self.configured = configured

    async def start(self) -> None:
        """Open the database pool."""
        await store.connect(self.settings.database.url, pool_size=self.settings.database.pool_size)

    async def stop(self) -> None:
        await store.disconnect()

    async def accept(self, new: NewNotification) -> Accepted:
        """Validate, store (committed), then enqueue; a failed enqueue is left to the relay."""
        new = validate(new)
        if new.channel not in self.configured:
            raise ChannelNotConfigured(new.channel, _CHANNEL_SETTING.get(new.channel, ""))
        current = now()
        due = new.send_at is None or new.send_at <= current
        stored = await store.insert(new, status=Status.QUEUED if due else Status.SCHEDULED, now=current)
        if stored is None:
            assert new.idempotency_key is not None
            return await self._replay(new)
        await self._try_enqueue([stored], current)
        return Accepted(stored, created=True)

    async def _replay(self, new: NewNotification) -> Accepted:
        assert new.idempotency_key is not None
        found = await store.get_by_idempotency_key(new.idempotency_key)
        if found is None:  # the holder of the key was deleted in between
            return await self.accept(new)
        existing, fingerprint = found
        if fingerprint != new.fingerprint():
            raise IdempotencyConflict(new.idempotency_key)
        return Accepted(existing, created=False)

    async def _try_enqueue(self, stored: Sequence[Notification], current: datetime) -> None:
        horizon = current + timedelta(seconds=self.settings.delivery.schedule_horizon)
        items = [(n.id, _delay_ms(n.send_at, current)) for n in stored if n.send_at is None or n.send_at <= horizon]
        if not items:
            return
        try:
            await anyio.to_thread.run_sync(self._enqueue, items)
        except Exception as exc:
            logger.warning(
                "enqueue failed; the outbox relay will retry",
                extra={"notification_ids": [str(i) for i, _ in items], "error": repr(exc)},
            )
            return
        await store.mark_enqueued([i for i, _ in items], now=current)

    async def get(self, notification_id: uuid.UUID) -> Notification:
        found = await store.get(notification_id)
        if found is None:
            raise NotificationNotFound(notification_id)
        return found

    async def attempts(self, notification_id: uuid.UUID) -> list[Attempt]:
        return await store.attempts(notification_id)

    async def page(
        self, filters: NotificationFilter, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Notification]:
        return await store.page(filters, after=after, limit=limit)

    async def ready(self) -> None:
        """Raise unless PostgreSQL answers."""
        await store.ping()

    async def cancel(self, notification_id: uuid.UUID) -> Notification:
        cancelled = await store.transition(notification_id, Status.CANCELLED, now=now())
        if cancelled is not None:
            return cancelled
        current = await self.get(notification_id)
        check_transition(current.status, Status.CANCELLED)
        raise InvalidTransition(current.status, Status.CANCELLED)  # it changed while we looked

    async def relay_once(self) -> int:
        """Enqueue what PostgreSQL holds and Redis does not; returns how many were enqueued."""
        current = now()
        delivery = self.settings.delivery

        async def enqueue(pending: list[outbox.Pending]) -> None:
            items = [(p.id, _delay_ms(p.send_at, current)) for p in pending]
            await anyio.to_thread.run_sync(self._enqueue, items)

        count = await outbox.relay(
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

    async def relay_forever(self) -> None:
        """Run :meth:`relay_once` every ``NOTIFIER_DELIVERY_OUTBOX_INTERVAL`` until cancelled."""
        interval = self.settings.delivery.outbox_interval
        while True:
            try:
                while await self.relay_once() == RELAY_BATCH:
                    pass
            except Exception as exc:
                logger.warning("outbox relay pass failed; will try again", extra={"error": repr(exc)})
            await asyncio.sleep(interval)


_CHANNEL_SETTING = {Channel.EMAIL: "NOTIFIER_SMTP_URL", Channel.SMS: "NOTIFIER_SMS_BASE_URL"}


def _delay_ms(send_at: datetime | None, current: datetime) -> int:
    if send_at is None:
        return 0
    return max(0, int((send_at - current).total_seconds() * 1000))


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
