"""Scheduling with real processes: far-future notifications, two schedulers, catching up."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.e2e.conftest import Stack, StartStack, wait_until
from tests.peers import WebhookPeer

EVERY_MINUTE = {"name": "heartbeat", "schedule": "* * * * *", "timezone": "UTC", "channel": "webhook", "body": "tick"}


def rule_notifications(stack: Stack, rule_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = stack.client.get("/notifications", params={"rule_id": rule_id, "limit": 200}).json()[
        "items"
    ]
    return items


def lateness(notification: dict[str, Any]) -> float:
    started = datetime.fromisoformat(notification["delivery_attempts"][0]["started_at"])
    return (started - datetime.fromisoformat(notification["send_at"])).total_seconds()


def test_far_ahead_notifications_wait_in_postgres_and_go_out_on_time(
    start_stack: StartStack, webhook_receiver: WebhookPeer, database_url: str
) -> None:
    # The API enqueues nothing ahead; the scheduler's relay enqueues each as it falls due.
    stack = start_stack()
    base = datetime.now(UTC) + timedelta(seconds=4)
    created = [
        stack.notify(
            channel="webhook",
            recipient=f"{webhook_receiver.url}/at/{i}",
            body=f"due {i}",
            send_at=(base + timedelta(milliseconds=700 * i)).isoformat(),
        )
        for i in range(8)
    ]
    with psycopg.connect(database_url) as conn:
        waiting = conn.execute("SELECT count(*) FROM notifications WHERE enqueued_at IS NULL").fetchone()
    assert waiting == (8,)  # in PostgreSQL only, not yet in Redis
    sent = [stack.wait_status(n["id"], "sent", timeout=30) for n in created]
    late = sorted(lateness(n) for n in sent)
    median, worst = statistics.median(late), late[-1]
    print(f"\nlateness of {len(late)} scheduled notifications: median {median:.3f}s, worst {worst:.3f}s")
    assert late[0] >= 0, late
    assert late[-1] < 1.0, late
    assert len(webhook_receiver.wait_for(8)) == 8


def test_two_schedulers_fire_each_firing_once(start_stack: StartStack, webhook_receiver: WebhookPeer) -> None:
    stack = start_stack(schedulers=2)
    recipients = [f"{webhook_receiver.url}/a", f"{webhook_receiver.url}/b"]
    rule = stack.client.post("/rules", json={**EVERY_MINUTE, "recipients": recipients}).json()
    first_firing = datetime.fromisoformat(rule["next_fire_at"])

    def first_sent() -> list[dict[str, Any]] | None:
        due = [n for n in rule_notifications(stack, rule["id"]) if datetime.fromisoformat(n["send_at"]) == first_firing]
        return due if len(due) == 2 and all(n["status"] == "sent" for n in due) else None

    wait_until(first_sent, 90, "the first firing to be sent to both recipients")
    # Two schedulers ticked (each at start and every minute) and the API nudged once more:
    # every firing planned so far exists once per recipient, and the peer got each once.
    made = Counter((n["send_at"], n["recipient"]) for n in rule_notifications(stack, rule["id"]))
    assert made
    assert set(made.values()) == {1}, made
    ids = Counter(d.headers["webhook-id"] for d in webhook_receiver.deliveries)
    assert set(ids.values()) == {1}, ids
    assert {n["send_at"] for n in rule_notifications(stack, rule["id"])} >= {
        first_firing.isoformat().replace("+00:00", "Z")
    }


def test_a_scheduler_stopped_across_due_times_catches_up_per_misfire_policy(
    start_stack: StartStack, webhook_receiver: WebhookPeer, database_url: str
) -> None:
    stack = start_stack(schedulers=0)
    rules = {
        policy: stack.client.post(
            "/rules",
            json={
                **EVERY_MINUTE,
                "name": policy,
                "misfire": policy,
                "enabled": False,
                "recipients": [f"{webhook_receiver.url}/{policy}"],
            },
        ).json()
        for policy in ("once", "skip")
    }
    # The rules were due every minute for the last ten minutes while no scheduler ran.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE rules SET enabled = true, next_fire_at = date_trunc('minute', now()) - interval '10 minutes'"
        )
    stack.schedulers.append(stack.start_scheduler())

    def missed(rule: str) -> list[dict[str, Any]]:
        found = rule_notifications(stack, rules[rule]["id"])
        return [n for n in found if n["metadata"]["rule"].get("missed")]

    def caught_up() -> dict[str, Any] | None:
        found = missed("once")
        return found[0] if len(found) == 1 and found[0]["status"] == "sent" else None

    catch_up = wait_until(caught_up, 60, "the one catch-up firing of the 'once' rule")
    assert catch_up["metadata"]["rule"]["missed"] >= 9  # once for all the firings missed
    late = lateness(stack.client.get(f"/notifications/{catch_up['id']}").json())
    assert 60 <= late < 180, late  # the latest missed firing, sent as soon as the scheduler was back
    assert catch_up["lateness"] >= late  # the record says how late it went out
    assert len(missed("once")) == 1
    later = wait_until(lambda: rule_notifications(stack, rules["skip"]["id"]), 60, "the skip rule's next firing")
    assert missed("skip") == []
    oldest = min(datetime.fromisoformat(n["send_at"]) for n in later)
    assert oldest >= datetime.fromisoformat(catch_up["send_at"])  # nothing from the ten minutes down
