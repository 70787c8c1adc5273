"""Async queries on events, for the API (Piccolo on asyncpg)."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from notifier.domain import Event, NewEvent
from notifier.store import rows
from notifier.store.tables import EventTable

E = EventTable


async def insert(new: NewEvent, *, now: datetime, event_id: uuid.UUID | None = None) -> Event | None:
    """Store an event (under ``event_id`` if given); ``None`` when its idempotency key is taken already."""
    row = E(
        id=event_id or uuid.uuid4(),
        type=new.type,
        data=msgspec.json.encode(new.data).decode(),
        idempotency_key=new.idempotency_key,
        request_fingerprint=new.fingerprint() if new.idempotency_key else None,
        created_at=now,
    )
    query = E.insert(row).returning(*E.all_columns(exclude=[E.request_fingerprint]))
    if new.idempotency_key is not None:
        query = query.on_conflict(target=E.idempotency_key, action="DO NOTHING")
    inserted = await query
    return rows.event(inserted[0]) if inserted else None


async def get(event_id: uuid.UUID) -> Event | None:
    row = await E.select(*E.all_columns()).where(E.id == event_id).first()
    return rows.event(row) if row else None


async def get_by_idempotency_key(key: str) -> tuple[Event, str | None] | None:
    row = await E.select(*E.all_columns()).where(E.idempotency_key == key).first()
    return (rows.event(row), row["request_fingerprint"]) if row else None


def transaction() -> object:
    """A transaction on the database the tables are bound to (``async with``)."""
    return E._meta.db.transaction()
