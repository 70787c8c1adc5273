"""Async queries on notifications, for the API process (Piccolo on asyncpg). Returns domain objects.

The statements on the hot path of ``POST /notify`` (insert, mark enqueued) are plain SQL run on
the Piccolo engine's asyncpg pool: building them through Piccolo's query strings cost more CPU
than the rest of the insert.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from piccolo.columns import Column
from piccolo.engine.postgres import PostgresEngine

from notifier.domain import (
    Attempt,
    DeadLetterFilter,
    NewNotification,
    Notification,
    NotificationFilter,
    Status,
    sources,
)
from notifier.store import rows
from notifier.store.tables import DeliveryAttemptTable, EventTable, NotificationTable, RuleTable

T = NotificationTable
COLUMNS: tuple[Column, ...] = (
    T.id,
    T.channel,
    T.recipient,
    T.subject,
    T.body,
    T.metadata,
    T.send_at,
    T.status,
    T.attempts,
    T.last_error,
    T.idempotency_key,
    T.created_at,
    T.updated_at,
    T.sent_at,
    T.rule,
    T.event,
)


async def _keep_session(connection: object) -> None:
    """Nothing to reset: no query sets session state, so a released connection skips asyncpg's
    reset round trip (``RESET ALL``, ``UNLISTEN *``, …)."""


async def connect(database_url: str, *, pool_size: int) -> None:
    """Open a pool and bind the tables to it, for this process; :func:`disconnect` closes it."""
    engine = PostgresEngine(config={"dsn": database_url}, log_queries=False)
    await engine.start_connection_pool(min_size=1, max_size=pool_size, reset=_keep_session)
    for table in (NotificationTable, DeliveryAttemptTable, RuleTable, EventTable):
        table._meta.db = engine


async def disconnect() -> None:
    engine = NotificationTable._meta.db
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()


async def insert(
    new: NewNotification,
    *,
    status: Status,
    now: datetime,
    last_error: str | None = None,
    rule_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    trace_parent: str | None = None,
) -> Notification | None:
    """Store a notification; ``None`` when its idempotency key is taken already."""
    [stored] = await insert_many(
        [new],
        [status],
        now=now,
        last_errors=[last_error],
        rule_ids=[rule_id],
        event_ids=[event_id],
        trace_parent=trace_parent,
    )
    return stored


async def get_by_idempotency_key(key: str) -> tuple[Notification, str | None] | None:
    row = await T.select(*COLUMNS, T.request_fingerprint).where(T.idempotency_key == key).first()
    return (rows.notification(row), row["request_fingerprint"]) if row else None


async def for_event(event_id: uuid.UUID) -> list[Notification]:
    return [rows.notification(row) for row in await T.select(*COLUMNS).where(T.event == event_id).order_by(T.id)]


async def get(notification_id: uuid.UUID) -> Notification | None:
    row = await T.select(*COLUMNS).where(T.id == notification_id).first()
    return rows.notification(row) if row else None


async def attempts(notification_id: uuid.UUID) -> list[Attempt]:
    A = DeliveryAttemptTable
    found = (
        await A.select(A.number, A.started_at, A.finished_at, A.outcome, A.error, A.provider_message_id)
        .where(A.notification == notification_id)
        .order_by(A.number)
    )
    return [rows.attempt(row) for row in found]


async def page(
    filters: NotificationFilter, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Notification]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    query = T.select(*COLUMNS).order_by(T.created_at, T.id, ascending=False).limit(limit)
    if filters.status is not None:
        query = query.where(T.status == filters.status.value)
    if filters.channel is not None:
        query = query.where(T.channel == filters.channel.value)
    if filters.recipient is not None:
        query = query.where(T.recipient == filters.recipient)
    if filters.rule_id is not None:
        query = query.where(T.rule == filters.rule_id)
    if filters.event_id is not None:
        query = query.where(T.event == filters.event_id)
    if filters.created_after is not None:
        query = query.where(T.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(T.created_at < filters.created_before)
    if after is not None:
        created_at, last_id = after
        query = query.where((T.created_at < created_at) | ((T.created_at == created_at) & (T.id < last_id)))
    return [rows.notification(row) for row in await query]


async def transition(notification_id: uuid.UUID, target: Status, *, now: datetime) -> Notification | None:
    """Move to ``target`` if the current status allows it (one conditional UPDATE); else ``None``."""
    allowed = [status.value for status in sources(target)]
    values: dict[Column | str, Any] = {T.status: target.value, T.updated_at: now}
    updated = await T.update(values).where((T.id == notification_id) & T.status.is_in(allowed)).returning(*COLUMNS)
    return rows.notification(updated[0]) if updated else None


async def _fetch(query: str, *args: Any) -> list[Any]:
    """Run one prepared statement (``$n`` placeholders) in the current Piccolo transaction, if
    there is one, else on the engine's pool."""
    engine = T._meta.db
    if not isinstance(engine, PostgresEngine) or engine.pool is None:
        raise RuntimeError("store.connect() was not called")
    transaction = engine.current_transaction.get()
    if transaction is not None:
        return list(await transaction.connection.fetch(query, *args))
    async with engine.pool.acquire() as connection:
        return list(await connection.fetch(query, *args))


