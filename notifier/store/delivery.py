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

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, NamedTuple, TypeVar

import msgspec
import psycopg
from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool

from notifier.domain import Notification, Status, sources
from notifier.errors import GroupStalled, UnusableRow
from notifier.store import rows

Pool = ConnectionPool[Connection[DictRow]]
T = TypeVar("T")

_CLAIMABLE = ", ".join(sorted(f"'{s.value}'" for s in sources(Status.SENDING)))
_ACTIVE = ", ".join(sorted(f"'{s.value}'" for s in sources(Status.FAILED)))

FINISH_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

GROUP_SIZE = 64
"""Claims (or outcomes) one statement writes at most."""

FOLLOWER_WAIT = 30.0
"""Seconds a thread waits for the group it joined before it gives up (:class:`GroupStalled`)."""


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


class State(NamedTuple):
    """Where a notification stands, for a message that could not claim it."""

    status: Status
    wait: float
    """Seconds (by the database's clock) until ``send_at``; 0 if due."""
    channel: str


def status_of(pool: Pool, notification_id: uuid.UUID) -> State | None:
    """The notification's status, how long until it is due, and its channel."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT status, channel, CASE WHEN isfinite(send_at)"
            " THEN GREATEST(0, EXTRACT(EPOCH FROM send_at - now()))::float END AS wait"
            " FROM notifications WHERE id = %s",
            (notification_id,),
        ).fetchone()
    return State(Status(row["status"]), row["wait"] or 0.0, row["channel"]) if row else None


ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError)
"""What one row's values can make a statement raise; a lost connection or a bug is not one."""

MAX_REASON = 500

# Takes the notification out of delivery, closing the attempt a claim may have opened. It reads
# nothing back, so that a row nothing can read can still be failed.
_FAIL = f"""
WITH failed AS (
    UPDATE notifications
    SET status = 'failed', last_error = %(reason)s, updated_at = now()
    WHERE id = %(id)s AND status IN ({_ACTIVE})
    RETURNING id, attempts
)
UPDATE delivery_attempts a
SET finished_at = now(), outcome = 'error', error = %(reason)s
FROM failed f
WHERE a.notification = f.id AND a.number = f.attempts AND a.finished_at IS NULL
"""  # noqa: S608 - the list is the domain's statuses, not input


def reason_for(what: str, exc: BaseException) -> str:
    """The ``last_error`` of a notification failed for its row: what could not be done and why."""
    return f"{what}: {type(exc).__name__}: {exc}".replace("\x00", "")[:MAX_REASON]


def fail_row(conn: Connection[DictRow], notification_id: uuid.UUID, reason: str) -> UnusableRow | psycopg.Error:
    """Mark a notification still in delivery ``failed`` with ``reason``, reading nothing of its row.

    The answer is what its caller is to be told: :class:`UnusableRow`, or the error that kept even
    this from being written (the row is then left as it was). A savepoint keeps such an error from
    aborting the rest of a transaction.
    """
    try:
        with conn.transaction():
            conn.execute(_FAIL, {"id": notification_id, "reason": reason})
    except ROW_ERRORS as exc:
        return exc
    return UnusableRow(notification_id, reason)


def read_rows(
    cursor: psycopg.Cursor[DictRow], convert: Callable[[DictRow], T]
) -> tuple[list[T], dict[uuid.UUID, BaseException]]:
    """The rows of ``cursor`` converted, and the ids of those that could not be (with why).

    All at once when they can be; else row by row, naming a row that cannot be read by the id
    PostgreSQL sent (the result's raw text), so one bad value does not hide the others.
    """
    with contextlib.suppress(Exception):  # any value of any row: found below
        return [convert(row) for row in cursor.fetchall()], {}
    result, columns = cursor.pgresult, cursor.description
    assert result is not None
    assert columns is not None
    id_column = [c.name for c in columns].index("id")
    good: list[T] = []
    bad: dict[uuid.UUID, BaseException] = {}
    for i in range(result.ntuples):
        cursor.scroll(i, mode="absolute")
        try:
            row = cursor.fetchone()
            assert row is not None
            good.append(convert(row))
        except Exception as exc:  # recorded as the row's reason
            raw = result.get_value(i, id_column)
            assert raw is not None
            bad[uuid.UUID(raw.decode())] = exc
    return good, bad


