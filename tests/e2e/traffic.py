"""Traffic through every outcome the metric contract names, sent to a real stack: the one way the
end-to-end tests make each happen (``test_metrics.py`` counts it, ``test_dashboards_live.py`` draws it).

Start the stack with :data:`SETTINGS`, then (as many times as wanted: each wave moves every
counter again)::

    sent = every_outcome(stack, webhook_receiver, sms_gateway, tmp_path)
    settle(stack, sent)

Every delivery outcome (``sent``, ``transient_error``, ``permanent_error``, ``timeout``,
``abandoned``, ``dead_lettered``), every source (``api``, ``batch``, ``event``, ``rule``), a rule
firing, and the relay's ``due`` and ``missed``.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import Process, Stack, wait_until
from tests.peers import Request, Response, SmsPeer, WebhookPeer
from tests.scrape import Scrape, scrape

LOG = {"channel": "log", "recipient": "ops", "body": "x"}
BATCH = 2
"""How many notifications :func:`every_outcome` sends in its batch (``source="batch"``)."""
SETTINGS = {
    "NOTIFIER_WEBHOOK_TIMEOUT": "1",
    "NOTIFIER_WEBHOOK_MAX_ATTEMPTS": "3",
    "NOTIFIER_SMS_MIN_BACKOFF": "6",
    "NOTIFIER_SMS_MAX_BACKOFF": "6",
}
"""What the stack needs for the traffic to go as planned: a webhook slower than 1 s times out, one
that keeps failing is dead-lettered after 3 attempts, and a failed SMS waits 6 s to be retried
(long enough to be cancelled meanwhile)."""
DEAD_LETTERED = 2
"""How many notifications the traffic makes fail for good (``/gone`` and ``/down``)."""


class Webhooks:
    """Answers the webhook channel by path: ``/ok``; ``/flaky`` (a 503, then 200); ``/slow`` (too
    slow once, then 200); ``/gone`` (410, permanent); ``/down`` (503 for ever)."""

    def __init__(self, receiver: WebhookPeer) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.original = receiver.handle
        receiver.handle = self.handle  # type: ignore[method-assign]

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.seen[request.path] += 1
            first = self.seen[request.path] == 1
        if request.path == "/gone":
            return Response(410, b"gone")
        if request.path == "/down" or (request.path == "/flaky" and first):
            return Response(503, b"maintenance")
        if request.path == "/slow" and first:
            return Response(200, delay=2.5)  # past NOTIFIER_WEBHOOK_TIMEOUT
        return self.original(request)


@dataclass
class Traffic:
    """What :func:`every_outcome` sent, for :func:`settle` to wait for."""

    sent: list[dict[str, Any]]
    """The notifications that end ``sent`` (some after a retry)."""
    failed: list[dict[str, Any]]
    """The notifications that end ``failed`` (dead-lettered)."""
    cancelled: dict[str, Any]
    """The SMS cancelled while it waited to be retried: its retry is dropped (``abandoned``)."""
    every_minute: dict[str, Any]
    """A schedule rule, deleted once it has fired."""
    hooks: Webhooks
    before: Scrape
    """The worker's metrics before the traffic, to tell this wave's firing and abandoned retry."""


def every_outcome(stack: Stack, webhook_receiver: WebhookPeer, sms_gateway: SmsPeer, log_dir: Path) -> Traffic:
    """Send the traffic (waiting only where an order is needed); :func:`settle` waits for the rest."""
    before = scrape(stack.worker.metrics_url)
    hooks = Webhooks(webhook_receiver)
    sms_gateway.respond(503, json={"message": "busy"})  # the SMS below is cancelled while it waits to retry
    cancelled = stack.notify(channel="sms", recipient="+14155552671", body="cancelled while retrying")
    stack.wait_status(cancelled["id"], "retrying")
    assert stack.client.post(f"/notifications/{cancelled['id']}/cancel").status_code == 200
    sent = [
        stack.notify(channel="email", recipient="ada@example.com", subject="s", body="b"),
        stack.notify(channel="sms", recipient="+14155552671", body="b"),
        stack.notify(**LOG),
        *(
            stack.notify(channel="webhook", recipient=f"{webhook_receiver.url}{path}", body="b")
            for path in ("/ok", "/flaky", "/slow")
        ),
        stack.notify(**LOG, send_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat()),  # relayed as due
    ]
    failed = [
        stack.notify(channel="webhook", recipient=f"{webhook_receiver.url}{path}", body="b")
        for path in ("/gone", "/down")
    ]
    assert len(failed) == DEAD_LETTERED
    batch = stack.client.post("/notify/batch", json={"notifications": [LOG] * BATCH})
    assert batch.status_code == 200, batch.text
    sent += [result["notification"] for result in batch.json()["results"]]
    rule = {
        "name": "shipped",
        "event": "order.shipped",
        "channel": "webhook",
        "recipients": [f"{webhook_receiver.url}/ok"],
        "body": "b",
    }
    assert stack.client.post("/rules", json=rule).status_code == 201
    event = stack.client.post("/events", json={"type": "order.shipped", "data": {}})
    assert event.status_code == 202, event.text
    sent += event.json()["notifications"]
    every_minute = stack.client.post(
        "/rules", json={"name": "tick", "schedule": "* * * * *", "channel": "log", "recipients": ["ops"], "body": "b"}
    ).json()  # the API asks for a tick at once, which plans the next firings
    sent.append(missed_by_the_api(stack, log_dir))
    return Traffic(sent, failed, cancelled, every_minute, hooks, before)


def settle(stack: Stack, traffic: Traffic, timeout: float = 40) -> None:
    """Wait until every notification of ``traffic`` has reached its end, the rule has fired (then
    delete it), and the cancelled SMS's retry has been dropped."""
    for notification in traffic.sent:
        stack.wait_status(notification["id"], "sent", timeout=timeout)
    for notification in traffic.failed:
        stack.wait_status(notification["id"], "failed", timeout=timeout)
    wait_until(
        lambda: scrape(stack.worker.metrics_url).value("notifier_rule_firings_total", outcome="fired") >= 1,
        timeout,
        "the rule to fire",
    )
    assert stack.client.delete(f"/rules/{traffic.every_minute['id']}").status_code == 204  # cancels what it planned
    wait_until(
        lambda: (
            scrape(stack.worker.metrics_url).value("notifier_deliveries_total", channel="sms", outcome="abandoned") >= 1
        ),
        timeout,
        "the cancelled SMS's retry to be dropped",
    )


def missed_by_the_api(stack: Stack, log_dir: Path) -> dict[str, Any]:
    """A notification accepted by an API whose Redis is away: stored, its enqueue fails, and the
    scheduler's relay enqueues it (``missed``)."""
    port = free_port()
    env = {**stack.env, "NOTIFIER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    api = Process("api-without-redis", ["api", "--port", str(port)], env, log_dir)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=stack.client.headers, timeout=10) as client:
            wait_until(lambda: client.get("/healthz").status_code == 200, 60, "the API without Redis")
            response = client.post("/notify", json={**LOG, "idempotency_key": str(uuid.uuid4())})
            assert response.status_code == 202, response.text
            body: dict[str, Any] = response.json()
            return body
    finally:
        api.stop()
