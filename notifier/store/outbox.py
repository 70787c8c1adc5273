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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from notifier.errors import UnusableRow
from notifier.store.delivery import Pool, fail_row, read_rows, reason_for

# A row the API enqueues itself (due within the horizon when accepted) is left to it for a grace
# period: it marks the row enqueued just after.
_NOT_THE_APIS = "(created_at <= %(fresh)s OR COALESCE(send_at, created_at) > created_at + %(ahead)s)"

# Why the relay takes a row never enqueued: a rule's firing, or a row the API did not enqueue
# itself because it was not due within the horizon, fell due; a row the API should have enqueued
# (an event's, or one due within the horizon when accepted) was missed by its enqueue.
_REASON = """CASE
    WHEN enqueued_at IS NOT NULL THEN 'lost'
    WHEN rule IS NOT NULL AND event IS NULL THEN 'due'
    WHEN COALESCE(send_at, created_at) <= created_at + %(ahead)s THEN 'missed'
    ELSE 'due'
END AS reason"""

_DUE = f"""
SELECT id, send_at, trace_parent, {_REASON} FROM notifications
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
SELECT id, send_at, trace_parent, 'lease_expired' AS reason FROM notifications
WHERE status = 'sending' AND updated_at <= %(lapsed)s
ORDER BY updated_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""


_SCHEDULED = f"""
SELECT id, send_at, trace_parent, {_REASON} FROM notifications
WHERE status = 'scheduled' AND send_at <= %(horizon)s AND enqueued_at IS NULL AND {_NOT_THE_APIS}
ORDER BY send_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 - composed of constants


# Waiting rows no driver could read once due: ``+infinity`` or past year 9999, whatever their status
# (a queued or retrying row there would wait as long). Nothing the API accepts lies there; a row
# written past it fails rather than wait for ever.
_BEYOND = """
SELECT id FROM notifications
WHERE status IN ('scheduled', 'queued', 'retrying') AND COALESCE(send_at, created_at) >= '9999-12-31T00:00:00Z'
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
_BEYOND_REASON = "send_at lies beyond year 9999, a time no driver can read: it will never be due"


Reason = Literal["due", "missed", "lost", "lease_expired"]
"""Why a row was taken: ``due`` (a scheduled notification fell due, or a rule fired), ``missed`` (the
API's own enqueue failed), ``lost`` (enqueued long ago, never delivered), ``lease_expired`` (left
``sending`` past its lease by a worker that died)."""


@dataclass(frozen=True)
class Pending:
    id: uuid.UUID
    send_at: datetime | None
    reason: Reason = "due"
    trace_parent: str | None = None
    """The W3C ``traceparent`` the notification was created under, if it was traced."""


@dataclass(frozen=True)
class Pass:
    """What a pass did: how many it enqueued (in all, and by reason), and the notifications it failed
    instead, with why."""

    enqueued: int
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    reasons: dict[Reason, int] = field(default_factory=dict)


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


Take = Callable[[Pool, Callable[[list[Pending]], None], Window], Pass]


def relay(pool: Pool, enqueue: Callable[[list[Pending]], None], window: Window) -> Pass:
    """Everything due, never enqueued, lost or lapsed: see the module's docstring. Waiting
    notifications due beyond any time a driver can read are failed."""
    return _take(pool, enqueue, window, (_DUE, _LAPSED), _BEYOND)


def relay_scheduled(pool: Pool, enqueue: Callable[[list[Pending]], None], window: Window) -> Pass:
    """Scheduled notifications come within the horizon: an index range scan, whatever the backlog."""
    return _take(pool, enqueue, window, (_SCHEDULED,))


def _take(
    pool: Pool,
    enqueue: Callable[[list[Pending]], None],
    window: Window,
    queries: tuple[str, ...],
    beyond: str | None = None,
) -> Pass:
    """In one transaction: lock what must be enqueued, ``enqueue`` it, mark it enqueued.

    A row that cannot be read (a ``send_at`` no driver can read, written past the API) is failed
    with the reason, in the same transaction; the others go on. If ``enqueue`` raises, the
    transaction rolls back and the rows wait for the next pass.
    """
    params = window.params()
    failed: dict[uuid.UUID, str] = {}
    with pool.connection() as conn, conn.transaction():
        pending: list[Pending] = []
        for query in queries:
            found, unreadable = read_rows(conn.execute(query, params), _pending)
            pending += found
            failed.update({i: reason_for("its row could not be read", exc) for i, exc in unreadable.items()})
        if beyond is not None:
            for found_row in conn.execute(beyond, params).fetchall():
                failed[found_row["id"]] = _BEYOND_REASON
        for notification_id, reason in list(failed.items()):
            if not isinstance(error := fail_row(conn, notification_id, reason), UnusableRow):
                failed[notification_id] = f"{reason}; and it could not be marked failed: {error}"
        if pending:
            enqueue(pending)
            conn.execute(
                "UPDATE notifications SET enqueued_at = %s WHERE id = ANY(%s)", (window.now, [p.id for p in pending])
            )
    return Pass(len(pending), failed, dict(Counter(p.reason for p in pending)))


def _pending(row: dict[str, Any]) -> Pending:
    return Pending(row["id"], row["send_at"], row["reason"], row.get("trace_parent"))


_NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM send_at - %(horizon)s - now())::float AS wait
FROM notifications
WHERE status = 'scheduled' AND send_at > now() + %(horizon)s AND send_at < 'infinity'
ORDER BY send_at
LIMIT 1
"""


def next_due(pool: Pool, *, horizon: timedelta) -> float | None:
    """Seconds (by the database's clock) until the next scheduled notification comes within the
    horizon; ``None`` when none is waiting."""
    with pool.connection() as conn:
        row = conn.execute(_NEXT_DUE, {"horizon": horizon}).fetchone()
    return None if row is None else float(row["wait"])
