"""Accepting, showing and cancelling notifications (async, for the API)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
from notifier.domain.addresses import AddressPolicy
from notifier.errors import (
    IdempotencyConflict,
    InvalidNotification,
    InvalidTransition,
    NotificationNotFound,
    NotifierError,
)
from notifier.observability import metrics, tracing
from notifier.services import AsyncEnqueue, delay_ms, now
from notifier.settings import Settings
from notifier.store import notifications as store

logger = logging.getLogger("notifier.services")

MARK_INTERVAL = 0.05
"""Seconds between the UPDATEs that mark enqueued notifications (well inside the relay's grace)."""


@dataclass(frozen=True)
class Accepted:
    notification: Notification
    created: bool
    """``False`` when an earlier request with the same idempotency key is being answered again."""


class Notifications:
    """The API's use cases. ``configured`` lists the channels this deployment can deliver on;
    ``policy``, built from the settings, the addresses a webhook may reach."""

    def __init__(self, settings: Settings, enqueue: AsyncEnqueue, configured: frozenset[Channel]) -> None:
        self.settings = settings
        self._enqueue = enqueue
        self.configured = configured
        self.policy = AddressPolicy.from_cidrs(settings.webhook.allowed_networks)

    async def start(self) -> None:
        """Open the database pool and start marking enqueued notifications."""
        await store.connect(self.settings.database.url, pool_size=self.settings.database.pool_size)
        self._marks: list[uuid.UUID] = []
        self._marker = asyncio.create_task(self._mark_forever())

    async def stop(self) -> None:
        self._marker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._marker
        await self._flush_marks()
        await store.disconnect()

    async def _mark_forever(self) -> None:
        while True:
            await asyncio.sleep(MARK_INTERVAL)
            await self._flush_marks()

    async def _flush_marks(self) -> None:
        """Record as enqueued, in one UPDATE, what was enqueued since the last flush.

        Deferred, because a notification not yet marked is only at risk of being enqueued a
        second time by the relay (after ``RELAY_GRACE``), which the worker's claim makes harmless.
        """
        if not self._marks:
            return
        ids, self._marks = self._marks, []
        try:
            await store.mark_enqueued(ids, now=now())
        except Exception as exc:
            logger.warning("could not mark notifications enqueued", extra={"count": len(ids), "error": repr(exc)})

    async def accept(self, new: NewNotification) -> Accepted:
        """Validate, store (committed), then enqueue; a failed enqueue is left to the relay."""
        new = validate(new, self.policy)
        check_configured(new.channel, self.configured)
        current = now()
        due = new.send_at is None or new.send_at <= current
        stored = await store.insert(
            new, status=Status.QUEUED if due else Status.SCHEDULED, now=current, trace_parent=tracing.traceparent()
        )
        if stored is None:
            assert new.idempotency_key is not None
            return await self._replay(new)
        metrics.accepted(stored.channel, "api")
        await self.enqueue_due([stored], current)
        return Accepted(stored, created=True)

    async def accept_many(self, batch: Sequence[NewNotification | NotifierError]) -> list[Accepted | NotifierError]:
        """Accept a batch: each item validated and answered on its own, all stored in one statement.

        An item that is already an error (it did not decode) is answered with that error.
        """
        current = now()
        answers: list[Accepted | NotifierError | None] = []
        valid: list[tuple[int, NewNotification]] = []
        for item in batch:
            if isinstance(item, NotifierError):
                answers.append(item)
                continue
            try:
                new = validate(item, self.policy)
                check_configured(new.channel, self.configured)
            except InvalidNotification as exc:
                answers.append(exc)
                continue
            valid.append((len(answers), new))
            answers.append(None)
        if valid:
            news = [new for _, new in valid]
            statuses = [Status.QUEUED if n.send_at is None or n.send_at <= current else Status.SCHEDULED for n in news]
            stored = await store.insert_many(news, statuses, now=current, trace_parent=tracing.traceparent())
            conflicts = [new.idempotency_key for new, s in zip(news, stored, strict=True) if s is None]
            existing = await store.get_by_idempotency_keys([k for k in conflicts if k is not None]) if conflicts else {}
            for (position, new), notification in zip(valid, stored, strict=True):
                if notification is not None:
                    answers[position] = Accepted(notification, created=True)
                    continue
                assert new.idempotency_key is not None
                found = existing.get(new.idempotency_key)
                if found is None or found[1] != new.fingerprint():
                    answers[position] = IdempotencyConflict(new.idempotency_key)
                else:
                    answers[position] = Accepted(found[0], created=False)
            created = [n for n in stored if n is not None]
            for channel, count in Counter(n.channel for n in created).items():
                metrics.accepted(channel, "batch", count)
            await self.enqueue_due(created, current)
        return [a for a in answers if a is not None]

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
            await self._enqueue(items)
        except Exception as exc:
            logger.warning(
                "enqueue failed; the outbox relay will retry",
                extra={"notification_ids": [str(i) for i, _ in items], "error": repr(exc)},
            )
            return
        self._marks.extend(i for i, _ in items)

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

    async def counts(self) -> dict[Status, int]:
        """How many notifications have each status."""
        return await store.count_by_status()

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
