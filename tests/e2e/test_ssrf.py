"""Webhooks aimed inside the network, with real processes and the default policy (nothing internal allowed)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from tests.e2e.conftest import Stack, StartStack, wait_until
from tests.peers import WebhookPeer

STRICT = {"NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": ""}


def failed(stack: Stack, notification_id: str) -> dict[str, Any]:
    return stack.wait_status(notification_id, "failed", timeout=30)


def test_a_rule_rendered_internal_url_fails_for_good_with_the_reason(
    start_stack: StartStack, webhook_receiver: WebhookPeer
) -> None:
    # A recipient template takes the URL from the event (or the rule): nothing the API could check.
    stack = start_stack(**STRICT)
    event_rule = {"name": "e", "event": "order.shipped", "channel": "webhook", "body": "b"}
    response = stack.client.post("/rules", json={**event_rule, "recipients": ["{{ data.url }}"]})
    assert response.status_code == 201, response.text
    schedule_rule = {"name": f"127.0.0.1:{webhook_receiver.port}", "schedule": "* * * * *", "channel": "webhook"}
    rule = stack.client.post("/rules", json={**schedule_rule, "body": "b", "recipients": ["http://{{ rule.name }}/"]})
    assert rule.status_code == 201, rule.text

    published = stack.client.post(
        "/events", json={"type": "order.shipped", "data": {"url": f"{webhook_receiver.url}/hook"}}
    )
    assert published.status_code in (200, 201, 202), published.text
    [from_event] = published.json()["notifications"]
    assert "loopback" in failed(stack, from_event["id"])["last_error"]

    def fired() -> list[dict[str, Any]] | None:
        params = {"rule_id": rule.json()["id"]}
        items: list[dict[str, Any]] = stack.client.get("/notifications", params=params).json()["items"]
        return items or None

    for made in wait_until(fired, 30, "the schedule rule to fire"):
        assert made["status"] == "failed", made
        assert "127.0.0.1 is a loopback address" in made["last_error"]
    assert webhook_receiver.requests == []


def test_a_name_resolving_to_loopback_is_refused_by_the_worker(
    start_stack: StartStack, webhook_receiver: WebhookPeer
) -> None:
    # This machine's own name resolves to loopback on most hosts (/etc/hosts); the API accepts the
    # name, and the worker, which resolves it, refuses to connect.
    name = socket.gethostname().lower()
    try:
        resolved = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except OSError:
        resolved = set()
    if not resolved or not all(address.is_loopback for address in resolved):
        pytest.skip(f"{name} does not resolve to loopback here")
    stack = start_stack(**STRICT)
    created = stack.notify(channel="webhook", recipient=f"http://{name}:{webhook_receiver.port}/hook", body="b")

    found = failed(stack, created["id"])
    assert f"{name} resolves to" in found["last_error"]
    assert "loopback" in found["last_error"]
    [attempt] = found["delivery_attempts"]
    assert attempt["outcome"] == "permanent_error"
    assert webhook_receiver.requests == []
