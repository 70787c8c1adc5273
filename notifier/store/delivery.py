"""Sync queries for the worker's delivery path (psycopg in Dramatiq's worker threads).

Claiming is one conditional UPDATE that also writes the attempt row, so a message delivered
twice, or to two workers at once, is sent once: only one UPDATE finds the row claimable. A claim
is a lease: a row left ``sending`` longer than ``NOTIFIER_DELIVERY_LEASE`` (its worker died, or
lost the database before it could record the outcome) may be claimed again, and the attempt it
left open is recorded as ``abandoned``.
"""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from notifier.domain import Notification, Status, sources
from notifier.store import rows

Pool = ConnectionPool[Connection[DictRow]]

_CLAIMABLE = [s.value for s in sources(Status.SENDING)]

FINISH_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

_CLAIM = """
WITH claimed AS (
    UPDATE notifications
    SET status = 'sending', attempts = attempts + 1, updated_at = now()
    WHERE id = %(id)s AND status = ANY(%(claimable)s)
      AND (status <> 'sending' OR updated_at < now() - %(lease)s * interval '1 second')
      AND (send_at IS NULL OR send_at <= now() + interval '50 milliseconds')
    RETURNING *
), abandoned AS (
    UPDATE delivery_attempts
    SET finished_at = now(), outcome = 'abandoned',
        error = 'lease expired: the worker stopped before it recorded an outcome'
    WHERE notification = (SELECT id FROM claimed) AND finished_at IS NULL
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


def claim(pool: Pool, notification_id: uuid.UUID, *, lease: float) -> Notification | None:
    """Take the notification for one attempt (status ``sending``); ``None`` if it is not claimable."""
    with pool.connection() as conn:
        row = conn.execute(_CLAIM, {"id": notification_id, "claimable": _CLAIMABLE, "lease": lease}).fetchone()
    return rows.notification(row) if row else None


def status_of(pool: Pool, notification_id: uuid.UUID) -> tuple[Status, float] | None:
    """The status, and how many seconds (by the database's clock) until ``send_at``; 0 if due."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT status, GREATEST(0, EXTRACT(EPOCH FROM send_at - now()))::float AS wait"
            " FROM notifications WHERE id = %s",
            (notification_id,),
        ).fetchone()
    return (Status(row["status"]), row["wait"] or 0.0) if row else None


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
    """Record the attempt's outcome and the notification's new status, in one statement.

    A lost connection is retried for a few seconds: failing here after a send would leave the row
    to its lease, and the notification would be sent again.
    """
    params = {
        "id": notification_id,
        "number": number,
        "status": status.value,
        "outcome": outcome,
        "error": error,
        "provider_message_id": provider_message_id,
    }
    for pause in (*FINISH_RETRY_PAUSES, None):
        try:
            with pool.connection() as conn:
                conn.execute(_FINISH, params)
            return
        except psycopg.OperationalError:
            if pause is None:
                raise
            time.sleep(pause)
            pool.check()  # drop the pool's connections the server has closed meanwhile
