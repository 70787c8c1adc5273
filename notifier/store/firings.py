"""Sync queries for the scheduler tick (psycopg): due schedule rules and the notifications they fire.

A tick reads the due rules without keeping them locked, renders their firings with no
transaction open, then takes each rule ``FOR UPDATE SKIP LOCKED`` only while it writes that rule's
notifications (:func:`lock_unchanged`): a ``PATCH`` or ``DELETE`` of a rule never waits on a slow
render, and two ticks at once (two schedulers, a rolling deploy) share the rules instead of both
firing one. Every notification a firing creates has a deterministic idempotency key that the
database keeps unique, so even a firing planned twice creates its notifications once.
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
"""

_LOCK_UNCHANGED = """
SELECT id FROM rules
WHERE id = %(id)s AND revision = %(revision)s AND enabled AND next_fire_at = %(next_fire_at)s
FOR UPDATE SKIP LOCKED
"""

_RECORD_FAILURE = """
UPDATE rules SET failures = failures + 1,
    enabled = CASE WHEN failures + 1 >= %(limit)s THEN false ELSE enabled END,
    next_fire_at = CASE WHEN failures + 1 >= %(limit)s THEN NULL ELSE next_fire_at END,
    disabled_reason = CASE WHEN failures + 1 >= %(limit)s THEN %(reason)s ELSE disabled_reason END,
    updated_at = now()
WHERE id = %(id)s
RETURNING NOT enabled AS disabled
"""

_INSERT = """
INSERT INTO notifications (id, channel, recipient, subject, body, metadata, send_at, status, attempts,
    last_error, idempotency_key, created_at, updated_at, rule, trace_parent)
VALUES (%(id)s, %(channel)s, %(recipient)s, %(subject)s, %(body)s, %(metadata)s, %(send_at)s, %(status)s, 0,
    %(last_error)s, %(idempotency_key)s, now(), now(), %(rule)s, %(trace_parent)s)
ON CONFLICT (idempotency_key) DO NOTHING
"""


@contextmanager
def transaction(pool: Pool) -> Iterator[Connection]:
    with pool.connection() as conn, conn.transaction():
        yield conn


def due_rules(conn: Connection, *, horizon: datetime, limit: int, exclude: Collection[uuid.UUID] = ()) -> list[Rule]:
    """The schedule rules due by ``horizon``, soonest first; read, not locked."""
    params = {"horizon": horizon, "limit": limit, "exclude": list(exclude)}
    return [rows.rule(row) for row in conn.execute(_DUE_RULES, params).fetchall()]


def insert_notification(
    conn: Connection,
    new: NewNotification,
    *,
    status: Status,
    last_error: str | None,
    rule_id: uuid.UUID,
    trace_parent: str | None = None,
) -> bool:
    """Insert unless the idempotency key exists; ``True`` when a row was written. ``trace_parent``
    is the W3C ``traceparent`` of the firing."""
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
            "trace_parent": trace_parent,
        },
    )
    return cursor.rowcount == 1


def set_next_fire_at(conn: Connection, rule_id: uuid.UUID, next_fire_at: datetime | None) -> None:
    conn.execute("UPDATE rules SET next_fire_at = %s, updated_at = now() WHERE id = %s", (next_fire_at, rule_id))


def lock_unchanged(conn: Connection, rule: Rule) -> bool:
    """Lock the rule for this transaction if it is still as ``rule`` read it (same revision, still
    enabled, same ``next_fire_at``) and no one else holds it; ``False`` means leave it alone."""
    params = {"id": rule.id, "revision": rule.revision, "next_fire_at": rule.next_fire_at}
    return conn.execute(_LOCK_UNCHANGED, params).fetchone() is not None


def record_outcome(conn: Connection, rule_id: uuid.UUID, *, failure: str | None, limit: int) -> bool:
    """Count a failed firing (or reset the count after a good one); at ``limit`` consecutive
    failures the rule is disabled with ``failure`` as the reason. ``True`` when it was disabled."""
    if failure is None:
        conn.execute("UPDATE rules SET failures = 0 WHERE id = %s AND failures <> 0", (rule_id,))
        return False
    reason = f"disabled after {limit} consecutive failed firings; the last: {failure}"
    row = conn.execute(_RECORD_FAILURE, {"id": rule_id, "limit": limit, "reason": reason}).fetchone()
    return bool(row and row["disabled"])
