"""Database rows to domain objects, for both drivers (asyncpg through Piccolo, psycopg)."""

from __future__ import annotations

from typing import Any

import msgspec

from notifier.domain import Channel, Notification, Status


def notification(row: dict[str, Any]) -> Notification:
    metadata = row["metadata"]
    return Notification(
        id=row["id"],
        channel=Channel(row["channel"]),
        recipient=row["recipient"],
        subject=row["subject"],
        body=row["body"],
        # psycopg decodes JSONB; Piccolo hands it over as text.
        metadata=msgspec.json.decode(metadata) if isinstance(metadata, str | bytes) else metadata,
        send_at=row["send_at"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
    )
