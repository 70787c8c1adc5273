"""Dead letters and replays through the API, and the per-channel retry policy, on real services."""

from __future__ import annotations

import uuid

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from notifier import settings as settings_module
from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel
from notifier.errors import DeliveryTimeout, PermanentDeliveryError, TransientDeliveryError
from notifier.services.delivery import Delivered, Dispatcher, RetryLater, backoff_ms
from notifier.settings import DeliveryPolicy, Settings
from notifier.store.delivery import Pool
from tests.conftest import notifier_env

Client = TestClient[Litestar]


def accept(client: Client, channel: Channel = Channel.WEBHOOK) -> uuid.UUID:
    recipient = "https://hooks.example/x" if channel is Channel.WEBHOOK else "ops"
    response = client.post("/notify", json={"channel": channel.value, "recipient": recipient, "body": "b"})
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def fail(
    client: Client, settings: Settings, pool: Pool, channel: Channel = Channel.WEBHOOK, reason: str = "HTTP 400: no"
) -> uuid.UUID:
    memory = MemoryChannel()
    memory.fail_next(PermanentDeliveryError(reason))
    notification_id = accept(client, channel)
    result = Dispatcher(settings, pool, {channel: memory}).deliver(notification_id)
    assert isinstance(result, Delivered)
    assert result.kind == "failed"
    return notification_id


def test_dead_letters_list_with_reasons_and_filters(client: Client, settings: Settings, pool: Pool) -> None:
    webhook = fail(client, settings, pool, Channel.WEBHOOK, "HTTP 400: unknown endpoint")
    log = fail(client, settings, pool, Channel.LOG, "broken")
    listed = client.get("/dead-letters").json()
    assert [n["id"] for n in listed["items"]] == [str(log), str(webhook)]
    assert listed["items"][1]["last_error"] == "HTTP 400: unknown endpoint"
    only_webhooks = client.get("/dead-letters", params={"channel": "webhook"}).json()["items"]
    assert [n["id"] for n in only_webhooks] == [str(webhook)]
    assert client.get("/dead-letters", params={"failed_after": "2999-01-01T00:00:00Z"}).json()["items"] == []
    first = client.get("/dead-letters", params={"limit": 1}).json()
    second = client.get("/dead-letters", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [n["id"] for n in first["items"] + second["items"]] == [str(log), str(webhook)]


def test_retry_makes_new_attempts_on_the_same_notification(client: Client, settings: Settings, pool: Pool) -> None:
    failed = fail(client, settings, pool)
    replayed = client.post(f"/notifications/{failed}/retry")
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["id"] == str(failed)
    assert replayed.json()["status"] == "queued"
    memory = MemoryChannel()
    # A fresh budget: as many attempts again as a new notification gets.
    memory.fail_next(*[TransientDeliveryError("busy")] * (settings.retry.max_attempts - 1))
    dispatcher = Dispatcher(settings, pool, {Channel.WEBHOOK: memory})
    for _ in range(settings.retry.max_attempts - 1):
        with pytest.raises(RetryLater):
            dispatcher.deliver(failed)
    assert dispatcher.deliver(failed) == Delivered("sent")
    shown = client.get(f"/notifications/{failed}").json()
    assert shown["status"] == "sent"
    assert shown["attempts"] == 1 + settings.retry.max_attempts
    assert client.get("/notifications", params={"limit": 200}).json()["items"][0]["id"] == str(failed)
    assert len(client.get("/notifications").json()["items"]) == 1  # never a second notification


def test_retry_is_refused_unless_failed(client: Client, settings: Settings) -> None:
    queued = accept(client)
    response = client.post(f"/notifications/{queued}/retry")
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]
    assert client.post(f"/notifications/{uuid.uuid4()}/retry").status_code == 404


def test_replay_a_filtered_set(client: Client, settings: Settings, pool: Pool) -> None:
    webhooks = [fail(client, settings, pool, Channel.WEBHOOK) for _ in range(3)]
    log = fail(client, settings, pool, Channel.LOG)
    response = client.post("/dead-letters/replay", json={"channel": "webhook", "limit": 2})
    assert response.status_code == 202
    body = response.json()
    assert body["replayed"] == 2
    assert set(body["ids"]) == {str(webhooks[2]), str(webhooks[1])}  # most recently failed first
    remaining = client.get("/dead-letters").json()["items"]
    assert {n["id"] for n in remaining} == {str(webhooks[0]), str(log)}
    assert client.post("/dead-letters/replay", json={"limit": 5000}).status_code == 422
    assert client.post("/dead-letters/replay", json={"chanel": "webhook"}).status_code == 422


def test_a_timeout_is_recorded_as_a_timeout_attempt(client: Client, settings: Settings, pool: Pool) -> None:
    memory = MemoryChannel()
    memory.fail_next(DeliveryTimeout("timeout: POST https://hooks.example/x"))
    notification_id = accept(client)
    with pytest.raises(RetryLater):
        Dispatcher(settings, pool, {Channel.WEBHOOK: memory}).deliver(notification_id)
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT outcome FROM delivery_attempts WHERE notification = %s", (notification_id,)
        ).fetchone()
    assert row is not None
    assert row["outcome"] == "timeout"


def test_per_channel_attempts_override_the_global_setting(
    client: Client, database_url: str, redis_url: str, redis_namespace: str, pool: Pool
) -> None:
    settings = settings_module.load(
        notifier_env(database_url, redis_url, redis_namespace, NOTIFIER_WEBHOOK_MAX_ATTEMPTS="2")
    )
    memory = MemoryChannel()
    memory.fail_next(TransientDeliveryError("down"), TransientDeliveryError("still down"))
    notification_id = accept(client)
    dispatcher = Dispatcher(settings, pool, {Channel.WEBHOOK: memory})
    with pytest.raises(RetryLater):
        dispatcher.deliver(notification_id)
    assert dispatcher.deliver(notification_id).kind == "failed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (1, None, 500, 1000),
        (2, None, 1000, 2000),
        (3, None, 2000, 4000),
        (20, None, 5000, 10_000),
        (1, 7.0, 7000, 7000),
        (1, 99.0, 10_000, 10_000),
    ],
)
def test_backoff_is_exponential_with_jitter_and_honours_retry_after(
    attempt: int, retry_after: float | None, low: int, high: int
) -> None:
    policy = DeliveryPolicy(max_attempts=5, min_backoff=1.0, max_backoff=10.0, timeout=5.0)
    delays = {backoff_ms(attempt, policy, retry_after) for _ in range(50)}
    assert all(low <= d <= high for d in delays), delays
    if retry_after is None:
        assert len(delays) > 1  # jittered
