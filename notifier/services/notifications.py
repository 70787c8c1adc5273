"""Accepting, showing and cancelling notifications (async, for the API)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio.to_thread

from notifier.channels import check_configured
from notifier.domain import (
    Attempt,
    Channel,
    DeadLetterFilter,
    NewNotification,
    Notification,
    NotificationFilter,
    Status,
    check_transition,
    validate,
)
from notifier.errors import IdempotencyConflict, InvalidTransition, NotificationNotFound
from notifier.services import Enqueue, delay_ms, now
from notifier.settings import Settings
from notifier.store import notifications as store

logger = logging.getLogger("notifier.services")


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
        check_configured(new.channel, self.configured)
        current = now()
        due = new.send_at is None or new.send_at <= current
        stored = await store.insert(new, status=Status.QUEUED if due else Status.SCHEDULED, now=current)
        if stored is None:
            assert new.idempotency_key is not None
            return await self._replay(new)
        await self.enqueue_due([stored], current)
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

    async def enqueue_due(self, stored: Sequence[Notification], current: datetime) -> None:
        horizon = current + timedelta(seconds=self.settings.delivery.schedule_horizon)
        items = [(n.id, delay_ms(n.send_at, current)) for n in stored if n.send_at is None or n.send_at <= horizon]
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

    async def retry(self, notification_id: uuid.UUID) -> Notification:
        """Replay one failed notification: new attempts on the same notification."""
        replayed = await store.replay(DeadLetterFilter(), ids=[notification_id], now=now(), limit=1)
        if not replayed:
            current = await self.get(notification_id)
            raise InvalidTransition(current.status, Status.QUEUED)
        await self.enqueue_due(replayed, now())
        logger.info("notification replayed", extra={"notification_id": str(notification_id)})
        return replayed[0]

    async def replay(self, filters: DeadLetterFilter, *, limit: int) -> list[Notification]:
        """Replay up to ``limit`` failed notifications matching ``filters``, most recently failed first."""
        replayed = await store.replay(filters, ids=None, now=now(), limit=limit)
        await self.enqueue_due(replayed, now())
        if replayed:
            logger.info("dead letters replayed", extra={"count": len(replayed)})
        return replayed

    async def dead_letters(
        self, filters: DeadLetterFilter, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Notification]:
        return await store.dead_letters(filters, after=after, limit=limit)

    async def cancel(self, notification_id: uuid.UUID) -> Notification:
        cancelled = await store.transition(notification_id, Status.CANCELLED, now=now())
        if cancelled is not None:
            return cancelled
        current = await self.get(notification_id)
        check_transition(current.status, Status.CANCELLED)
        raise InvalidTransition(current.status, Status.CANCELLED)  # it changed while we looked
