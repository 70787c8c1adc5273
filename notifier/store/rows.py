"""Database rows to domain objects, for both drivers (asyncpg through Piccolo, psycopg)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

import msgspec

from notifier.domain import Attempt, Channel, Event, Misfire, Notification, Rule, Status


def _json(value: Any) -> Any:
    # psycopg decodes JSONB; Piccolo hands it over as text.
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


@overload
def _at(value: datetime) -> datetime: ...
@overload
def _at(value: datetime | None) -> datetime | None: ...
def _at(value: datetime | None) -> datetime | None:
    # asyncpg reads PostgreSQL's -infinity and infinity as datetime's extremes without an offset.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def notification(row: dict[str, Any]) -> Notification:
    return Notification(
        id=row["id"],
        channel=Channel(row["channel"]),
        recipient=row["recipient"],
        subject=row["subject"],
        body=row["body"],
        metadata=_json(row["metadata"]),
        send_at=_at(row["send_at"]),
        status=Status(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        idempotency_key=row["idempotency_key"],
        created_at=_at(row["created_at"]),
        updated_at=_at(row["updated_at"]),
        sent_at=_at(row["sent_at"]),
        attempt_base=row.get("attempt_base", 0),
        rule_id=row.get("rule"),
        event_id=row.get("event"),
    )


def rule(row: dict[str, Any]) -> Rule:
    return Rule(
        id=row["id"],
        name=row["name"],
        schedule=row["schedule"],
        event=row["event"],
        timezone=row["timezone"],
        starts_at=_at(row["starts_at"]),
        ends_at=_at(row["ends_at"]),
        channel=Channel(row["channel"]),
        recipients=_json(row["recipients"]),
        subject=row["subject"],
        body=row["body"],
        metadata=_json(row["metadata"]),
        enabled=row["enabled"],
        misfire=Misfire(row["misfire"]),
        next_fire_at=_at(row["next_fire_at"]),
        revision=row["revision"],
        failures=row.get("failures", 0),
        disabled_reason=row.get("disabled_reason"),
        created_at=_at(row["created_at"]),
        updated_at=_at(row["updated_at"]),
    )


def event(row: dict[str, Any]) -> Event:
    return Event(
        id=row["id"],
        type=row["type"],
        data=_json(row["data"]),
        idempotency_key=row["idempotency_key"],
        created_at=_at(row["created_at"]),
    )


def attempt(row: dict[str, Any]) -> Attempt:
    return Attempt(
        number=row["number"],
        started_at=_at(row["started_at"]),
        finished_at=_at(row["finished_at"]),
        outcome=row["outcome"],
        error=row["error"],
        provider_message_id=row["provider_message_id"],
    )
