"""Storing a notification through the real accept path, for tests that then drive delivery themselves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from notifier.domain import Channel, NewNotification, Notification
from notifier.services.notifications import Notifications
from notifier.settings import Settings


def accept(
    settings: Settings, new: NewNotification, enqueue: Callable[[Sequence[tuple[uuid.UUID, int]]], None] | None = None
) -> Notification:
    """Store a notification through the real accept path (``enqueue`` stands in for Redis); returns it."""

    async def enqueue_async(items: Sequence[tuple[uuid.UUID, int]]) -> None:
        if enqueue is not None:
            enqueue(items)

    async def run() -> Notification:
        service = Notifications(settings, enqueue_async, frozenset(Channel))
        await service.start()
        try:
            return (await service.accept(new)).notification
        finally:
            await service.stop()

    return asyncio.run(run())
