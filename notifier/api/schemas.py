"""Request and response bodies (msgspec). Limits here are the API's documented size bounds."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from notifier import domain
from notifier.domain import Attempt, Channel
from notifier.errors import InvalidNotification

Recipient = Annotated[str, msgspec.Meta(min_length=1, max_length=domain.MAX_RECIPIENT_LENGTH)]
Subject = Annotated[str, msgspec.Meta(max_length=domain.MAX_SUBJECT_LENGTH)]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=domain.MAX_BODY_LENGTH)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=domain.MAX_IDEMPOTENCY_KEY_LENGTH)]


def idempotency_key(body_key: str | None, header_key: str | None) -> str | None:
    """The request's idempotency key: the body's ``idempotency_key`` or the ``Idempotency-Key``
    header; both may be given only if they agree."""
    if header_key is None:
        return body_key
    if body_key is not None and body_key != header_key:
        raise InvalidNotification("idempotency_key", "differs from the Idempotency-Key header")
    if not 1 <= len(header_key) <= domain.MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidNotification("Idempotency-Key", f"must be 1 to {domain.MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    return header_key


class NotifyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A notification to send now, or at ``send_at``."""

    channel: Channel
    recipient: Recipient
    body: Body
    subject: Subject | None = None
    send_at: datetime | None = None
    metadata: dict[str, Any] = {}
    idempotency_key: IdempotencyKey | None = None

    def to_domain(self, header_key: str | None) -> domain.NewNotification:
        key = idempotency_key(self.idempotency_key, header_key)
        return domain.NewNotification(
            channel=self.channel,
            recipient=self.recipient,
            subject=self.subject,
            body=self.body,
            send_at=self.send_at,
            metadata=self.metadata,
            idempotency_key=key,
        )


class NotificationOut(domain.Notification, frozen=True, kw_only=True):
    """A notification as the API shows it; ``delivery_attempts`` only where one is shown alone."""

    lateness: float | None = None
    """Seconds from ``send_at`` (or creation) to ``sent_at``: how late it went out; null until sent."""
    delivery_attempts: list[Attempt] | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def of(cls, n: domain.Notification, attempts: list[Attempt] | None = None) -> NotificationOut:
        fields = msgspec.structs.asdict(n)
        if n.sent_at is not None:
            fields["lateness"] = round((n.sent_at - (n.send_at or n.created_at)).total_seconds(), 3)
        return cls(**fields) if attempts is None else cls(**fields, delivery_attempts=attempts)


class NotificationPage(msgspec.Struct, kw_only=True):
    items: list[NotificationOut]
    next_cursor: str | None
    """Pass as ``cursor`` for the next (older) page; ``null`` on the last page."""


def encode_cursor(n: domain.Notification | domain.Rule) -> str:
    return encode_keyset(n.created_at, n.id)


def encode_keyset(at: datetime, item_id: uuid.UUID) -> str:
    """An opaque cursor for keyset pagination on (a time, an id)."""
    raw = msgspec.json.encode([at, item_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = msgspec.json.decode(raw, type=tuple[datetime, uuid.UUID])
        return domain.utc("cursor", at), item_id
    except (ValueError, msgspec.DecodeError, InvalidNotification):
        raise InvalidNotification("cursor", "is not a cursor this API returned") from None


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str] = {}


class RulePage(msgspec.Struct, kw_only=True):
    items: list[domain.Rule]
    next_cursor: str | None


class FireTime(msgspec.Struct, kw_only=True):
    utc: datetime
    local: datetime
    """The same instant on the rule's wall clock (its ``timezone``)."""


class RulePreview(msgspec.Struct, kw_only=True):
    rule_id: uuid.UUID
    timezone: str
    fire_times: list[FireTime]


class EventOut(domain.Event, frozen=True, kw_only=True):
    notifications: list[NotificationOut]
    """What the event produced: one notification per recipient of each enabled rule for its type."""


MAX_BATCH = 1000


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    notifications: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    """Each item is what ``POST /notify`` takes, validated and answered on its own."""


class BatchItemResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: int
    """202 accepted (or answered again for a repeated idempotency key), 409 or 422."""
    notification: NotificationOut | None = None
    idempotent_replayed: bool = False
    error: Any = None
    """An RFC 9457 problem naming the field, for 409 and 422."""


class BatchResponse(msgspec.Struct, kw_only=True):
    results: list[BatchItemResult]
    """One per item, in the order of the request."""