# Rows a worker has taken already need no mark, and rows a worker holds locked right now (its
# claims and outcomes lock several at once) are skipped rather than waited for: a wait could close
# a deadlock with those locks. A row left unmarked costs at most one more message from the relay.
_MARK_ENQUEUED = """
UPDATE notifications SET enqueued_at = $1
WHERE id IN (
    SELECT id FROM notifications
    WHERE id = ANY($2::uuid[]) AND status IN ('scheduled', 'queued') AND enqueued_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED
)
"""


async def mark_enqueued(ids: Sequence[uuid.UUID], *, now: datetime) -> None:
    if ids:
        await _fetch(_MARK_ENQUEUED, now, list(ids))


async def ping() -> None:
    await T.raw("SELECT 1")


async def count_by_status() -> dict[Status, int]:
    """How many notifications have each status (every status, 0 for none): one statement, an
    index-only scan of ``notifications_status_created_at_id``."""
    counts = dict.fromkeys(Status, 0)
    for row in await _fetch("SELECT status, count(*) AS n FROM notifications GROUP BY status"):
        counts[Status(row["status"])] = row["n"]
    return counts


_REPLAY = """
UPDATE notifications
SET status = 'queued', attempt_base = attempts, enqueued_at = NULL, updated_at = {}::timestamptz
WHERE id IN (
    SELECT id FROM notifications
    WHERE status = 'failed'
      AND ({}::uuid[] IS NULL OR id = ANY({}::uuid[]))
      AND ({}::text IS NULL OR channel = {}::text)
      AND ({}::timestamptz IS NULL OR updated_at >= {}::timestamptz)
      AND ({}::timestamptz IS NULL OR updated_at < {}::timestamptz)
    ORDER BY updated_at DESC
    LIMIT {}
    FOR UPDATE SKIP LOCKED
)
RETURNING *
"""


async def replay(
    filters: DeadLetterFilter, *, ids: list[uuid.UUID] | None, now: datetime, limit: int
) -> list[Notification]:
    """Put failed notifications back to ``queued`` with a fresh budget of attempts; returns them."""
    channel = None if filters.channel is None else filters.channel.value
    args = [ids, ids, channel, channel, filters.failed_after, filters.failed_after]
    args += [filters.failed_before, filters.failed_before]
    replayed = await T.raw(_REPLAY, now, *args, limit)
    return [rows.notification(row) for row in replayed]


async def dead_letters(
    filters: DeadLetterFilter, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Notification]:
    """Failed notifications, the most recently failed first."""
    query = T.select(*COLUMNS).where(T.status == Status.FAILED.value)
    if filters.channel is not None:
        query = query.where(T.channel == filters.channel.value)
    if filters.failed_after is not None:
        query = query.where(T.updated_at >= filters.failed_after)
    if filters.failed_before is not None:
        query = query.where(T.updated_at < filters.failed_before)
    if after is not None:
        failed_at, last_id = after
        query = query.where((T.updated_at < failed_at) | ((T.updated_at == failed_at) & (T.id < last_id)))
    query = query.order_by(T.updated_at, T.id, ascending=False).limit(limit)
    return [rows.notification(row) for row in await query]


