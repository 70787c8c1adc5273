"""The network channels against real protocol peers (tests/peers.py): what arrives, and how failures classify."""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trustme

from notifier.channels.email import EmailChannel
from notifier.channels.sms import SmsChannel
from notifier.channels.webhook import WebhookChannel
from notifier.domain import Channel, Notification, Status
from notifier.domain.addresses import AddressPolicy
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.settings import SmtpServer
from tests.conftest import PEER_NETWORKS
from tests.peers import SmsPeer, SmtpPeer, WebhookPeer, client_context, new_webhook_secret

TIMEOUT = 5.0
PEERS = AddressPolicy.from_cidrs(PEER_NETWORKS.split(","))
"""The peers listen on loopback, which webhooks may not reach by default."""
SENDER = "notifier@example.org"
SMS_FROM = "+14155550100"


def notification(channel: Channel, recipient: str, **changes: Any) -> Notification:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "channel": channel,
        "recipient": recipient,
        "subject": "Your order shipped",
        "body": "Order 42 is on its way.\nTrack it at https://example.org/42",
        "metadata": {},
        "send_at": None,
        "status": Status.SENDING,
        "attempts": 1,
        "last_error": None,
        "idempotency_key": None,
        "created_at": now - timedelta(seconds=5),
        "updated_at": now,
        "sent_at": None,
    }
    fields.update(changes)
    return Notification(**fields)


def email_channel(peer: SmtpPeer, *, tls_context: Any = None, url: str | None = None) -> EmailChannel:
    return EmailChannel(SmtpServer.parse(url or peer.url), SENDER, timeout=TIMEOUT, tls_context=tls_context)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# ---------------------------------------------------------------------------------------- email


def test_email_plain_delivery(smtp_server: SmtpPeer) -> None:
    n = notification(Channel.EMAIL, "alice@example.org")

    message_id = email_channel(smtp_server).send(n)

    [mail] = smtp_server.wait_for(1)
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ["alice@example.org"]
    msg = mail.message
    assert msg["From"] == SENDER
    assert msg["To"] == "alice@example.org"
    assert msg["Subject"] == "Your order shipped"
    assert msg["Message-ID"] == f"<{n.id}@notifier>"
    assert message_id == msg["Message-ID"]
    assert msg["Date"]
    assert not msg.is_multipart()
    assert msg.get_content().rstrip("\n") == n.body
    assert not mail.tls
    assert mail.auth_login is None


def test_email_html_alternative(smtp_server: SmtpPeer) -> None:
    html = "<p>Order <b>42</b> is on its way.</p>"
    n = notification(Channel.EMAIL, "bob@example.org", metadata={"html": html})

    email_channel(smtp_server).send(n)

    [mail] = smtp_server.wait_for(1)
    msg = mail.message
    assert msg.get_content_type() == "multipart/alternative"
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content().rstrip("\n") == n.body
    assert html_part.get_content().rstrip("\n") == html


def test_email_non_string_html_metadata_is_ignored(smtp_server: SmtpPeer) -> None:
    email_channel(smtp_server).send(notification(Channel.EMAIL, "bob@example.org", metadata={"html": 1}))

    [mail] = smtp_server.wait_for(1)
    assert mail.message.get_content_type() == "text/plain"


def test_email_starttls_with_auth(smtp_tls_server: SmtpPeer, tls_ca: trustme.CA) -> None:
    assert smtp_tls_server.auth is not None
    n = notification(Channel.EMAIL, "carol@example.org")

    email_channel(smtp_tls_server, tls_context=client_context(tls_ca)).send(n)

    [mail] = smtp_tls_server.wait_for(1)
    assert mail.tls
    assert mail.auth_login == smtp_tls_server.auth[0]
    assert mail.message["Message-ID"] == f"<{n.id}@notifier>"


