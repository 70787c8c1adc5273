"""Async queries on rules, for the API (Piccolo on asyncpg). Returns domain objects."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from piccolo.columns import Column

from notifier.domain import NewRule, Rule, Status
from notifier.store import rows
from notifier.store.tables import NotificationTable, RuleTable

R = RuleTable


def _values(new: NewRule) -> dict[Column | str, Any]:
    return {
        R.name: new.name,
        R.schedule: new.schedule,
        R.event: new.event,
        R.timezone: new.timezone,
        R.starts_at: new.starts_at,
        R.ends_at: new.ends_at,
        R.channel: new.channel.value,
        R.recipients: msgspec.json.encode(new.recipients).decode(),
        R.subject: new.subject,
        R.body: new.body,
        R.metadata: msgspec.json.encode(new.metadata).decode(),
        R.enabled: new.enabled,
        R.misfire: new.misfire.value,
    }


async def insert(new: NewRule, *, next_fire_at: datetime | None, now: datetime) -> Rule:
    values = {column._meta.name: value for column, value in _values(new).items() if isinstance(column, Column)}
    row = R(id=uuid.uuid4(), next_fire_at=next_fire_at, created_at=now, updated_at=now, **values)
    inserted = await R.insert(row).returning(*R.all_columns())
    return rows.rule(inserted[0])


async def get(rule_id: uuid.UUID) -> Rule | None:
    row = await R.select(*R.all_columns()).where(R.id == rule_id).first()
    return rows.rule(row) if row else None


def transaction() -> Any:
    """A transaction on the rules' database (``async with``)."""
    return R._meta.db.transaction()


async def get_for_update(rule_id: uuid.UUID) -> Rule | None:
    """The rule, locked until the surrounding transaction ends (call inside :func:`transaction`)."""
    row = await R.select(*R.all_columns()).where(R.id == rule_id).lock_rows().first()
    return rows.rule(row) if row else None


async def update(rule_id: uuid.UUID, new: NewRule, *, next_fire_at: datetime | None, now: datetime) -> Rule | None:
    values = _values(new)
    values[R.updated_at] = now
    values[R.next_fire_at] = next_fire_at
    values[R.revision] = R.revision + 1
    values[R.failures] = 0
    if new.enabled:
        values[R.disabled_reason] = None
    updated = await R.update(values).where(R.id == rule_id).returning(*R.all_columns())
    return rows.rule(updated[0]) if updated else None


async def cancel_planned(rule_id: uuid.UUID, *, now: datetime) -> None:
    """Cancel the notifications the rule planned ahead that are not due yet."""
    N = NotificationTable
    await N.update({N.status: Status.CANCELLED.value, N.updated_at: now}).where(
        (N.rule == rule_id) & (N.status == Status.SCHEDULED.value) & (N.send_at > now)
    )


async def delete(rule_id: uuid.UUID) -> bool:
    deleted = await R.delete().where(R.id == rule_id).returning(R.id)
    return bool(deleted)


async def page(*, after: tuple[datetime, uuid.UUID] | None, limit: int, enabled: bool | None) -> list[Rule]:
    query = R.select(*R.all_columns()).order_by(R.created_at, R.id, ascending=False).limit(limit)
    if enabled is not None:
        query = query.where(R.enabled == enabled)
    if after is not None:
        created_at, last_id = after
        query = query.where((R.created_at < created_at) | ((R.created_at == created_at) & (R.id < last_id)))
    return [rows.rule(row) for row in await query]


async def for_event(event_type: str, *, now: datetime) -> list[Rule]:
    """The enabled rules for this event type whose window (``starts_at``, ``ends_at``) holds ``now``."""
    query = R.select(*R.all_columns()).where(
        (R.event == event_type)
        & (R.enabled == True)  # noqa: E712
        & (R.starts_at.is_null() | (R.starts_at <= now))
        & (R.ends_at.is_null() | (R.ends_at > now))
    )
    return [rows.rule(row) for row in await query.order_by(R.created_at)]
