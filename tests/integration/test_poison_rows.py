"""One row nothing can read or write fails alone: the relay, the claim group and the outcome group go on.

The poisoned rows are written straight into PostgreSQL, past the API's checks, as a bug, a
restore or a hand-made fix could leave them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel, Notification, Status
from notifier.errors import PermanentDeliveryError, UnusableRow
from notifier.services.delivery import Delivered, Dispatcher
from notifier.services.relay import Relay
from notifier.settings import Settings
from notifier.store.delivery import Deliveries, Outcome, claim_many
from notifier.store.outbox import next_due


def insert(
    pool: ConnectionPool,
    *,
    send_at: str | None = None,
    status: str = "scheduled",
    recipient: str = "ops",
    enqueued: bool = False,
    age: timedelta = timedelta(minutes=1),
) -> uuid.UUID:
    """A log notification written straight into the table (``send_at`` as PostgreSQL text)."""
    notification_id = uuid.uuid4()
    created = datetime.now(UTC) - age
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO notifications (id, channel, recipient, body, metadata, send_at, status, attempts,"
            " attempt_base, created_at, updated_at, enqueued_at)"
            " VALUES (%s, 'log', %s, 'x', '{}', %s::timestamptz, %s, 0, 0, %s, %s, %s)",
            (notification_id, recipient, send_at, status, created, created, created if enqueued else None),
        )
    return notification_id


def state(pool: ConnectionPool, notification_id: uuid.UUID) -> tuple[str, str | None]:
    with pool.connection() as conn:
        row = conn.execute("SELECT status, last_error FROM notifications WHERE id = %s", (notification_id,)).fetchone()
    assert row is not None
    return row["status"], row["last_error"]


def open_attempts(pool: ConnectionPool, notification_id: uuid.UUID) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM delivery_attempts WHERE notification = %s AND finished_at IS NULL",
            (notification_id,),
        ).fetchone()
    assert row is not None
    return int(row["n"])


def errors_about(caplog: pytest.LogCaptureFixture, notification_id: uuid.UUID) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and getattr(r, "notification_id", None) == str(notification_id)
    ]


@pytest.fixture
def trigger(pool: ConnectionPool) -> Iterator[None]:
    """Claiming a notification for the recipient ``poison`` fails in PostgreSQL, as one row's bad
    value would: a per-member failure injected into the claim statement."""
    with pool.connection() as conn:
        conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'this row cannot be claimed' USING ERRCODE = 'data_exception'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_poison BEFORE UPDATE ON notifications FOR EACH ROW"
            " WHEN (NEW.recipient = 'poison' AND NEW.status = 'sending') EXECUTE FUNCTION refuse_poison()"
        )
    yield
    with pool.connection() as conn:
        conn.execute("DROP TRIGGER refuse_poison ON notifications")
        conn.execute("DROP FUNCTION refuse_poison")


class Enqueued:
    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    def __call__(self, items: Sequence[tuple[uuid.UUID, int]]) -> None:
        self.ids += [i for i, _ in items]


# --- the relay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["scheduled", "queued", "retrying"])
def test_the_relay_fails_a_due_row_it_cannot_read_and_enqueues_the_rest(
    settings: Settings, pool: ConnectionPool, caplog: pytest.LogCaptureFixture, status: str
) -> None:
    due = datetime.now(UTC).isoformat()
    normal = [insert(pool, send_at=due, status=status) for _ in range(3)]
    poisoned = insert(pool, send_at="-infinity", status=status)
    more = [insert(pool, send_at=due, status=status) for _ in range(3)]
    enqueued = Enqueued()
    with caplog.at_level(logging.INFO):
        assert Relay(settings, pool, enqueued).relay_once() == 6
    assert sorted(enqueued.ids) == sorted(normal + more)
    status_now, reason = state(pool, poisoned)
    assert status_now == "failed"
    assert reason is not None
    assert "could not be read" in reason
    assert "DataError" in reason
    assert len(errors_about(caplog, poisoned)) == 1
    assert Relay(settings, pool, enqueued).relay_once() == 0  # and only once
    assert len(errors_about(caplog, poisoned)) == 1


def test_the_relay_fails_a_lapsed_sending_row_it_cannot_read(settings: Settings, pool: ConnectionPool) -> None:
    lapsed = timedelta(seconds=settings.delivery.lease + 60)
    normal = insert(pool, status="sending", age=lapsed)
    poisoned = insert(pool, send_at="-infinity", status="sending", age=lapsed)
    enqueued = Enqueued()
    assert Relay(settings, pool, enqueued).relay_once() == 1
    assert enqueued.ids == [normal]
    assert state(pool, poisoned)[0] == "failed"


@pytest.mark.parametrize("send_at", ["infinity", "10000-01-01T00:00:00Z"])
def test_a_scheduled_row_no_driver_can_read_fails_and_next_due_still_answers(
    settings: Settings, pool: ConnectionPool, caplog: pytest.LogCaptureFixture, send_at: str
) -> None:
    later = insert(pool, send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    poisoned = insert(pool, send_at=send_at)
    horizon = timedelta(seconds=settings.delivery.schedule_horizon)
    wait = next_due(pool, horizon=horizon)
    assert wait is not None
    assert 3500 < wait < 3700  # the row an hour ahead, not the unreadable one
    with caplog.at_level(logging.INFO):
        assert Relay(settings, pool, Enqueued()).relay_once() == 0
    status_now, reason = state(pool, poisoned)
    assert status_now == "failed"
    assert reason is not None
    assert "beyond year 9999" in reason
    assert len(errors_about(caplog, poisoned)) == 1
    assert state(pool, later)[0] == "scheduled"


@pytest.mark.parametrize("status", ["queued", "retrying"])
def test_a_waiting_row_due_at_infinity_fails_whatever_its_status(
    settings: Settings, pool: ConnectionPool, status: str
) -> None:
    """A queued or retrying row is never due at ``infinity`` either: it fails rather than wait."""
    poisoned = insert(pool, send_at="infinity", status=status)
    normal = insert(pool, send_at=datetime.now(UTC).isoformat(), status=status)
    enqueued = Enqueued()
    assert Relay(settings, pool, enqueued).relay_once() == 1
    assert enqueued.ids == [normal]
    status_now, reason = state(pool, poisoned)
    assert status_now == "failed"
    assert reason is not None
    assert "beyond year 9999" in reason


def test_the_relays_scheduled_pass_fails_an_unreadable_row_too(settings: Settings, pool: ConnectionPool) -> None:
    normal = insert(pool, send_at=datetime.now(UTC).isoformat())
    poisoned = insert(pool, send_at="-infinity")
    enqueued = Enqueued()
    assert Relay(settings, pool, enqueued).relay_scheduled() == 1
    assert enqueued.ids == [normal]
    assert state(pool, poisoned)[0] == "failed"


# --- the claim group -----------------------------------------------------------------------------


def test_a_claimed_row_that_cannot_be_read_fails_alone(pool: ConnectionPool) -> None:
    ids = [insert(pool, status="queued") for _ in range(3)]
    poisoned = insert(pool, send_at="-infinity", status="queued")
    ids.insert(1, poisoned)
    answers = claim_many(pool, ids, lease=60)
    assert all(isinstance(answers[i], Notification) for i in ids if i != poisoned)
    assert isinstance(answers[poisoned], UnusableRow)
    assert [state(pool, i)[0] for i in ids if i != poisoned] == ["sending"] * 3
    status_now, reason = state(pool, poisoned)
    assert status_now == "failed"
    assert reason is not None
    assert "timestamp too small" in reason
    assert open_attempts(pool, poisoned) == 0  # the attempt the claim opened is closed


def test_a_member_whose_claim_fails_fails_alone_and_the_group_is_claimed(pool: ConnectionPool, trigger: None) -> None:
    deliveries = Deliveries(pool, lease=60)
    ids = [insert(pool, status="queued") for _ in range(4)]
    poisoned = insert(pool, status="queued", recipient="poison")
    ids.insert(2, poisoned)
    answers = deliveries._claim_group(ids)
    for notification_id, answer in zip(ids, answers, strict=True):
        if notification_id == poisoned:
            assert isinstance(answer, UnusableRow)
            assert "this row cannot be claimed" in answer.reason
        else:
            assert isinstance(answer, Notification)
            assert answer.status is Status.SENDING
    assert state(pool, poisoned)[0] == "failed"


# --- the outcome group ---------------------------------------------------------------------------


def test_a_member_whose_outcome_cannot_be_written_fails_alone(pool: ConnectionPool) -> None:
    deliveries = Deliveries(pool, lease=60)
    ids = [insert(pool, status="queued") for _ in range(4)]
    claimed = claim_many(pool, ids, lease=60)
    assert all(isinstance(n, Notification) for n in claimed.values())
    outcomes = [Outcome(i, 1, Status.SENT, "sent") for i in ids]
    # PostgreSQL's jsonb cannot hold NUL: the whole statement fails on this one member's error text.
    outcomes[1] = Outcome(ids[1], 1, Status.FAILED, "permanent_error", "the provider said \x00 no")
    answers = deliveries._finish_group(outcomes)
    assert answers[0] is None
    assert isinstance(answers[1], UnusableRow)
    assert answers[2:] == [None, None]
    assert [state(pool, i)[0] for i in ids] == ["sent", "failed", "sent", "sent"]
    reason = state(pool, ids[1])[1]
    assert reason is not None
    assert "could not be recorded" in reason
    assert open_attempts(pool, ids[1]) == 0


def test_the_dispatcher_reports_a_row_it_cannot_use_as_failed_once(
    settings: Settings, pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    class Nul(MemoryChannel):
        def send(self, notification: Notification) -> str:
            raise PermanentDeliveryError("refused: \x00")

    dispatcher = Dispatcher(settings, pool, {Channel.LOG: Nul()})
    poisoned = insert(pool, send_at="-infinity", status="queued")
    nul = insert(pool, status="queued")
    with caplog.at_level(logging.INFO):
        assert dispatcher.deliver(poisoned) == Delivered("failed")
        assert dispatcher.deliver(nul) == Delivered("failed")
    assert state(pool, poisoned)[0] == "failed"
    assert state(pool, nul)[0] == "failed"
    assert len(errors_about(caplog, poisoned)) == 1
    assert len(errors_about(caplog, nul)) == 1


def test_a_status_check_of_an_infinite_row_answers(pool: ConnectionPool) -> None:
    deliveries = Deliveries(pool, lease=60)
    for send_at in ("infinity", "-infinity"):
        notification_id = insert(pool, send_at=send_at)
        assert deliveries.status_of(notification_id) == (Status.SCHEDULED, 0.0, "log")


def test_psycopg_still_cannot_read_the_poisoned_value(pool: ConnectionPool) -> None:
    """What the tests above rely on: the value is unreadable by the worker's driver."""
    notification_id = insert(pool, send_at="-infinity")
    with pool.connection() as conn, pytest.raises(psycopg.DataError):
        conn.execute("SELECT send_at FROM notifications WHERE id = %s", (notification_id,)).fetchone()


