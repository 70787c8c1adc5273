"""The outbox: notifications PostgreSQL holds that Redis does not (or may have lost).

A notification is written with ``enqueued_at`` null and enqueued right after its commit. The relay
takes, under ``FOR UPDATE SKIP LOCKED`` so that any number of relays share the work, the rows that
are due within the horizon and were never enqueued, or were enqueued so long ago that the message
must have been lost (Redis restarted without persistence, a worker died holding it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.store.tables import NotificationTable

_DUE = """
SELECT id, send_at FROM notifications
WHERE status IN ('scheduled', 'queued', 'retrying')
  AND COALESCE(send_at, created_at) <= {}::timestamptz
  AND (
    (enqueued_at IS NULL AND created_at <= {}::timestamptz)
    OR (enqueued_at <= {}::timestamptz - CASE WHEN status = 'retrying' THEN {}::interval ELSE interval '0' END
        AND COALESCE(send_at, created_at) <= {}::timestamptz)
  )
ORDER BY COALESCE(send_at, created_at)
LIMIT {}
FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class Pending:
    id: uuid.UUID
    send_at: datetime | None


async def take_due(
    *,
    now: datetime,
    horizon: timedelta,
    grace: timedelta,
    requeue_after: timedelta,
    retry_allowance: timedelta,
    limit: int,
) -> list[Pending]:
    """Lock and return what must be enqueued; call inside a transaction and mark them enqueued."""
    rows = await NotificationTable.raw(
        _DUE,
        now + horizon,
        now - grace,
        now - requeue_after,
        retry_allowance,
        now - requeue_after,
        limit,
    )
    return [Pending(row["id"], row["send_at"]) for row in rows]