_INSERT_MANY = """
INSERT INTO notifications (id, channel, recipient, subject, body, metadata, send_at, status, attempts,
    idempotency_key, request_fingerprint, last_error, rule, event, created_at, updated_at, trace_parent)
SELECT id, channel, recipient, subject, body, metadata, send_at, status, 0,
    idempotency_key, fingerprint, last_error, rule, event, $1, $1, $15
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::timestamptz[],
            $9::text[], $10::text[], $11::text[], $12::text[], $13::uuid[], $14::uuid[])
    AS t(id, channel, recipient, subject, body, metadata, send_at, status,
         idempotency_key, fingerprint, last_error, rule, event)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""


_INSERT_ONE = """
INSERT INTO notifications (id, channel, recipient, subject, body, metadata, send_at, status, attempts,
    idempotency_key, request_fingerprint, last_error, rule, event, created_at, updated_at, trace_parent)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, 0, $9, $10, $11, $12, $13, $14, $14, $15)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""


async def insert_many(
    news: Sequence[NewNotification],
    statuses: Sequence[Status],
    *,
    now: datetime,
    last_errors: Sequence[str | None] | None = None,
    rule_ids: Sequence[uuid.UUID | None] | None = None,
    event_ids: Sequence[uuid.UUID | None] | None = None,
    trace_parent: str | None = None,
) -> list[Notification | None]:
    """Store notifications in one statement; ``None`` where an idempotency key was taken already.

    The rows are built here, so nothing but the ids of the rows written comes back. ``trace_parent``,
    the W3C ``traceparent`` they were created under, is stored on each.
    """
    none: list[None] = [None] * len(news)
    made = [
        Notification(
            id=uuid.uuid4(),
            channel=new.channel,
            recipient=new.recipient,
            subject=new.subject,
            body=new.body,
            metadata=new.metadata,
            send_at=new.send_at,
            status=status,
            attempts=0,
            last_error=last_error,
            idempotency_key=new.idempotency_key,
            created_at=now,
            updated_at=now,
            sent_at=None,
            rule_id=rule_id,
            event_id=event_id,
        )
        for new, status, last_error, rule_id, event_id in zip(
            news, statuses, last_errors or none, rule_ids or none, event_ids or none, strict=True
        )
    ]
    encode = msgspec.json.encode
    if len(made) == 1:  # the common case, as one plain prepared statement
        n, new = made[0], news[0]
        inserted = await _fetch(
            _INSERT_ONE,
            n.id,
            n.channel.value,
            n.recipient,
            n.subject,
            n.body,
            encode(n.metadata).decode(),
            n.send_at,
            n.status.value,
            n.idempotency_key,
            new.fingerprint() if new.idempotency_key else None,
            n.last_error,
            n.rule_id,
            n.event_id,
            now,
            trace_parent,
        )
        return [n] if inserted else [None]
    inserted = await _fetch(
        _INSERT_MANY,
        now,
        [n.id for n in made],
        [n.channel.value for n in made],
        [n.recipient for n in made],
        [n.subject for n in made],
        [n.body for n in made],
        [encode(n.metadata).decode() for n in made],
        [n.send_at for n in made],
        [n.status.value for n in made],
        [n.idempotency_key for n in made],
        [new.fingerprint() if new.idempotency_key else None for new in news],
        [n.last_error for n in made],
        [n.rule_id for n in made],
        [n.event_id for n in made],
        trace_parent,
    )
    stored = {row["id"] for row in inserted}
    return [n if n.id in stored else None for n in made]


async def get_by_idempotency_keys(keys: Sequence[str]) -> dict[str, tuple[Notification, str | None]]:
    found = await T.select(*COLUMNS, T.request_fingerprint).where(T.idempotency_key.is_in(list(keys)))
    return {row["idempotency_key"]: (rows.notification(row), row["request_fingerprint"]) for row in found}
