"""The outbox: notifications PostgreSQL holds that Redis does not (or may have lost).

A notification is written with ``enqueued_at`` null; the API enqueues it right after its commit
when it is due within the horizon. The relay takes, under ``FOR UPDATE SKIP LOCKED`` so that any
number of relays share the work: rows due within the horizon that were never enqueued (scheduled
notifications as they fall due, those whose enqueue failed, those a rule fired); rows enqueued so
long ago that the message must have been lost (Redis restarted without persistence, a retry lost
with a worker's delay queue); and rows left ``sending`` past their lease (the worker died
mid-delivery). :func:`next_due` tells the relay when to wake for the next scheduled one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.store.delivery import Pool

# A row the API enqueues itself (due within the horizon when accepted) is left to it for a grace
# period: it marks the row enqueued just after.
_NOT_THE_APIS = "(created_at <= %(fresh)s OR COALESCE(send_at, created_at) > created_at + %(ahead)s)"

_DUE = f"""
SELECT id, send_at FROM notifications
WHERE status IN ('scheduled', 'queued', 'retrying')
  AND COALESCE(send_at, created_at) <= %(horizon)s
  AND (
    (enqueued_at IS NULL AND {_NOT_THE_APIS})
    OR (enqueued_at <= %(requeue)s - CASE WHEN status = 'retrying' THEN %(retry_allowance)s ELSE interval '0' END
        AND COALESCE(send_at, created_at) <= %(requeue)s)
  )
ORDER BY COALESCE(send_at, created_at)
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 - composed of constants

_LAPSED = """
SELECT id, send_at FROM notifications
WHERE status = 'sending' AND updated_at <= %(lapsed)s
ORDER BY updated_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""


_SCHEDULED = f"""
SELECT id, send_at FROM notifications
WHERE status = 'scheduled' AND send_at <= %(horizon)s AND enqueued_at IS NULL AND {_NOT_THE_APIS}
ORDER BY send_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 - composed of constants


@dataclass(frozen=True)
class Pending:
    id: uuid.UUID
    send_at: datetime | None


@dataclass(frozen=True)
class Window:
    """What a pass takes, as of ``now``."""

    now: datetime
    horizon: timedelta
    grace: timedelta
    requeue_after: timedelta
    retry_allowance: timedelta
    lease: timedelta
    limit: int

    def params(self) -> dict[str, object]:
        return {
            "horizon": self.now + self.horizon,
            "ahead": self.horizon,
            "fresh": self.now - self.grace,
            "requeue": self.now - self.requeue_after,
            "retry_allowance": self.retry_allowance,
            "lapsed": self.now - self.lease,
            "limit": self.limit,
        }


Take = Callable[[Pool, Callable[[list[Pending]], None], Window], int]


def relay(pool: Pool, enqueue: Callable[[list[Pending]], None], window: Window) -> int:
    """Everything due, never enqueued, lost or lapsed: see the module's docstring."""
    return _take(pool, enqueue, window, (_DUE, _LAPSED))


def relay_scheduled(pool: Pool, enqueue: Callable[[list[Pending]], None], window: Window) -> int:
    """Scheduled notifications come within the horizon: an index range scan, whatever the backlog."""
    return _take(pool, enqueue, window, (_SCHEDULED,))


def _take(pool: Pool, enqueue: Callable[[list[Pending]], None], window: Window, queries: tuple[str, ...]) -> int:
    """In one transaction: lock what must be enqueued, ``enqueue`` it, mark it enqueued.

    If ``enqueue`` raises, the transaction rolls back and the rows wait for the next pass.
    """
    params = window.params()
    with pool.connection() as conn, conn.transaction():
        found = [row for query in queries for row in conn.execute(query, params).fetchall()]
        pending = [Pending(row["id"], row["send_at"]) for row in found]
        if pending:
            enqueue(pending)
            conn.execute(
                "UPDATE notifications SET enqueued_at = %s WHERE id = ANY(%s)", (window.now, [p.id for p in pending])
            )
    return len(pending)


_NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM send_at - %(horizon)s - now())::float AS wait
FROM notifications
WHERE status = 'scheduled' AND send_at > now() + %(horizon)s
ORDER BY send_at
LIMIT 1
"""


def next_due(pool: Pool, *, horizon: timedelta) -> float | None:
    """Seconds (by the database's clock) until the next scheduled notification comes within the
    horizon; ``None`` when none is waiting."""
    with pool.connection() as conn:
        row = conn.execute(_NEXT_DUE, {"horizon": horizon}).fetchone()
    return None if row is None else float(row["wait"])
