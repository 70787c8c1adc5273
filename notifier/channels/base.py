"""The Channel protocol: every delivery channel sends one notification or raises.

A channel raises :class:`~notifier.errors.TransientDeliveryError` when another attempt may succeed
(timeouts, connection errors, HTTP 429/5xx, SMTP 4xx) and
:class:`~notifier.errors.PermanentDeliveryError` when it never will (HTTP 4xx, SMTP 5xx, a refused
recipient). Channels are called from Dramatiq's worker threads, so they are synchronous, share
nothing mutable between calls, and bound every network call with ``timeout``.
"""

from __future__ import annotations

from typing import Protocol

from notifier.domain import Notification

RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class Channel(Protocol):
    """Sends a notification; returns the provider's message id when it gives one."""

    def send(self, notification: Notification) -> str | None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header given in seconds; ``None`` when absent or a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