def test_email_starttls_rejects_an_untrusted_certificate(smtp_tls_server: SmtpPeer) -> None:
    # The default context does not trust the test CA: the handshake must fail, and nothing is sent.
    with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        email_channel(smtp_tls_server).send(notification(Channel.EMAIL, "carol@example.org"))
    assert smtp_tls_server.messages == []


def test_email_wrong_password_is_permanent(smtp_tls_server: SmtpPeer, tls_ca: trustme.CA) -> None:
    url = f"smtp://notifier:wrong@{smtp_tls_server.host}:{smtp_tls_server.port}?starttls=true"
    channel = email_channel(smtp_tls_server, tls_context=client_context(tls_ca), url=url)

    with pytest.raises(PermanentDeliveryError, match="SMTP 535"):
        channel.send(notification(Channel.EMAIL, "carol@example.org"))
    assert smtp_tls_server.messages == []


def test_email_implicit_tls(tls_ca: trustme.CA) -> None:
    with SmtpPeer(implicit_tls=True, auth=("smtps-user", "pa:ss/w@rd"), ca=tls_ca) as peer:
        assert peer.url.startswith("smtps://")
        n = notification(Channel.EMAIL, "dave@example.org")

        email_channel(peer, tls_context=client_context(tls_ca)).send(n)

        [mail] = peer.wait_for(1)
        assert mail.tls
        assert mail.auth_login == "smtps-user"
        assert mail.rcpt_tos == ["dave@example.org"]


@pytest.mark.parametrize(
    ("refuse_at", "code", "error"),
    [
        ("RCPT", 451, TransientDeliveryError),
        ("RCPT", 550, PermanentDeliveryError),
        ("DATA", 451, TransientDeliveryError),
        ("DATA", 554, PermanentDeliveryError),
    ],
)
def test_email_refusals_classify_by_reply_code(refuse_at: Any, code: int, error: type[Exception]) -> None:
    with SmtpPeer(refuse_first=1, refuse_code=code, refuse_at=refuse_at) as peer:
        channel = email_channel(peer)
        n = notification(Channel.EMAIL, "erin@example.org")

        with pytest.raises(error, match=f"SMTP {code} ") as caught:
            channel.send(n)
        assert type(caught.value) is error
        assert peer.refused == 1
        assert peer.messages == []

        # The refusal was for one attempt only: the next one gets through.
        channel.send(n)
        [mail] = peer.wait_for(1)
        assert mail.message["Message-ID"] == f"<{n.id}@notifier>"


def test_email_connection_refused_is_transient(closed_port: int) -> None:
    channel = EmailChannel(SmtpServer.parse(f"smtp://127.0.0.1:{closed_port}"), SENDER, timeout=TIMEOUT)

    with pytest.raises(TransientDeliveryError, match=f"127.0.0.1:{closed_port}"):
        channel.send(notification(Channel.EMAIL, "frank@example.org"))


# ------------------------------------------------------------------------------------------ SMS


@pytest.fixture
def sms(sms_gateway: SmsPeer) -> Iterator[SmsChannel]:
    channel = SmsChannel(
        sms_gateway.url + "/", sms_gateway.account_sid, sms_gateway.auth_token, SMS_FROM, timeout=TIMEOUT
    )
    yield channel
    channel.close()


