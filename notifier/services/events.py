"""Events (async, for the API): store one, fan it out to the enabled rules for its type."""

from __future__ import annotations

import functools
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import msgspec

from notifier.domain import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    Event,
    NewEvent,
    Notification,
    Status,
    check_text,
    materialise,
)
from notifier.domain.rules import EVENT_TYPE
from notifier.errors import EventNotFound, IdempotencyConflict, InvalidNotification
from notifier.observability import metrics, tracing
from notifier.services import now
from notifier.services.notifications import Notifications
from notifier.store import events as store
from notifier.store import notifications as notification_store
from notifier.store import rules as rule_store

logger = logging.getLogger("notifier.services.events")

MAX_DATA_BYTES = 65_536
RENDER_THREADS = 1
"""Renders of event rules at once: each holds the GIL while it runs, so few leave the API's loop free."""


@dataclass(frozen=True)
class Published:
    event: Event
    notifications: list[Notification]
    created: bool
    """``False`` when an earlier request with the same idempotency key is being answered again."""


def validate_event(new: NewEvent) -> None:
    check_text("type", new.type)
    if not EVENT_TYPE.match(new.type):
        raise InvalidNotification("type", "must be 1-200 letters, digits, '_', '.', ':' or '-'")
    data = msgspec.json.encode(new.data)
    if len(data) > MAX_DATA_BYTES:
        raise InvalidNotification("data", f"must encode to at most {MAX_DATA_BYTES} bytes of JSON")
    if b"\\u0000" in data:
        raise InvalidNotification("data", "must not contain NUL characters")
    if new.idempotency_key is not None:
        check_text("idempotency_key", new.idempotency_key)
        if not 1 <= len(new.idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            raise InvalidNotification("idempotency_key", f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")


class Events:
    """Events: each is stored with the notifications its rules make, rendered beforehand.

    Rules' templates are rendered in worker threads, :data:`RENDER_THREADS` at a time (a render
    holds the GIL, so more would slow the API's loop further) and each within the render
    budget, while no database connection is held: the rules are read,
    the connection goes back to the pool, the templates are rendered, and only then is the
    transaction opened that stores the event and its notifications.
    """

    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications
        self.budget = notifications.settings.template.render_budget
        self._limiter: anyio.CapacityLimiter | None = None

    async def publish(self, new: NewEvent) -> Published:
        """Store the event and its notifications in one transaction, then enqueue them.

        The same idempotency key never fans out twice: the event is inserted first, and a key
        already taken answers with what the first request produced.
        """
        validate_event(new)
        if new.idempotency_key is not None and await store.get_by_idempotency_key(new.idempotency_key):
            return await self._replay(new)
        current = now()
        event_id = uuid.uuid4()
        context: dict[str, Any] = {
            "event": {"id": str(event_id), "type": new.type, "created_at": current.isoformat()},
            "data": new.data,
        }
        rendered = []
        for rule in await rule_store.for_event(new.type, now=current):
            key = f"event:{event_id}:rule:{rule.id}"
            made_all = await anyio.to_thread.run_sync(
                functools.partial(
                    materialise,
                    rule,
                    context=context,
                    key=key,
                    send_at=None,
                    budget=self.budget,
                    policy=self.notifications.policy,
                ),
                limiter=self._render_limiter(),
            )
            rendered.append((rule, made_all))
        trace_parent = tracing.traceparent()
        async with store.transaction():  # type: ignore[attr-defined]
            event = await store.insert(new, now=current, event_id=event_id)
            if event is None:
                return await self._replay(new)
            created: list[Notification] = []
            for rule, made_all in rendered:
                for made in made_all:
                    stored = await notification_store.insert(
                        made.notification,
                        status=Status.FAILED if made.failure else Status.QUEUED,
                        now=current,
                        last_error=made.failure,
                        rule_id=rule.id,
                        event_id=event.id,
                        trace_parent=trace_parent,
                    )
                    if stored is not None:
                        created.append(stored)
                    if made.failure:
                        logger.error(
                            "event rule failed",
                            extra={"event_id": str(event.id), "rule_id": str(rule.id), "error": made.failure},
                        )
        queued = [n for n in created if n.status is Status.QUEUED]
        for channel, count in Counter(n.channel for n in queued).items():
            metrics.accepted(channel, "event", count)
        await self.notifications.enqueue_due(queued, current)
        return Published(event, created, created=True)

    def _render_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created on first use, inside the event loop
            self._limiter = anyio.CapacityLimiter(RENDER_THREADS)
        return self._limiter

    async def _replay(self, new: NewEvent) -> Published:
        assert new.idempotency_key is not None
        found = await store.get_by_idempotency_key(new.idempotency_key)
        if found is None:
            raise IdempotencyConflict(new.idempotency_key)
        event, fingerprint = found
        if fingerprint != new.fingerprint():
            raise IdempotencyConflict(new.idempotency_key)
        return Published(event, await notification_store.for_event(event.id), created=False)

    async def get(self, event_id: uuid.UUID) -> tuple[Event, list[Notification]]:
        event = await store.get(event_id)
        if event is None:
            raise EventNotFound(event_id)
        return event, await notification_store.for_event(event_id)
