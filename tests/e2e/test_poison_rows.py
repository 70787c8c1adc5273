"""Real processes: a row nothing can read, written past the API, fails alone; the rest go out on time."""

from __future__ import annotations

import statistics
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.e2e.conftest import StartStack, wait_until


def lateness(notification: dict[str, Any]) -> float:
    started = datetime.fromisoformat(notification["delivery_attempts"][0]["started_at"])
    return (started - datetime.fromisoformat(notification["send_at"])).total_seconds()


def test_poisoned_rows_fail_alone_and_the_scheduled_ones_go_out_on_time(
    start_stack: StartStack, database_url: str
) -> None:
    stack = start_stack()
    base = datetime.now(UTC) + timedelta(seconds=4)
    scheduled = [
        stack.notify(
            channel="log",
            recipient="ops",
            body=f"due {i}",
            send_at=(base + timedelta(milliseconds=500 * i)).isoformat(),
        )["id"]
        for i in range(8)
    ]
    poisoned: dict[str, str] = {}
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for send_at, status in [
            ("-infinity", "scheduled"),
            ("infinity", "scheduled"),
            ("-infinity", "queued"),
            ("-infinity", "retrying"),
        ]:
            notification_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO notifications (id, channel, recipient, body, metadata, send_at, status, attempts,"
                " attempt_base, created_at, updated_at)"
                " VALUES (%s, 'log', 'ops', 'poison', '{}', %s::timestamptz, %s, 0, 0, %s, %s)",
                (notification_id, send_at, status, long_ago, long_ago),
            )
            poisoned[notification_id] = send_at

    sent = [stack.wait_status(i, "sent", timeout=30) for i in scheduled]
    late = sorted(lateness(n) for n in sent)
    print(f"\nlateness beside poisoned rows: median {statistics.median(late):.3f}s, worst {late[-1]:.3f}s")
    assert late[0] >= 0, late
    assert late[-1] < 1.0, late

    for notification_id in poisoned:
        failed = stack.wait_status(notification_id, "failed", timeout=15)
        assert failed["last_error"], failed
        assert "could not be read" in failed["last_error"] or "beyond year 9999" in failed["last_error"]

    scheduler = stack.schedulers[0].log()
    assert "outbox relay pass failed" not in scheduler, scheduler
    for notification_id in poisoned:
        errors = [line for line in scheduler.splitlines() if notification_id in line and "ERROR" in line]
        assert len(errors) == 1, scheduler

    # Nothing else is left behind: every notification has reached a final status.
    def settled() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM notifications WHERE status NOT IN ('sent', 'failed')").fetchone()
        return row == (0,)

    wait_until(settled, 10, "every notification to be sent or failed")
