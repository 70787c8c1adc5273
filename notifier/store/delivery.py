"""Sync queries for the worker's delivery path (psycopg in Dramatiq's worker threads).

Claiming is one conditional UPDATE that also writes the attempt row, so a message delivered
twice, or to two workers at once, is sent once: only one UPDATE finds the row claimable.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from notifier.domain import Channel, Notification, Status, sources

Pool = ConnectionPool[Connection[DictRow]]

_CLAIMABLE = [s.value for s in sources(Status.SENDING)]

_CLAIM = """
WITH claimed AS (
    UPDATE notifications
    SET status = 'sending', attempts = attempts + 1, updated_at = now()
    WHERE id = %(id)s AND status = ANY(%(claimable)s)
      AND (send_at IS NULL OR send_at <= now() + interval '50 milliseconds')
    RETURNING *
), attempt AS (
    INSERT INTO delivery_attempts (notification, number, started_at)
    SELECT id, attempts, now() FROM claimed
)
SELECT * FROM claimed
"""

_FINISH = """
WITH updated AS (
    UPDATE notifications
    SET status = %(status)s::text, last_error = %(error)s::text, updated_at = now(),
        sent_at = CASE WHEN %(status)s::text = 'sent' THEN now() ELSE sent_at END,
        enqueued_at = CASE WHEN %(status)s::text = 'retrying' THEN now() ELSE enqueued_at END
    WHERE id = %(id)s AND status = 'sending' AND attempts = %(number)s
    RETURNING id
)
UPDATE delivery_attempts
SET finished_at = now(), outcome = %(outcome)s::text, error = %(error)s::text,
    provider_message_id = %(provider_message_id)s
WHERE notification = (SELECT id FROM updated) AND number = %(number)s
"""


def open_pool(database_url: str, *, size: int) -> Pool:
    pool: Pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        connection_class=Connection[DictRow],
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def _notification(row: dict[str, Any]) -> Notification:
    return Notification(
        id=row["id"],
        channel=Channel(row["channel"]),
        recipient=row["recipient"],
        subject=row["subject"],
        body=row["body"],
        metadata=row["metadata"],
        send_at=row["send_at"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
    )


def claim(pool: Pool, notification_id: uuid.UUID) -> Notification | None:
    """Take the notification for one attempt (status ``sending``); ``None`` if it is not claimable."""
    with pool.connection() as conn:
        row = conn.execute(_CLAIM, {"id": notification_id, "claimable": _CLAIMABLE}).fetchone()
    return _notification(row) if row else None


def status_of(pool: Pool, notification_id: uuid.UUID) -> tuple[Status, Any] | None:
    with pool.connection() as conn:
        row = conn.execute("SELECT status, send_at FROM notifications WHERE id = %s", (notification_id,)).fetchone()
    return (Status(row["status"]), row["send_at"]) if row else None


def finish(
    pool: Pool,
    notification_id: uuid.UUID,
    *,
    number: int,
    status: Status,
    outcome: str,
    error: str | None = None,
    provider_message_id: str | None = None,
) -> None:
    """Record the attempt's outcome and the notification's new status, in one statement."""
    with pool.connection() as conn:
        conn.execute(
            _FINISH,
            {
                "id": notification_id,
                "number": number,
                "status": status.value,
                "outcome": outcome,
                "error": error,
                "provider_message_id": provider_message_id,
            },
        )