def claim_many(pool: Pool, ids: Sequence[uuid.UUID], *, lease: float) -> dict[uuid.UUID, Notification | UnusableRow]:
    """Take each notification for one attempt (status ``sending``), in one statement; those not
    claimable are missing from the answer. One claimed but unreadable is failed, its answer an
    :class:`UnusableRow`."""
    with pool.connection() as conn:
        cursor = conn.execute(_CLAIM, {"ids": _id_array(ids), "lease": lease})
        claimed, unreadable = read_rows(cursor, rows.notification)
        answers: dict[uuid.UUID, Notification | UnusableRow] = {n.id: n for n in claimed}
        for notification_id, exc in unreadable.items():
            failed = fail_row(conn, notification_id, reason_for("its row could not be read", exc))
            answers[notification_id] = (
                failed if isinstance(failed, UnusableRow) else UnusableRow(notification_id, str(failed))
            )
    return answers


def finish_many(pool: Pool, outcomes: Sequence[Outcome]) -> None:
    """Record the attempts' outcomes and the notifications' new statuses, in one statement."""
    params = {"ids": _id_array(o.notification_id for o in outcomes), "outcomes": _encode(outcomes).decode()}
    with pool.connection() as conn:
        conn.execute(_FINISH, params)


def _id_array(ids: Iterable[uuid.UUID]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


class Deliveries:
    """Claims and outcomes for the threads of one worker process, grouped (see the module's doc).

    One member's row never fails the others: a group whose statement fails on a row's values is
    run again member by member, and a member that fails alone is marked ``failed`` with the reason
    (its caller gets :class:`UnusableRow`).
    """

    def __init__(self, pool: Pool, *, lease: float, wait: float = FOLLOWER_WAIT) -> None:
        self.pool = pool
        self.lease = lease
        self._claims: Group[uuid.UUID, Notification | None] = Group(self._claim_group, wait=wait)
        self._outcomes: Group[Outcome, None] = Group(self._finish_group, wait=wait)

    def claim(self, notification_id: uuid.UUID) -> Notification | None:
        """Take the notification for one attempt (status ``sending``); ``None`` if it is not claimable.

        Raises :class:`UnusableRow` if its row could not be claimed or read (it is now ``failed``).
        """
        return self._claims(notification_id)

    def finish(self, outcome: Outcome) -> None:
        """Record the attempt's outcome and the notification's new status.

        A lost connection is retried for a few seconds: failing here after a send would leave the
        row to its lease, and the notification would be sent again. So is a group that did not
        answer: recording an outcome twice changes nothing. Raises :class:`UnusableRow` if the
        outcome could not be written (the notification is ``failed`` with the reason instead).
        """
        for pause in (*FINISH_RETRY_PAUSES, None):
            try:
                self._outcomes(outcome)
                return
            except (psycopg.OperationalError, GroupStalled):
                if pause is None:
                    raise
                time.sleep(pause)
                self.pool.check()  # drop the pool's connections the server has closed meanwhile

    def status_of(self, notification_id: uuid.UUID) -> State | None:
        return status_of(self.pool, notification_id)

    def _claim_group(self, ids: list[uuid.UUID]) -> list[Notification | BaseException | None]:
        try:
            claimed = claim_many(self.pool, ids, lease=self.lease)
        except ROW_ERRORS as exc:
            if len(ids) == 1:
                return [self._fail(ids[0], reason_for("it could not be claimed", exc))]
            return [answer for i in ids for answer in self._claim_group([i])]
        # The same id twice in one group (a message delivered twice): the first gets the claim.
        return [claimed.pop(i, None) for i in ids]

    def _finish_group(self, outcomes: list[Outcome]) -> list[BaseException | None]:
        try:
            finish_many(self.pool, outcomes)
        except ROW_ERRORS as exc:
            if len(outcomes) == 1:
                what = f"its outcome ({outcomes[0].outcome}) could not be recorded"
                return [self._fail(outcomes[0].notification_id, reason_for(what, exc))]
            return [answer for o in outcomes for answer in self._finish_group([o])]
        return [None] * len(outcomes)

    def _fail(self, notification_id: uuid.UUID, reason: str) -> UnusableRow | psycopg.Error:
        with self.pool.connection() as conn:
            return fail_row(conn, notification_id, reason)


In = TypeVar("In")
Out = TypeVar("Out")


class _Request(Generic[In, Out]):
    __slots__ = ("done", "error", "finished", "item", "lead", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.done = threading.Lock()  # held until the request is done: cheaper than an Event
        self.done.acquire()
        self.lead = False
        """Holds the lead and has not yet taken a group: it must lead one or pass the lead on."""
        self.finished = False
        self.result: Out | None = None
        self.error: BaseException | None = None


def _release(done: threading.Lock) -> None:
    """Wake the request's thread; releasing twice (a hand-over done again) is harmless."""
    with contextlib.suppress(RuntimeError):
        done.release()


class Group(Generic[In, Out]):
    """Runs ``run`` once for the requests of every thread waiting to: group commit.

    The first thread to call while no group is running leads: it takes every request waiting (up
    to :data:`GROUP_SIZE`), runs them together, gives each thread its result (or the exception;
    ``run`` may answer one member with an exception of its own), and hands the lead to the first
    thread that arrived meanwhile. Nothing waits for a group to fill, so a thread alone runs
    alone, at once.

    No exception strikes a follower's call but its own: one raised into the leader's thread
    (Dramatiq's time limit raises asynchronously, at any point) while its group runs gives the
    followers :class:`GroupStalled`, and one during the hand-over is caught and the hand-over
    finished. As a last resort a follower waits at most ``wait`` seconds: still unclaimed by a
    group then, it leads one of its own; inside a group that has not answered, it raises
    :class:`GroupStalled`.
    """

    def __init__(
        self, run: Callable[[list[In]], Sequence[Out | BaseException]], *, wait: float = FOLLOWER_WAIT
    ) -> None:
        self._run = run
        self._wait = wait
        self._lock = threading.Lock()
        self._waiting: list[_Request[In, Out]] = []
        self._leaders = 0  # one, but for a follower that gave up waiting and leads a group alongside

    def __call__(self, item: In) -> Out:
        request: _Request[In, Out] = _Request(item)
        with self._lock:
            self._waiting.append(request)
            if not self._leaders:
                self._leaders = 1
                request.lead = True
        try:
            if not request.lead:
                self._follow(request)
            if request.lead:
                self._lead(request)
        except BaseException:
            self._abandon(request)
            raise
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _follow(self, request: _Request[In, Out]) -> None:
        if request.done.acquire(timeout=self._wait):
            return
        with self._lock:
            if request.lead or request.finished:
                return
            if request in self._waiting:  # no group took it: its leader is stuck or gone
                request.lead = True
                self._leaders += 1
                return
        raise GroupStalled(f"the group this call joined did not answer within {self._wait:g}s")

    def _abandon(self, request: _Request[In, Out]) -> None:
        """An exception left ``__call__``: take the request out of the queue, and pass on the lead
        if it held one it had not yet used."""
        successor = None
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
            if request.lead:
                request.lead = False
                successor = self._pass_lead()
        if successor is not None:
            _release(successor.done)

    def _pass_lead(self) -> _Request[In, Out] | None:
        """The next leader (the first request waiting), or none; called with the lock held."""
        successor = next((r for r in self._waiting if not r.lead), None)
        if successor is None:
            self._leaders -= 1
        else:
            successor.lead = True
        return successor

    def _lead(self, own: _Request[In, Out]) -> None:
        group: list[_Request[In, Out]] = []
        handed: list[_Request[In, Out] | None] = []
        try:
            with self._lock:
                own.lead = False
                group, rest = [own], []
                for request in self._waiting:
                    if request is own:
                        continue
                    if len(group) < GROUP_SIZE and not request.lead:
                        group.append(request)
                    else:
                        rest.append(request)
                self._waiting = rest
            results = self._run([r.item for r in group])
            for request, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    request.error = result
                else:
                    request.result = result
        except Exception as exc:
            for request in group:
                request.error = exc
        except BaseException as exc:
            for request in group:
                request.error = exc if request is own else GroupStalled(f"the group's leader was interrupted: {exc!r}")
            raise
        finally:
            try:
                self._hand_over(own, group, handed)
            except BaseException:
                self._hand_over(own, group, handed)  # struck during the hand-over: finish it, then go on
                raise

    def _hand_over(
        self, own: _Request[In, Out], group: list[_Request[In, Out]], handed: list[_Request[In, Out] | None]
    ) -> None:
        """Wake the group's threads and the next leader. Done again after an interruption, it
        wakes them again and chooses no second leader (``handed`` remembers the first)."""
        for request in group:
            request.finished = True
        if not handed and group:  # without a group the lead was never taken: ``_abandon`` passes it
            with self._lock:
                handed.append(self._pass_lead())
        for request in group:
            if request is not own:
                _release(request.done)
        if handed and handed[0] is not None:
            _release(handed[0].done)
