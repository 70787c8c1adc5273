"""Sync queries for the worker's delivery path (psycopg in Dramatiq's worker threads).

Claiming is one conditional UPDATE that also writes the attempt row, so a message delivered
twice, or to two workers at once, is sent once: only one UPDATE finds the row claimable. A claim
is a lease: a row left ``sending`` longer than ``NOTIFIER_DELIVERY_LEASE`` (its worker died, or
lost the database before it could record the outcome) may be claimed again, and the attempt it
left open is recorded as ``abandoned``.

Claims and outcomes are written in groups (:class:`Deliveries`): the worker threads of a process
that reach the database while another one's statement runs go together in the next statement,
one round trip and one commit for all of them. A thread alone goes alone, at once. Each thread
still returns only once its own claim or outcome is committed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import msgspec
import psycopg
from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from notifier.domain import Notification, Status, sources
from notifier.store import rows

Pool = ConnectionPool[Connection[DictRow]]

_CLAIMABLE = ", ".join(sorted(f"'{s.value}'" for s in sources(Status.SENDING)))

FINISH_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

GROUP_SIZE = 64
"""Claims (or outcomes) one statement writes at most."""

# The statements take their lists as one text parameter each (an array literal of ids, a JSON
# array of outcomes): psycopg adapts a Python list item by item, which cost more CPU than the
# rest of a delivery. `id = ANY(...)` keeps the primary key the way in; its index scan takes the
# ids, and so the row locks, in sorted order: two claim groups that share ids cannot deadlock
# (bulk writers elsewhere must not wait on these locks: see ``notifications.mark_enqueued``).
_CLAIM = f"""
WITH claimed AS (
    UPDATE notifications
    SET status = 'sending', attempts = attempts + 1, updated_at = now()
    WHERE id = ANY(%(ids)s::uuid[]) AND status IN ({_CLAIMABLE})
      AND (status <> 'sending' OR updated_at < now() - %(lease)s * interval '1 second')
      AND (send_at IS NULL OR send_at <= now() + interval '50 milliseconds')
    RETURNING *
), abandoned AS (
    UPDATE delivery_attempts
    SET finished_at = now(), outcome = 'abandoned',
        error = 'lease expired: the worker stopped before it recorded an outcome'
    WHERE notification = ANY(SELECT id FROM claimed WHERE attempts > 1) AND finished_at IS NULL
), attempt AS (
    INSERT INTO delivery_attempts (notification, number, started_at)
    SELECT id, attempts, now() FROM claimed
)
SELECT * FROM claimed
"""  # noqa: S608 - the list is the domain's statuses, not input

_FINISH = """
WITH outcome AS (
    SELECT * FROM jsonb_to_recordset(%(outcomes)s::jsonb)
        AS o (id uuid, number int, status text, outcome text, error text, provider_message_id text)
), updated AS (
    UPDATE notifications n
    SET status = o.status, last_error = o.error, updated_at = now(),
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE n.sent_at END,
        enqueued_at = CASE WHEN o.status = 'retrying' THEN now() ELSE n.enqueued_at END
    FROM outcome o
    WHERE n.id = ANY(%(ids)s::uuid[]) AND n.id = o.id AND n.status = 'sending' AND n.attempts = o.number
    RETURNING n.id, n.attempts
)
UPDATE delivery_attempts a
SET finished_at = now(), outcome = o.outcome, error = o.error, provider_message_id = o.provider_message_id
FROM updated u JOIN outcome o ON o.id = u.id
WHERE a.notification = u.id AND a.number = u.attempts
"""


class Outcome(msgspec.Struct, frozen=True, rename={"notification_id": "id"}):
    """What one attempt came to: the notification's new status and the attempt's outcome."""

    notification_id: uuid.UUID
    number: int
    status: Status
    outcome: str
    error: str | None = None
    provider_message_id: str | None = None


_encode = msgspec.json.Encoder().encode


def open_pool(database_url: str, *, size: int) -> Pool:
    """The sync pool of a worker or scheduler process: autocommit, rows as dicts, generic plans."""
    pool: Pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        connection_class=Connection[DictRow],
        configure=_configure,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def _configure(conn: Connection[DictRow]) -> None:
    # psycopg prepares a statement run five times; PostgreSQL would still plan the claim anew for
    # each list of ids (its custom plans), which cost more than running it. These statements take
    # one path whatever their parameters: the primary key.
    conn.execute("SET plan_cache_mode = force_generic_plan")
    set_json_loads(msgspec.json.decode, conn)  # the json module took a tenth of a delivery's CPU


def status_of(pool: Pool, notification_id: uuid.UUID) -> tuple[Status, float] | None:
    """The status, and how many seconds (by the database's clock) until ``send_at``; 0 if due."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT status, GREATEST(0, EXTRACT(EPOCH FROM send_at - now()))::float AS wait"
            " FROM notifications WHERE id = %s",
            (notification_id,),
        ).fetchone()
    return (Status(row["status"]), row["wait"] or 0.0) if row else None


