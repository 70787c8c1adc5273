"""Delivering one notification (sync, for the worker's threads)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from notifier.channels.base import Channel as ChannelImpl
from notifier.domain import Channel, Notification, Status
from notifier.errors import PermanentDeliveryError, TransientDeliveryError, UnusableRow
from notifier.observability import metrics, tracing
from notifier.observability.logging import delivery
from notifier.settings import DeliveryPolicy, Settings
from notifier.store.delivery import Deliveries, Outcome, Pool

logger = logging.getLogger("notifier.services")


@dataclass(frozen=True)
class Delivered:
    kind: Literal["sent", "failed", "skipped"]
    notification: Notification | None = field(default=None, compare=False)
    reason: str | None = field(default=None, compare=False)
    """Why it failed, for ``failed``."""


@dataclass(frozen=True)
class NotDue:
    """The message came early (clock skew, a short delay); deliver again after ``delay_ms``."""

    delay_ms: int


class RetryLater(TransientDeliveryError):
    """The attempt failed and another is due after ``delay_ms``; the notification is ``retrying``."""

    def __init__(self, reason: str, *, delay_ms: int) -> None:
        super().__init__(reason)
        self.delay_ms = delay_ms


def backoff_ms(attempt: int, policy: DeliveryPolicy, retry_after: float | None) -> int:
    """The wait before attempt ``attempt + 1``: the provider's Retry-After if it gave one (capped at
    the longest backoff), else exponential from the shortest, with jitter (half to full)."""
    if retry_after is not None:
        return int(min(retry_after, policy.max_backoff) * 1000)
    ceiling = min(policy.max_backoff, policy.min_backoff * 2 ** min(attempt - 1, 32))
    return int(random.uniform(ceiling / 2, ceiling) * 1000)  # noqa: S311 - jitter, not secrecy


class Dispatcher:
    """The worker's use case: claim one notification, make one attempt, record what happened.

    A transient failure with attempts left marks the notification ``retrying`` and raises
    :class:`RetryLater` with the wait before the next attempt (Dramatiq's Retries middleware
    schedules it). A permanent failure, or the last attempt, marks it ``failed`` and returns
    ``Delivered("failed")``. Retry limits and timeouts are the channel's (``Settings.policy``).
    """

    def __init__(self, settings: Settings, pool: Pool, channels: dict[Channel, ChannelImpl]) -> None:
        self.settings = settings
        self.deliveries = Deliveries(pool, lease=settings.delivery.lease)
        self.channels = channels
        self.policies = {c: settings.policy(c.value) for c in Channel}

    def deliver(self, notification_id: uuid.UUID) -> Delivered | NotDue:
        """One attempt; a notification whose row cannot be claimed, read or updated fails alone
        (``Delivered("failed")``, logged once at ERROR) and leaves the others' claims and outcomes be."""
        try:
            return self._deliver(notification_id)
        except UnusableRow as exc:
            logger.error(
                "notification failed: its row cannot be used",
                extra={"notification_id": str(exc.notification_id), "error": exc.reason},
            )
            metrics.delivered(metrics.UNKNOWN_CHANNEL, "abandoned")
            return Delivered("failed", reason=exc.reason)

    def _deliver(self, notification_id: uuid.UUID) -> Delivered | NotDue:
        with tracing.span("claim notification", **{"notifier.notification.id": str(notification_id)}):
            notification = self.deliveries.claim(notification_id)
        if notification is None:
            return self._unclaimed(notification_id)
        with delivery(str(notification.id), notification.attempts):
            tracing.annotate(
                **{
                    "notifier.notification.id": str(notification.id),
                    "notifier.channel": notification.channel.value,
                    "notifier.attempt": notification.attempts,
                }
            )
            return self._attempt(notification)

    def _attempt(self, notification: Notification) -> Delivered:
        """Send the claimed ``notification`` once and record the outcome."""
        number = notification.attempts
        attempt = number - notification.attempt_base
        policy = self.policies[notification.channel]
        log = {"notification_id": str(notification.id), "channel": notification.channel, "attempt": number}
        channel = self.channels.get(notification.channel)
        due = notification.send_at or notification.created_at
        if number == 1:
            metrics.first_attempt(notification.channel, _since(due))
        started = time.perf_counter()
        try:
            if channel is None:
                raise PermanentDeliveryError(f"channel {notification.channel!r} is not configured on this worker")
            try:
                provider_message_id = channel.send(notification)
            finally:
                metrics.provider_call(notification.channel, time.perf_counter() - started)
        except PermanentDeliveryError as exc:
            metrics.delivered(notification.channel, "permanent_error")
            return self._fail(notification, number, exc.outcome, exc.reason, log)
        except TransientDeliveryError as exc:
            metrics.delivered(notification.channel, "timeout" if exc.outcome == "timeout" else "transient_error")
            if attempt >= policy.max_attempts:
                return self._fail(notification, number, exc.outcome, exc.reason, log)
            self._retry(notification, number, exc.outcome, exc.reason, log)
            raise RetryLater(exc.reason, delay_ms=backoff_ms(attempt, policy, exc.retry_after)) from exc
        except BaseException as exc:
            # Dramatiq's TimeLimit interrupts a hung call with an exception of its own; anything
            # unexpected is recorded too, and the message is retried by the middleware.
            outcome = "timeout" if "TimeLimit" in type(exc).__name__ else "error"
            metrics.delivered(notification.channel, "timeout" if outcome == "timeout" else "transient_error")
            reason = f"{type(exc).__name__}: {exc}"
            if attempt >= policy.max_attempts:
                return self._fail(notification, number, outcome, reason, log)
            self._retry(notification, number, outcome, reason, log)
            raise
        metrics.delivered(notification.channel, "sent")
        if notification.attempt_base == 0:  # a replay's latency would count the time it lay failed
            metrics.sent(notification.channel, _since(due))
        self._record(Outcome(notification.id, number, Status.SENT, "sent", provider_message_id=provider_message_id))
        logger.debug("notification sent", extra={**log, "provider_message_id": provider_message_id})
        return Delivered("sent", notification)

    def _record(self, outcome: Outcome) -> None:
        attributes = {"notifier.status": outcome.status.value, "notifier.outcome": outcome.outcome}
        with tracing.span("record outcome", **attributes):
            self.deliveries.finish(outcome)

    def _unclaimed(self, notification_id: uuid.UUID) -> Delivered | NotDue:
        state = self.deliveries.status_of(notification_id)
        if state is None:
            logger.warning(
                "message for an unknown notification dropped", extra={"notification_id": str(notification_id)}
            )
            metrics.delivered(metrics.UNKNOWN_CHANNEL, "abandoned")
            return Delivered("skipped")
        if state.status in (Status.SCHEDULED, Status.QUEUED) and state.wait > 0:
            return NotDue(int(state.wait * 1000) + 1)
        logger.info(
            "notification not claimable, message dropped",
            extra={"notification_id": str(notification_id), "status": state.status},
        )
        metrics.delivered(state.channel, "abandoned")
        return Delivered("skipped")

    def _retry(
        self, notification: Notification, number: int, outcome: str, reason: str, log: dict[str, object]
    ) -> None:
        self._record(Outcome(notification.id, number, Status.RETRYING, outcome, reason))
        logger.warning("delivery attempt failed; will retry", extra={**log, "outcome": outcome, "error": reason})

    def _fail(
        self, notification: Notification, number: int, outcome: str, reason: str, log: dict[str, object]
    ) -> Delivered:
        self._record(Outcome(notification.id, number, Status.FAILED, outcome, reason))
        logger.error("notification failed", extra={**log, "outcome": outcome, "error": reason})
        return Delivered("failed", notification, reason)


def _since(due: datetime) -> float:
    """Seconds from ``due`` until now (by this machine's clock)."""
    return (datetime.now(UTC) - due).total_seconds()