def test_sms_delivery(sms: SmsChannel, sms_gateway: SmsPeer) -> None:
    n = notification(Channel.SMS, "+14155550123", subject=None, body="Your code is 123456")

    provider_id = sms.send(n)

    [message] = sms_gateway.wait_for(1)
    assert (message.to, message.from_, message.body) == ("+14155550123", SMS_FROM, "Your code is 123456")
    assert message.sid.startswith("SM")
    assert provider_id == message.sid
    [request] = sms_gateway.wait_for_requests(1)
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{sms_gateway.account_sid}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    expected = base64.b64encode(f"{sms_gateway.account_sid}:{sms_gateway.auth_token}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.form() == {"To": "+14155550123", "From": SMS_FROM, "Body": "Your code is 123456"}


def test_sms_wrong_credentials_are_permanent(sms_gateway: SmsPeer) -> None:
    channel = SmsChannel(sms_gateway.url, sms_gateway.account_sid, "wrong-token", SMS_FROM, timeout=TIMEOUT)
    try:
        with pytest.raises(PermanentDeliveryError, match="HTTP 401"):
            channel.send(notification(Channel.SMS, "+14155550123"))
    finally:
        channel.close()
    assert sms_gateway.messages == []
    assert len(sms_gateway.wait_for_requests(1)) == 1


def test_sms_400_is_permanent_with_the_providers_message(sms: SmsChannel, sms_gateway: SmsPeer) -> None:
    text = "The 'To' number +14155550123 is not a valid phone number."
    sms_gateway.respond(400, json={"code": 21211, "message": text, "status": 400})

    with pytest.raises(PermanentDeliveryError, match="HTTP 400") as caught:
        sms.send(notification(Channel.SMS, "+14155550123"))
    assert text in caught.value.reason
    assert sms_gateway.messages == []


def test_sms_429_is_transient_with_retry_after(sms: SmsChannel, sms_gateway: SmsPeer) -> None:
    sms_gateway.respond(429, json={"code": 20429, "message": "Too Many Requests"}, headers={"Retry-After": "7"})

    with pytest.raises(TransientDeliveryError, match="HTTP 429") as caught:
        sms.send(notification(Channel.SMS, "+14155550123"))
    assert caught.value.retry_after == 7


def test_sms_503_is_transient(sms: SmsChannel, sms_gateway: SmsPeer) -> None:
    sms_gateway.respond(503, body="upstream unavailable")

    with pytest.raises(TransientDeliveryError, match="HTTP 503") as caught:
        sms.send(notification(Channel.SMS, "+14155550123"))
    assert caught.value.retry_after is None

    # The gateway recovers: the same channel delivers on the next attempt.
    assert sms.send(notification(Channel.SMS, "+14155550123")) == sms_gateway.wait_for(1)[0].sid


def test_sms_connection_refused_is_transient(closed_port: int) -> None:
    channel = SmsChannel(f"http://127.0.0.1:{closed_port}", "AC1", "token", SMS_FROM, timeout=TIMEOUT)
    try:
        with pytest.raises(TransientDeliveryError, match="ConnectError"):
            channel.send(notification(Channel.SMS, "+14155550123"))
    finally:
        channel.close()


# -------------------------------------------------------------------------------------- webhook


@pytest.fixture
def webhook(webhook_receiver: WebhookPeer) -> Iterator[WebhookChannel]:
    assert webhook_receiver.secret is not None
    channel = WebhookChannel(webhook_receiver.secret, timeout=TIMEOUT, policy=PEERS)
    yield channel
    channel.close()


def test_webhook_signed_delivery(webhook: WebhookChannel, webhook_receiver: WebhookPeer) -> None:
    n = notification(Channel.WEBHOOK, webhook_receiver.url + "/hooks/orders", metadata={"order": 42})

    assert webhook.send(n) == str(n.id)

    [delivery] = webhook_receiver.wait_for(1)
    assert delivery.verified, delivery.error
    assert delivery.headers["webhook-id"] == str(n.id)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["webhook-signature"].startswith("v1,")
    [request] = webhook_receiver.wait_for_requests(1)
    assert (request.method, request.path) == ("POST", "/hooks/orders")

    payload = delivery.payload
    assert payload["type"] == "notification"
    sent_at = datetime.fromisoformat(payload["timestamp"])
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert int(delivery.headers["webhook-timestamp"]) == int(sent_at.timestamp())
    data = payload["data"]
    assert data["id"] == str(n.id)
    assert data["subject"] == n.subject
    assert data["body"] == n.body
    assert data["metadata"] == {"order": 42}
    assert data["send_at"] is None
    assert datetime.fromisoformat(data["created_at"]) == n.created_at


def test_webhook_id_is_stable_across_attempts(webhook: WebhookChannel, webhook_receiver: WebhookPeer) -> None:
    n = notification(Channel.WEBHOOK, webhook_receiver.url + "/hook")

    webhook.send(n)
    webhook.send(n)

    first, second = webhook_receiver.wait_for(2)
    assert first.verified, first.error
    assert second.verified, second.error
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(n.id)


def test_webhook_signed_with_another_secret_fails_verification(webhook_receiver: WebhookPeer) -> None:
    # The peer's check can fail: a signature made with another secret is refused with 400.
    channel = WebhookChannel(new_webhook_secret(), timeout=TIMEOUT, policy=PEERS)
    try:
        with pytest.raises(PermanentDeliveryError, match="HTTP 400"):
            channel.send(notification(Channel.WEBHOOK, webhook_receiver.url + "/hook"))
    finally:
        channel.close()
    [delivery] = webhook_receiver.wait_for(1)
    assert not delivery.verified
    assert "signature" in (delivery.error or "").lower()


def test_webhook_hanging_receiver_times_out(webhook_receiver: WebhookPeer) -> None:
    webhook_receiver.respond(204, delay=30)
    channel = WebhookChannel(webhook_receiver.secret or "", timeout=0.5, policy=PEERS)
    try:
        with pytest.raises(TransientDeliveryError, match="timeout"):
            channel.send(notification(Channel.WEBHOOK, webhook_receiver.url + "/slow"))
    finally:
        channel.close()
    assert len(webhook_receiver.wait_for(1)) == 1


def test_webhook_400_is_permanent(webhook: WebhookChannel, webhook_receiver: WebhookPeer) -> None:
    webhook_receiver.respond(400, body="unknown event type")

    with pytest.raises(PermanentDeliveryError, match="HTTP 400") as caught:
        webhook.send(notification(Channel.WEBHOOK, webhook_receiver.url + "/hook"))
    assert "unknown event type" in caught.value.reason


def test_webhook_500_is_transient(webhook: WebhookChannel, webhook_receiver: WebhookPeer) -> None:
    webhook_receiver.respond(500, body="oops")

    with pytest.raises(TransientDeliveryError, match="HTTP 500"):
        webhook.send(notification(Channel.WEBHOOK, webhook_receiver.url + "/hook"))
    assert webhook_receiver.wait_for(1)[0].verified


def test_webhook_without_secret_is_unsigned(webhook_receiver: WebhookPeer) -> None:
    channel = WebhookChannel("", timeout=TIMEOUT, policy=PEERS)
    n = notification(Channel.WEBHOOK, webhook_receiver.url + "/hook")
    try:
        # The signing receiver refuses it...
        with pytest.raises(PermanentDeliveryError, match="HTTP 400"):
            channel.send(n)
    finally:
        channel.close()

    [delivery] = webhook_receiver.wait_for(1)
    assert "webhook-signature" not in delivery.headers
    assert not delivery.verified
    # ...but it is otherwise a complete Standard Webhooks request.
    assert delivery.headers["webhook-id"] == str(n.id)
    assert delivery.headers["webhook-timestamp"].isdigit()
    assert delivery.payload["data"]["body"] == n.body


def test_webhook_without_secret_reaches_an_unverifying_receiver() -> None:
    with WebhookPeer(secret=None) as receiver:
        channel = WebhookChannel("", timeout=TIMEOUT, policy=PEERS)
        try:
            n = notification(Channel.WEBHOOK, receiver.url + "/hook")
            assert channel.send(n) == str(n.id)
        finally:
            channel.close()
        [delivery] = receiver.wait_for(1)
        assert "webhook-signature" not in delivery.headers
        assert delivery.payload["data"]["id"] == str(n.id)
