"""Sync queries for the scheduler tick (psycopg): due schedule rules and the notifications they fire.

Rules are taken ``FOR UPDATE SKIP LOCKED``, so two ticks at once (two schedulers, a rolling
deploy) share the rules instead of both firing one; and every notification a firing creates has a
deterministic idempotency key that the database keeps unique, so even a firing planned twice
creates its notifications once.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from notifier.domain import NewNotification, Rule, Status
from notifier.store import rows
from notifier.store.delivery import Pool

Connection = psycopg.Connection[DictRow]

_DUE_RULES = """
SELECT * FROM rules
WHERE enabled AND schedule IS NOT NULL AND next_fire_at <= %(horizon)s AND NOT (id = ANY(%(exclude)s))
ORDER BY next_fire_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_INSERT = """
INSERT INTO notifications (id, channel, recipient, subject, body, metadata, send_at, status, attempts,
    last_error, idempotency_key, created_at, updated_at, rule)
VALUES (%(id)s, %(channel)s, %(recipient)s, %(subject)s, %(body)s, %(metadata)s, %(send_at)s, %(status)s, 0,
    %(last_error)s, %(idempotency_key)s, now(), now(), %(rule)s)
ON CONFLICT (idempotency_key) DO NOTHING
"""


@contextmanager
def transaction(pool: Pool) -> Iterator[Connection]:
    with pool.connection() as conn, conn.transaction():
        yield conn


def due_rules(conn: Connection, *, horizon: datetime, limit: int, exclude: Collection[uuid.UUID] = ()) -> list[Rule]:
    params = {"horizon": horizon, "limit": limit, "exclude": list(exclude)}
    return [rows.rule(row) for row in conn.execute(_DUE_RULES, params).fetchall()]


def insert_notification(
    conn: Connection, new: NewNotification, *, status: Status, last_error: str | None, rule_id: uuid.UUID
) -> bool:
    """Insert unless the idempotency key exists; ``True`` when a row was written."""
    cursor = conn.execute(
        _INSERT,
        {
            "id": uuid.uuid4(),
            "channel": new.channel.value,
            "recipient": new.recipient,
            "subject": new.subject,
            "body": new.body,
            "metadata": Jsonb(new.metadata),
            "send_at": new.send_at,
            "status": status.value,
            "last_error": last_error,
            "idempotency_key": new.idempotency_key,
            "rule": rule_id,
        },
    )
    return cursor.rowcount == 1


def set_next_fire_at(conn: Connection, rule_id: uuid.UUID, next_fire_at: datetime | None) -> None:
    conn.execute("UPDATE rules SET next_fire_at = %s, updated_at = now() WHERE id = %s", (next_fire_at, rule_id))