def test_the_api_shows_an_infinite_send_at_in_utc(client: Any, pool: ConnectionPool) -> None:
    for send_at, shown in [("-infinity", "0001-01-01T00:00:00Z"), ("infinity", "9999-12-31T23:59:59.999999Z")]:
        notification_id = insert(pool, send_at=send_at)
        response = client.get(f"/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        assert response.json()["send_at"] == shown


def test_the_api_shows_every_infinite_time_of_a_row_in_utc(client: Any, pool: ConnectionPool) -> None:
    """Not only ``send_at``: a row's own times and its attempts' come back with their offset."""
    notification_id = insert(pool, send_at="2030-01-01T00:00:00Z", status="failed")
    with pool.connection() as conn:
        conn.execute(
            "UPDATE notifications SET created_at = '-infinity', updated_at = 'infinity', sent_at = 'infinity'"
            " WHERE id = %s",
            (notification_id,),
        )
        conn.execute(
            "INSERT INTO delivery_attempts (notification, number, started_at, finished_at, outcome)"
            " VALUES (%s, 1, '-infinity', 'infinity', 'permanent_error')",
            (notification_id,),
        )
    response = client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    shown = response.json()
    (attempt,) = shown["delivery_attempts"]
    assert [
        shown["created_at"],
        shown["updated_at"],
        shown["sent_at"],
        attempt["started_at"],
        attempt["finished_at"],
    ] == [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
    ]


def test_the_api_shows_a_rules_infinite_times_in_utc(client: Any, pool: ConnectionPool) -> None:
    created = client.post(
        "/rules",
        json={"name": "r", "event": "e", "channel": "log", "recipients": ["ops"], "body": "x"},
    )
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    with pool.connection() as conn:
        conn.execute(
            "UPDATE rules SET starts_at = '-infinity', ends_at = 'infinity', created_at = '-infinity' WHERE id = %s",
            (rule_id,),
        )
    shown = client.get(f"/rules/{rule_id}").json()
    assert [shown["starts_at"], shown["ends_at"], shown["created_at"]] == [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
    ]
