"""One notification per channel, end to end: API → PostgreSQL → Redis → worker → the real peer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.e2e.conftest import Stack, wait_until
from tests.peers import SmsPeer, SmtpPeer, WebhookPeer


def test_email_arrives_at_the_smtp_server(stack: Stack, smtp_server: SmtpPeer) -> None:
    created = stack.notify(
        channel="email",
        recipient="ada@example.com",
        subject="Your order shipped",
        body="It is on its way.",
        metadata={"html": "<p>It is on its way.</p>"},
    )
    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com"]
    assert mail.message["Subject"] == "Your order shipped"
    assert mail.message["From"] == "notifier@example.com"
    assert mail.message.get_body(("plain",)).get_content().strip() == "It is on its way."  # type: ignore[union-attr]
    assert mail.message.get_body(("html",)).get_content().strip() == "<p>It is on its way.</p>"  # type: ignore[union-attr]
    sent = stack.wait_status(created["id"], "sent")
    assert sent["delivery_attempts"][0]["provider_message_id"] == mail.message["Message-ID"]
    assert created["id"] in mail.message["Message-ID"]


def test_sms_reaches_the_gateway(stack: Stack, sms_gateway: SmsPeer) -> None:
    created = stack.notify(channel="sms", recipient="+1 415 555 2671", body="Your code is 123456")
    [sms] = sms_gateway.wait_for(1)
    assert (sms.to, sms.from_, sms.body) == ("+14155552671", "+14155550100", "Your code is 123456")
    sent = stack.wait_status(created["id"], "sent")
    assert sent["recipient"] == "+14155552671"
    assert sent["delivery_attempts"][0]["provider_message_id"] == sms.sid


def test_webhook_is_signed_and_verified(stack: Stack, webhook_receiver: WebhookPeer) -> None:
    url = f"{webhook_receiver.url}/hooks/orders"
    created = stack.notify(channel="webhook", recipient=url, body="order 42 shipped", metadata={"order": 42})
    [delivery] = webhook_receiver.wait_for(1)
    assert delivery.verified, delivery.error
    assert delivery.headers["webhook-id"] == created["id"]
    assert delivery.payload["type"] == "notification"
    assert delivery.payload["data"]["body"] == "order 42 shipped"
    assert delivery.payload["data"]["metadata"] == {"order": 42}
    stack.wait_status(created["id"], "sent")


def test_webhook_outage_is_retried_with_the_same_id(stack: Stack, webhook_receiver: WebhookPeer) -> None:
    webhook_receiver.respond(503, body="maintenance")
    created = stack.notify(channel="webhook", recipient=f"{webhook_receiver.url}/hook", body="retry me")
    first, second = webhook_receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == created["id"]
    sent = stack.wait_status(created["id"], "sent")
    assert [a["outcome"] for a in sent["delivery_attempts"]] == ["transient_error", "sent"]
    assert "503" in sent["delivery_attempts"][0]["error"]


def test_log_channel_writes_one_json_line(stack: Stack) -> None:
    created = stack.notify(channel="log", recipient="ops", body="disk almost full", metadata={"host": "db1"})
    stack.wait_status(created["id"], "sent")

    def logged() -> dict[str, object] | None:
        for line in stack.worker.log().splitlines():
            if created["id"] in line and "delivered to log" in line:
                record: dict[str, object] = json.loads(line)
                return record
        return None

    record = wait_until(logged, 10, "the log line")
    assert record["body"] == "disk almost full"
    assert record["metadata"] == {"host": "db1"}


def test_send_at_goes_out_on_time(stack: Stack, webhook_receiver: WebhookPeer) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    created = stack.notify(
        channel="webhook", recipient=f"{webhook_receiver.url}/at", body="on time", send_at=send_at.isoformat()
    )
    assert created["status"] == "scheduled"
    sent = stack.wait_status(created["id"], "sent", timeout=20)
    started = datetime.fromisoformat(sent["delivery_attempts"][0]["started_at"])
    lateness = (started - send_at).total_seconds()
    assert 0 <= lateness < 1.0, f"started {lateness:.3f}s after send_at"


def test_cancelled_before_due_is_never_sent(stack: Stack, webhook_receiver: WebhookPeer) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    created = stack.notify(
        channel="webhook", recipient=f"{webhook_receiver.url}/never", body="no", send_at=send_at.isoformat()
    )
    assert stack.client.post(f"/notifications/{created['id']}/cancel").json()["status"] == "cancelled"
    witness = stack.notify(
        channel="webhook",
        recipient=f"{webhook_receiver.url}/witness",
        body="after",
        send_at=(send_at + timedelta(seconds=1)).isoformat(),
    )
    stack.wait_status(witness["id"], "sent", timeout=20)
    assert [r.path for r in webhook_receiver.requests] == ["/witness"]