def claim_many(pool: Pool, ids: Sequence[uuid.UUID], *, lease: float) -> dict[uuid.UUID, Notification]:
    """Take each notification for one attempt (status ``sending``), in one statement; those not
    claimable are missing from the answer."""
    with pool.connection() as conn:
        found = conn.execute(_CLAIM, {"ids": _id_array(ids), "lease": lease}).fetchall()
    return {row["id"]: rows.notification(row) for row in found}


def finish_many(pool: Pool, outcomes: Sequence[Outcome]) -> None:
    """Record the attempts' outcomes and the notifications' new statuses, in one statement."""
    params = {"ids": _id_array(o.notification_id for o in outcomes), "outcomes": _encode(outcomes).decode()}
    with pool.connection() as conn:
        conn.execute(_FINISH, params)


def _id_array(ids: Iterable[uuid.UUID]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


class Deliveries:
    """Claims and outcomes for the threads of one worker process, grouped (see the module's doc)."""

    def __init__(self, pool: Pool, *, lease: float) -> None:
        self.pool = pool
        self.lease = lease
        self._claims: Group[uuid.UUID, Notification | None] = Group(self._claim_group)
        self._outcomes: Group[Outcome, None] = Group(self._finish_group)

    def claim(self, notification_id: uuid.UUID) -> Notification | None:
        """Take the notification for one attempt (status ``sending``); ``None`` if it is not claimable."""
        return self._claims(notification_id)

    def finish(self, outcome: Outcome) -> None:
        """Record the attempt's outcome and the notification's new status.

        A lost connection is retried for a few seconds: failing here after a send would leave the
        row to its lease, and the notification would be sent again.
        """
        for pause in (*FINISH_RETRY_PAUSES, None):
            try:
                self._outcomes(outcome)
                return
            except psycopg.OperationalError:
                if pause is None:
                    raise
                time.sleep(pause)
                self.pool.check()  # drop the pool's connections the server has closed meanwhile

    def status_of(self, notification_id: uuid.UUID) -> tuple[Status, float] | None:
        return status_of(self.pool, notification_id)

    def _claim_group(self, ids: list[uuid.UUID]) -> list[Notification | None]:
        claimed = claim_many(self.pool, ids, lease=self.lease)
        # The same id twice in one group (a message delivered twice): the first gets the claim.
        return [claimed.pop(i, None) for i in ids]

    def _finish_group(self, outcomes: list[Outcome]) -> list[None]:
        finish_many(self.pool, outcomes)
        return [None] * len(outcomes)


In = TypeVar("In")
Out = TypeVar("Out")


class _Request(Generic[In, Out]):
    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.done = threading.Lock()  # held until the request is done: cheaper than an Event
        self.done.acquire()
        self.lead = False
        self.result: Out | None = None
        self.error: BaseException | None = None


class Group(Generic[In, Out]):
    """Runs ``run`` once for the requests of every thread waiting to: group commit.

    The first thread to call while no group is running leads: it takes every request waiting (up
    to :data:`GROUP_SIZE`), runs them together, gives each thread its result (or the exception),
    and hands the lead to the first thread that arrived meanwhile. Nothing waits for a group to
    fill, so a thread alone runs alone, at once.
    """

    def __init__(self, run: Callable[[list[In]], list[Out]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._waiting: list[_Request[In, Out]] = []
        self._running = False

    def __call__(self, item: In) -> Out:
        request: _Request[In, Out] = _Request(item)
        with self._lock:
            self._waiting.append(request)
            lead = not self._running
            self._running = True
        if not lead:
            request.done.acquire()  # the leader always releases it: its hand-over is in a `finally`
        if lead or request.lead:
            self._lead(request)
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _lead(self, own: _Request[In, Out]) -> None:
        group: list[_Request[In, Out]] = [own]
        try:
            with self._lock:
                group, self._waiting = self._waiting[:GROUP_SIZE], self._waiting[GROUP_SIZE:]
            results = self._run([r.item for r in group])
            for request, result in zip(group, results, strict=True):
                request.result = result
        except BaseException as exc:
            for request in group:
                request.error = exc
        finally:
            with self._lock:
                successor = self._waiting[0] if self._waiting else None
                if successor is None:
                    self._running = False
                else:
                    successor.lead = True
            for request in group:
                if request is not own:
                    request.done.release()
            if successor is not None:
                successor.done.release()
