"""Notifications, their statuses and the one table of allowed transitions. Pure: no I/O."""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from notifier.domain.addresses import PUBLIC_ONLY, AddressPolicy, webhook_url
from notifier.errors import InvalidNotification, InvalidTransition

MAX_RECIPIENT_LENGTH = 2048
MAX_SUBJECT_LENGTH = 998
MAX_BODY_LENGTH = 65_536
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_METADATA_BYTES = 16_384


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    WEBHOOK = "webhook"
    LOG = "log"


class Status(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED, Status.FAILED}),
    Status.QUEUED: frozenset({Status.SENDING, Status.CANCELLED, Status.FAILED}),
    Status.SENDING: frozenset({Status.SENDING, Status.SENT, Status.RETRYING, Status.FAILED}),
    Status.RETRYING: frozenset({Status.SENDING, Status.FAILED, Status.CANCELLED}),
    Status.SENT: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.CANCELLED: frozenset(),
}
"""Every allowed status change. ``scheduled`` and ``queued`` may go straight to ``sending``
because a worker claims whichever it finds; ``sending`` may be claimed again once its lease has
lapsed (``NOTIFIER_DELIVERY_LEASE``); a replay puts a ``failed`` one back to ``queued``, with a
fresh budget of attempts; nothing leaves ``sent`` or ``cancelled``. Any status before ``sent``
may become ``failed``: a row the relay or a worker cannot read or write fails where it is."""


def sources(target: Status) -> frozenset[Status]:
    """The statuses from which ``target`` may be reached (what a conditional UPDATE checks)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def check_transition(current: Status, target: Status) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt: its number (1-based), timing, outcome and what the provider said."""

    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    provider_message_id: str | None


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    channel: Channel
    recipient: str
    subject: str | None
    body: str
    metadata: dict[str, Any]
    send_at: datetime | None
    status: Status
    attempts: int
    last_error: str | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    attempt_base: int = 0
    """``attempts`` at the last replay; the attempts since then are ``attempts - attempt_base``."""
    rule_id: uuid.UUID | None = None
    """The rule whose firing created it, if one did."""
    event_id: uuid.UUID | None = None
    """The event that triggered it, if one did."""


class NewNotification(msgspec.Struct, frozen=True, kw_only=True):
    """What a client asks to send, already type-checked; :func:`validate` checks the rest."""

    channel: Channel
    recipient: str
    body: str
    subject: str | None = None
    send_at: datetime | None = None
    metadata: dict[str, Any] = {}
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        """A digest of everything but the key: the same key with another fingerprint is a conflict."""
        payload = msgspec.json.encode(
            [self.channel, self.recipient, self.subject, self.body, self.send_at, self.metadata],
            order="sorted",
        )
        return hashlib.sha256(payload).hexdigest()


def normalise_recipient(channel: Channel, recipient: str, policy: AddressPolicy = PUBLIC_ONLY) -> str:
    """Validate ``recipient`` for ``channel`` and return its canonical form.

    A webhook URL must be one that ``policy`` lets the channel reach, as far as the URL tells.
    """
    if channel is Channel.EMAIL:
        try:
            return validate_email(recipient, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise InvalidNotification("recipient", f"not a valid email address: {exc}") from None
    if channel is Channel.SMS:
        try:
            number = phonenumbers.parse(recipient, None)
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not recipient.startswith("+") or not phonenumbers.is_valid_number(number):
            raise InvalidNotification("recipient", "not a valid E.164 phone number (like +14155550123)")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if channel is Channel.WEBHOOK:
        return webhook_url(recipient, policy)
    if not recipient.strip():
        raise InvalidNotification("recipient", "must not be blank")
    return recipient


EARLIEST_YEAR, LATEST_YEAR = 1970, 9000
EARLIEST_TIME = datetime(EARLIEST_YEAR, 1, 1, tzinfo=UTC)
"""The earliest instant the API takes (``send_at``, a rule's ``starts_at``, a list filter)."""
LATEST_TIME = datetime(LATEST_YEAR, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
"""The latest instant the API takes; both drivers and the schedules read every instant between."""
_OUT_OF_RANGE = "must lie between 1970-01-01T00:00:00Z and 9000-12-31T23:59:59.999999Z (in UTC)"


def utc(field: str, value: datetime) -> datetime:
    """``value`` in UTC, if it carries an offset and lies within the years 1970 to 9000 in UTC.

    Every instant the API takes goes through here, so that none reaches PostgreSQL as a value
    one of the drivers cannot read back (asyncpg writes the extremes of ``datetime`` as
    ``±infinity``; psycopg cannot read a year outside 1 to 9999).
    """
    if value.tzinfo is None:
        raise InvalidNotification(field, "must carry a UTC offset (RFC 3339, e.g. 2030-01-01T09:00:00Z)")
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:  # beyond year 9999 once in UTC
        raise InvalidNotification(field, _OUT_OF_RANGE) from None
    if not EARLIEST_TIME <= in_utc <= LATEST_TIME:
        raise InvalidNotification(field, _OUT_OF_RANGE)
    return in_utc


def check_text(field: str, value: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database."""
    if "\x00" in value:
        raise InvalidNotification(field, "must not contain NUL characters")


def check_json_text(field: str, value: Any) -> None:
    """:func:`check_text` for every string (keys included) in a JSON value. Iterative: the
    value's depth is the client's to choose."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_text(field, item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_single_line(field: str, value: str) -> None:
    """Refuse every line separator ``str.splitlines`` knows (CR, LF, VT, FF, FS, GS, RS, NEL, LS,
    PS): an email header cannot carry one, and the mail library refuses it at send time."""
    if value.splitlines() not in ([], [value]):
        raise InvalidNotification(field, "must be a single line (no line breaks or line separators)")


def validate(new: NewNotification, policy: AddressPolicy = PUBLIC_ONLY) -> NewNotification:
    """Check what msgspec's types cannot, and return the notification in canonical form.

    ``policy`` says which addresses a webhook may reach (by default, public ones only).
    """
    for field in ("recipient", "subject", "body", "idempotency_key"):
        value = getattr(new, field)
        if value is not None:
            check_text(field, value)
    # The API's schema bounds these too; a rule's rendered text reaches here unchecked.
    for field, value, longest in (
        ("recipient", new.recipient, MAX_RECIPIENT_LENGTH),
        ("subject", new.subject, MAX_SUBJECT_LENGTH),
        ("body", new.body, MAX_BODY_LENGTH),
    ):
        if value is not None and len(value) > longest:
            raise InvalidNotification(field, f"must be at most {longest} characters")
    if not new.body:
        raise InvalidNotification("body", "must not be empty")
    send_at = None if new.send_at is None else utc("send_at", new.send_at)
    if new.subject is not None:
        check_single_line("subject", new.subject)
    if new.channel is Channel.EMAIL and not new.subject:
        raise InvalidNotification("subject", "is required for email")
    metadata = msgspec.json.encode(new.metadata)
    if len(metadata) > MAX_METADATA_BYTES:
        raise InvalidNotification("metadata", f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
    check_json_text("metadata", new.metadata)
    return msgspec.structs.replace(
        new, recipient=normalise_recipient(new.channel, new.recipient, policy), send_at=send_at
    )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which failed notifications to list or replay; ``None`` means any."""

    channel: Channel | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None


@dataclass(frozen=True)
class NotificationFilter:
    """What ``GET /notifications`` narrows by; ``None`` means any."""

    status: Status | None = None
    channel: Channel | None = None
    recipient: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    rule_id: uuid.UUID | None = None
    event_id: uuid.UUID | None = None
