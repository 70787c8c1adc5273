"""Webhooks cannot be aimed inside the network: the channel against a real local receiver, and the API."""

from __future__ import annotations

import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from notifier import settings as settings_module
from notifier.channels.webhook import WebhookChannel
from notifier.domain import Channel, Notification, Status
from notifier.domain.addresses import AddressPolicy
from notifier.errors import PermanentDeliveryError
from tests.conftest import PEER_NETWORKS, notifier_env
from tests.integration.conftest import make_app
from tests.peers import HttpPeer

TIMEOUT = 5.0
PEERS = AddressPolicy.from_cidrs(PEER_NETWORKS.split(","))


def notification(recipient: str) -> Notification:
    now = datetime.now(UTC)
    return Notification(
        id=uuid.uuid4(),
        channel=Channel.WEBHOOK,
        recipient=recipient,
        subject=None,
        body="b",
        metadata={},
        send_at=None,
        status=Status.SENDING,
        attempts=1,
        last_error=None,
        idempotency_key=None,
        created_at=now,
        updated_at=now,
        sent_at=None,
    )


class FakeDns:
    """Names under ``.test`` answer, lookup after lookup, the next of their scripted answers (the last
    one repeats); every lookup of them is counted. Other names resolve as usual."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: Counter[str] = Counter()
        self._real = socket.getaddrinfo

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(host, str) and host.endswith(".test")):
            return self._real(host, port, *args, **kwargs)
        turn = self.asked[host]
        self.asked[host] += 1
        script = self.answers[host]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (family[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, int(port)))
            for a in script[min(turn, len(script) - 1)]
        ]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture
def plain_receiver() -> Iterator[HttpPeer]:
    with HttpPeer() as peer:
        yield peer


# ------------------------------------------------------------------------------------ the channel


def test_a_loopback_receiver_is_refused_by_default(plain_receiver: HttpPeer) -> None:
    channel = WebhookChannel("", timeout=TIMEOUT)
    port = plain_receiver.port
    try:
        for url in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://127.1:{port}"):
            with pytest.raises(PermanentDeliveryError, match="loopback") as caught:
                channel.send(notification(url + "/hook"))
            assert "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS" in caught.value.reason
    finally:
        channel.close()
    assert plain_receiver.requests == []


def test_allowed_networks_let_the_receiver_be_reached(plain_receiver: HttpPeer) -> None:
    channel = WebhookChannel("", timeout=TIMEOUT, policy=PEERS)
    try:
        channel.send(notification(f"http://localhost:{plain_receiver.port}/hook"))
    finally:
        channel.close()
    [request] = plain_receiver.wait_for_requests(1)
    assert request.path == "/hook"


def test_a_name_that_resolves_inside_is_refused_when_sent(plain_receiver: HttpPeer, dns: FakeDns) -> None:
    # The API cannot know where a name points; the channel checks every address it resolves to.
    dns.answers["inside.test"] = [["127.0.0.1"]]
    dns.answers["mixed.test"] = [["1.1.1.1", "127.0.0.1"]]
    channel = WebhookChannel("", timeout=TIMEOUT)
    try:
        with pytest.raises(
            PermanentDeliveryError, match=re.escape("inside.test resolves to 127.0.0.1, a loopback address")
        ):
            channel.send(notification(f"http://inside.test:{plain_receiver.port}/hook"))
        with pytest.raises(
            PermanentDeliveryError, match=re.escape("mixed.test resolves to 127.0.0.1, a loopback address")
        ):
            channel.send(notification(f"http://mixed.test:{plain_receiver.port}/hook"))
    finally:
        channel.close()
    assert plain_receiver.requests == []


def test_the_checked_address_is_the_one_connected_to(plain_receiver: HttpPeer, dns: FakeDns) -> None:
    # DNS rebinding: the name answers an allowed address when checked and another one after. The
    # channel asks once and connects to what it checked; a second lookup would land on 127.0.0.2.
    dns.answers["rebind.test"] = [["127.0.0.1"], ["127.0.0.2"]]
    channel = WebhookChannel("", timeout=TIMEOUT, policy=AddressPolicy.from_cidrs(["127.0.0.1/32"]))
    try:
        channel.send(notification(f"http://rebind.test:{plain_receiver.port}/hook"))
        channel.close()
        channel = WebhookChannel("", timeout=TIMEOUT, policy=AddressPolicy.from_cidrs(["127.0.0.1/32"]))
        with pytest.raises(
            PermanentDeliveryError, match=re.escape("rebind.test resolves to 127.0.0.2, a loopback address")
        ):
            channel.send(notification(f"http://rebind.test:{plain_receiver.port}/hook"))
    finally:
        channel.close()
    [request] = plain_receiver.wait_for_requests(1)
    assert request.headers["host"] == f"rebind.test:{plain_receiver.port}"
    assert dns.asked["rebind.test"] == 2  # once per connection, never a second time for the same one


def test_a_redirect_inside_is_not_followed(plain_receiver: HttpPeer) -> None:
    plain_receiver.respond(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})
    channel = WebhookChannel("", timeout=TIMEOUT, policy=PEERS)
    try:
        with pytest.raises(PermanentDeliveryError, match="HTTP 302"):
            channel.send(notification(f"{plain_receiver.url}/hook"))
    finally:
        channel.close()
    assert len(plain_receiver.requests) == 1


def test_the_answer_kept_is_200_characters_of_one_line(plain_receiver: HttpPeer) -> None:
    secret = "root:x:0:0:root:/root:/bin/bash\n\x1b[31mred\r\n\x00" + "s" * 5000
    plain_receiver.respond(400, body=secret)
    channel = WebhookChannel("", timeout=TIMEOUT, policy=PEERS)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            channel.send(notification(f"{plain_receiver.url}/hook"))
    finally:
        channel.close()
    prefix = f"HTTP 400 from {plain_receiver.url}/hook: "
    reason = caught.value.reason
    assert reason.startswith(prefix + "root:x:0:0:root:/root:/bin/bash [31mred ")
    answer = reason.removeprefix(prefix)
    assert len(answer) <= 200
    assert answer.isprintable()


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example/\x01", "http://hooks .example/", "http://exa\tmple.com/", "http://[::1/", "http://x:99999/"],
)
def test_a_url_that_cannot_be_sent_fails_for_good(url: str) -> None:
    # A row written before the API checked URLs, or by hand: a permanent failure, not a crash.
    channel = WebhookChannel("", timeout=TIMEOUT)
    try:
        with pytest.raises(PermanentDeliveryError, match="recipient"):
            channel.send(notification(url))
    finally:
        channel.close()


# ------------------------------------------------------------------------------------ the API


@pytest.fixture
def strict_client(database_url: str, redis_url: str, redis_namespace: str) -> Iterator[TestClient[Litestar]]:
    """The API with the default policy: no internal network allowed."""
    env = notifier_env(
        database_url, redis_url, redis_namespace, NOTIFIER_AUTH_DISABLED="true", NOTIFIER_WEBHOOK_ALLOWED_NETWORKS=""
    )
    with TestClient(make_app(settings_module.load(env))) as client:
        yield client


REPRO = [
    "http://127.0.0.1:8080/",
    "http://[::1]:8080/",
    "http://localhost:8080/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2130706433:8080/",
    "http://127.1:8080/",
    "http://0.0.0.0:8080/",
    "http://0x7f.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::7f00:1]/",
    "http://localhost./",
    "http://10.0.0.1/",
    "http://hooks.example/a b",
    "http://hooks.example/\x7f",
]


def test_notify_refuses_internal_and_unsendable_webhooks(strict_client: TestClient[Litestar]) -> None:
    for url in REPRO:
        response = strict_client.post("/notify", json={"channel": "webhook", "recipient": url, "body": "b"})
        assert response.status_code == 422, (url, response.text)
        body = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in body["errors"]] == ["recipient"], body
    accepted = strict_client.post(
        "/notify", json={"channel": "webhook", "recipient": "https://hooks.example/x", "body": "b"}
    )
    assert accepted.status_code == 202, accepted.text


def test_batch_refuses_each_internal_webhook_on_its_own(strict_client: TestClient[Litestar]) -> None:
    items = [
        {"channel": "webhook", "recipient": "http://169.254.169.254/", "body": "b"},
        {"channel": "webhook", "recipient": "https://hooks.example/x", "body": "b"},
    ]
    response = strict_client.post("/notify/batch", json={"notifications": items})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == 422, first
    assert first["error"]["errors"][0]["field"] == "notifications[0].recipient"
    assert "link-local" in first["error"]["errors"][0]["message"]
    assert second["status"] == 202, second


def test_a_rule_with_an_internal_webhook_is_refused(strict_client: TestClient[Litestar]) -> None:
    rule = {"name": "r", "channel": "webhook", "body": "b", "schedule": "@daily"}
    response = strict_client.post("/rules", json={**rule, "recipients": ["https://hooks.example/x", "http://127.1/"]})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["recipients[1]"]
    # A template is checked when it is rendered, at each firing.
    assert strict_client.post("/rules", json={**rule, "recipients": ["{{ data.url }}"]}).status_code == 201
