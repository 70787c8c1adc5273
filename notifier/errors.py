"""The exception tree. Everything notifier raises on purpose is a :class:`NotifierError`::

    NotifierError
    ├── ConfigurationError          a NOTIFIER_* variable is missing or invalid
    ├── InvalidNotification         input that breaks a rule msgspec cannot express (field, reason)
    ├── ChannelNotConfigured        the channel asked for has no provider settings
    ├── NotFound                    no such thing: NotificationNotFound, RuleNotFound, EventNotFound
    ├── IdempotencyConflict         the key was used before with a different request
    ├── InvalidTransition           the notification's status does not allow the change
    ├── ServiceUnavailable          PostgreSQL or Redis cannot be reached right now
    │   └── GroupStalled            a worker's commit group did not answer in time
    ├── UnusableRow                 a row no driver can read or write; it was failed instead
    └── DeliveryError               a channel could not deliver
        ├── TransientDeliveryError  worth another attempt (429/5xx, SMTP 4xx, connection errors)
        │   └── DeliveryTimeout     the provider did not answer in time
        └── PermanentDeliveryError  never worth another attempt (4xx, SMTP 5xx, bad recipient)

``notifier.api.errors`` is the only place that turns these into HTTP responses.
"""

from __future__ import annotations

import uuid


class NotifierError(Exception):
    """Root of every error notifier raises on purpose."""


class ConfigurationError(NotifierError):
    """A setting is missing or invalid; the message names the environment variable."""


class InvalidNotification(NotifierError):
    """A request value is well-typed but not acceptable."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ChannelNotConfigured(InvalidNotification):
    """The channel exists but this deployment has no provider settings for it."""

    def __init__(self, channel: str, variable: str) -> None:
        super().__init__("channel", f"{str(channel)!r} is not configured on this server (set {variable})")
        self.channel = channel


class NotFound(NotifierError):
    """No such thing: ``kind`` names what was looked for."""

    kind = "resource"

    def __init__(self, identifier: object) -> None:
        super().__init__(f"{self.kind} {identifier} not found")
        self.identifier = identifier


class NotificationNotFound(NotFound):
    kind = "notification"


class RuleNotFound(NotFound):
    kind = "rule"


class EventNotFound(NotFound):
    kind = "event"


class IdempotencyConflict(NotifierError):
    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different request")
        self.key = key


class InvalidTransition(NotifierError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a {current} notification cannot become {target}")
        self.current = current
        self.target = target


class ServiceUnavailable(NotifierError):
    """A backing service (PostgreSQL, Redis) cannot be reached; retry later."""


class DeliveryError(NotifierError):
    """A channel failed to deliver; ``reason`` is what the provider said."""

    outcome = "error"

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TransientDeliveryError(DeliveryError):
    outcome = "transient_error"


class DeliveryTimeout(TransientDeliveryError):
    """The provider did not answer within the timeout."""

    outcome = "timeout"


class PermanentDeliveryError(DeliveryError):
    outcome = "permanent_error"


class GroupStalled(ServiceUnavailable):
    """The group a call went in did not answer in time, or its leader was interrupted.

    Whether its statement ran is unknown: a claim may have been made (the lease recovers it), an
    outcome may have been recorded (recording it again changes nothing).
    """


class UnusableRow(NotifierError):
    """A notification's row could not be read or written (a value out of the drivers' range, text
    PostgreSQL refuses): the notification was marked ``failed`` with ``reason`` instead."""

    def __init__(self, notification_id: uuid.UUID, reason: str) -> None:
        super().__init__(f"notification {notification_id}: {reason}")
        self.notification_id = notification_id
        self.reason = reason
