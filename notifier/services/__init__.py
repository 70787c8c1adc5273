"""The use cases, one module each; the one place both the API and the actors go through.

PostgreSQL is the source of truth and is written first; Redis only carries ids. Anything that puts
work on Redis goes through an injected :data:`Enqueue`, so no use case knows the broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

Enqueue = Callable[[Sequence[tuple[uuid.UUID, int]]], None]
"""Puts ``(notification id, delay in ms)`` pairs on the delivery queue; blocking, may raise."""

AsyncEnqueue = Callable[[Sequence[tuple[uuid.UUID, int]]], Awaitable[None]]
"""The same, for the event loop."""


def now() -> datetime:
    return datetime.now(UTC)


def delay_ms(send_at: datetime | None, current: datetime) -> int:
    """Milliseconds from ``current`` until ``send_at``; 0 when due."""
    if send_at is None:
        return 0
    return max(0, int((send_at - current).total_seconds() * 1000))
