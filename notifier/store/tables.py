"""The Piccolo tables. Their schema changes only through migrations in the top-level ``migrations/``."""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    OnDelete,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class RuleTable(Table, tablename="rules"):
    """A recurring (``schedule``) or event-triggered (``event``) rule; exactly one of the two is set."""

    id = UUID(primary_key=True)
    name = Varchar(length=200)
    schedule = Varchar(length=200, null=True, default=None)
    event = Varchar(length=200, null=True, default=None)
    timezone = Varchar(length=64, default="UTC")
    starts_at = Timestamptz(null=True, default=None)
    ends_at = Timestamptz(null=True, default=None)
    channel = Varchar(length=16)
    recipients = JSONB(default=[])
    subject = Text(null=True, default=None)
    body = Text()
    metadata = JSONB(default={})
    enabled = Boolean(default=True)
    misfire = Varchar(length=8, default="once")
    next_fire_at = Timestamptz(null=True, default=None)
    """The next firing not yet turned into notifications; null for event rules and ended schedules."""
    revision = Integer(default=1)
    """Counts changes; part of the firings' idempotency keys, so a changed rule plans afresh."""
    failures = Integer(default=0)
    """Consecutive firings that failed; at ``RULE_FAILURE_LIMIT`` the tick disables the rule."""
    disabled_reason = Text(null=True, default=None)
    """Why the tick disabled the rule; cleared when it is enabled again."""
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class EventTable(Table, tablename="events"):
    id = UUID(primary_key=True)
    type = Varchar(length=200)
    data = JSONB(default={})
    idempotency_key = Varchar(length=255, null=True, default=None, unique=True)
    request_fingerprint = Varchar(length=64, null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class NotificationTable(Table, tablename="notifications"):
    """One row per accepted notification; also the outbox (``enqueued_at`` null: not yet in Redis)."""

    id = UUID(primary_key=True)
    channel = Varchar(length=16)
    recipient = Varchar(length=2048)
    subject = Text(null=True, default=None)
    body = Text()
    metadata = JSONB(default={})
    send_at = Timestamptz(null=True, default=None)
    status = Varchar(length=16)
    attempts = Integer(default=0)
    attempt_base = Integer(default=0)
    """``attempts`` when it was last replayed: a replay gets a fresh budget of attempts."""
    last_error = Text(null=True, default=None)
    idempotency_key = Varchar(length=255, null=True, default=None, unique=True)
    request_fingerprint = Varchar(length=64, null=True, default=None)
    enqueued_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    rule = ForeignKey(references=RuleTable, on_delete=OnDelete.set_null, null=True, default=None)
    event = ForeignKey(references=EventTable, on_delete=OnDelete.set_null, null=True, default=None)
    trace_parent = Varchar(length=64, null=True, default=None)
    """The W3C ``traceparent`` of the request or rule firing that created it, for the relay's span links."""


class DeliveryAttemptTable(Table, tablename="delivery_attempts"):
    """One row per delivery attempt; ``number`` counts from 1 per notification."""

    id = BigSerial(primary_key=True)
    notification = ForeignKey(references=NotificationTable, on_delete=OnDelete.cascade, null=False)
    number = Integer()
    started_at = Timestamptz(default=TimestamptzNow())
    finished_at = Timestamptz(null=True, default=None)
    outcome = Varchar(length=32, null=True, default=None)
    error = Text(null=True, default=None)
    provider_message_id = Varchar(length=255, null=True, default=None)
