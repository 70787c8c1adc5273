"""The outbox: notifications PostgreSQL holds that Redis does not (or may have lost).

A notification is written with ``enqueued_at`` null and enqueued right after its commit. The relay
takes, under ``FOR UPDATE SKIP LOCKED`` so that any number of relays share the work, the rows that
are due within the horizon and were never enqueued; those enqueued so long ago that the message
must have been lost (Redis restarted without persistence); and those left ``sending`` past their
lease (the worker died mid-delivery).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.store.tables import NotificationTable

_DUE = """
SELECT id, send_at FROM notifications
WHERE status IN ('scheduled', 'queued', 'retrying')
  AND COALESCE(send_at, created_at) <= {}::timestamptz
  AND (
    (enqueued_at IS NULL AND created_at <= {}::timestamptz)
    OR (enqueued_at <= {}::timestamptz
                       - CASE WHEN status = 'retrying' THEN {}::interval ELSE interval '0' END
        AND COALESCE(send_at, created_at) <= {}::timestamptz)
  )
ORDER BY COALESCE(send_at, created_at)
LIMIT {}
FOR UPDATE SKIP LOCKED
"""

_LAPSED = """
SELECT id, send_at FROM notifications
WHERE status = 'sending' AND updated_at <= {}::timestamptz
ORDER BY updated_at
LIMIT {}
FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class Pending:
    id: uuid.UUID
    send_at: datetime | None


async def relay(
    enqueue: Callable[[list[Pending]], Awaitable[None]],
    *,
    now: datetime,
    horizon: timedelta,
    grace: timedelta,
    requeue_after: timedelta,
    retry_allowance: timedelta,
    lease: timedelta,
    limit: int,
) -> int:
    """In one transaction: lock what must be enqueued, ``enqueue`` it, mark it enqueued.

    If ``enqueue`` raises, the transaction rolls back and the rows wait for the next pass.
    """
    async with NotificationTable._meta.db.transaction():
        rows = await NotificationTable.raw(
            _DUE, now + horizon, now - grace, now - requeue_after, retry_allowance, now - requeue_after, limit
        )
        rows += await NotificationTable.raw(_LAPSED, now - lease, limit)
        pending = [Pending(row["id"], row["send_at"]) for row in rows]
        if pending:
            await enqueue(pending)
            await NotificationTable.update({NotificationTable.enqueued_at: now}).where(
                NotificationTable.id.is_in([p.id for p in pending])
            )
    return len(pending)
