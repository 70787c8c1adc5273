"""Database rows to domain objects, for both drivers (asyncpg through Piccolo, psycopg)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from notifier.domain import Channel, Event, Misfire, Notification, Rule, Status


def _json(value: Any) -> Any:
    # psycopg decodes JSONB; Piccolo hands it over as text.
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


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
        created_at=row["created_at"],
        updated_at=row["updated_at"],
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
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        channel=Channel(row["channel"]),
        recipients=_json(row["recipients"]),
        subject=row["subject"],
        body=row["body"],
        metadata=_json(row["metadata"]),
        enabled=row["enabled"],
        misfire=Misfire(row["misfire"]),
        next_fire_at=row["next_fire_at"],
        revision=row["revision"],
        failures=row.get("failures", 0),
        disabled_reason=row.get("disabled_reason"),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def event(row: dict[str, Any]) -> Event:
    return Event(
        id=row["id"],
        type=row["type"],
        data=_json(row["data"]),
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
    )
