"""Metrics in-process against a real PostgreSQL and Redis: the API's ``/metrics`` (access, labels,
the gauges read at scrape, a scrape with Redis away), and what the dispatcher and the relay count."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from psycopg_pool import ConnectionPool

from notifier import settings as settings_module
from notifier.api import metrics as api_metrics
from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel, NewNotification
from notifier.errors import DeliveryTimeout, PermanentDeliveryError, TransientDeliveryError
from notifier.observability import metrics
from notifier.services.delivery import Delivered, Dispatcher, RetryLater
from notifier.services.relay import Relay
from notifier.settings import Settings
from notifier.worker.broker import DELIVER_ACTOR, DELIVERY_QUEUE, dead_letter_stream, enqueuer
from tests.accepting import accept
from tests.conftest import free_port, notifier_env
from tests.integration.conftest import make_app
from tests.scrape import Scrape, parse

Client = TestClient[Litestar]
LOG = {"channel": "log", "recipient": "ops", "body": "disk almost full"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scraped(client: Client, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def keyed(database_url: str, redis_url: str, redis_namespace: str, **extra: str) -> Settings:
    return settings_module.load(notifier_env(database_url, redis_url, redis_namespace, NOTIFIER_API_KEYS="k1", **extra))


def test_metrics_are_public_by_default(database_url: str, redis_url: str, redis_namespace: str) -> None:
    with TestClient(make_app(keyed(database_url, redis_url, redis_namespace))) as client:
        assert client.get("/notifications").status_code == 401
        got = scraped(client)
        assert "notifier_queue_messages" in got.series_names()
        # Refused requests are counted too: the request metrics sit outside the key check.
        assert got.value("notifier_api_requests_total", method="GET", path="/notifications", status_code="401") >= 1


def test_metrics_auth_puts_them_behind_the_keys(database_url: str, redis_url: str, redis_namespace: str) -> None:
    settings = keyed(database_url, redis_url, redis_namespace, NOTIFIER_METRICS_AUTH="true")
    with TestClient(make_app(settings)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert "notifier_queue_messages" in scraped(client, Authorization="Bearer k1").series_names()


def test_metrics_disabled_means_no_route(database_url: str, redis_url: str, redis_namespace: str) -> None:
    settings = settings_module.load(
        notifier_env(
            database_url, redis_url, redis_namespace, NOTIFIER_AUTH_DISABLED="true", NOTIFIER_METRICS_ENABLED="false"
        )
    )
    try:
        with TestClient(make_app(settings)) as client:
            assert client.get("/metrics").status_code == 404
            assert client.post("/notify", json=LOG).status_code == 202
            assert not metrics.enabled()
            assert "/metrics" not in client.get("/schema/openapi.json").json()["paths"]
    finally:
        metrics.install("api")  # as the other tests' apps leave it


def test_the_metrics_route_is_documented(client: Client) -> None:
    operation = client.get("/schema/openapi.json").json()["paths"]["/metrics"]["get"]
    assert operation["security"] == [{}]
    assert "text/plain" in next(iter(operation["responses"]["200"]["content"]))


def test_no_raw_path_nor_id_in_any_label(client: Client) -> None:
    missing = uuid.uuid4()
    assert client.get(f"/notifications/{missing}").status_code == 404
    assert client.get(f"/no/such/path/{missing.hex}").status_code == 404
    assert client.post("/notify", json=LOG).status_code == 202
    client.get("/")  # the root route, whose template Litestar gives as ""
    got = scraped(client)
    for sample in got.samples():
        for value in sample.labels.values():
            assert not UUID.search(value), (sample.name, sample.labels)
            assert missing.hex not in value, (sample.name, sample.labels)
    paths = got.label_values("path", "notifier_api_requests_total")
    assert {"/notifications/{notification_id}", "/notify", "/"} <= paths
    assert all(p.startswith("/") and "/no/such" not in p for p in paths), paths
    assert "/metrics" not in paths  # scrapes are not counted as traffic
    assert (
        got.value(
            "notifier_api_requests_total", method="GET", path="/notifications/{notification_id}", status_code="404"
        )
        >= 1
    )
    assert got.value("notifier_api_request_duration_seconds_count", path="/notify", status_code="202") >= 1


def test_accepted_counts_each_source(client: Client) -> None:
    def accepted(channel: str, source: str) -> float:
        return scraped(client).value("notifier_notifications_accepted_total", channel=channel, source=source)

    before = {(c, s): accepted(c, s) for c, s in (("log", "api"), ("log", "batch"), ("webhook", "event"))}
    assert client.post("/notify", json=LOG).status_code == 202
    assert client.post("/notify", json={**LOG, "idempotency_key": "once"}).status_code == 202
    assert client.post("/notify", json={**LOG, "idempotency_key": "once"}).status_code == 202  # a replay
    batch = {"notifications": [LOG, LOG, {**LOG, "channel": "pigeon"}]}
    assert client.post("/notify/batch", json=batch).status_code == 200
    rule = {
        "name": "tell the customer",
        "event": "order.shipped",
        "channel": "webhook",
        "recipients": ["https://shop.example/hooks/{{ data.id }}", "https://audit.example/x"],
        "body": "Order {{ data.id }} shipped",
    }
    assert client.post("/rules", json=rule).status_code == 201
    assert client.post("/events", json={"type": "order.shipped", "data": {"id": 7}}).status_code == 202
    assert accepted("log", "api") - before["log", "api"] == 2
    assert accepted("log", "batch") - before["log", "batch"] == 2
    assert accepted("webhook", "event") - before["webhook", "event"] == 2


def test_notifications_by_status_come_from_postgres_cached(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    first = client.post("/notify", json=LOG).json()
    client.post("/notify", json=LOG)
    got = scraped(client)
    assert got.value("notifier_notifications", status="queued") == 2
    assert got.value("notifier_notifications", status="cancelled") == 0
    assert got.label_values("status", "notifier_notifications") == {
        "scheduled",
        "queued",
        "sending",
        "retrying",
        "sent",
        "failed",
        "cancelled",
    }
    assert client.post(f"/notifications/{first['id']}/cancel").status_code == 200
    monkeypatch.setattr(api_metrics, "STATUS_CACHE_SECONDS", 3600.0)
    assert scraped(client).value("notifier_notifications", status="queued") == 2  # still the cached count
    monkeypatch.setattr(api_metrics, "STATUS_CACHE_SECONDS", 0.0)
    got = scraped(client)
    assert got.value("notifier_notifications", status="queued") == 1
    assert got.value("notifier_notifications", status="cancelled") == 1


def _message(age_ms: int = 0) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=DELIVERY_QUEUE,
        actor_name=DELIVER_ACTOR,
        args=(str(uuid.uuid4()),),
        kwargs={},
        options={},
        message_timestamp=current_millis() - age_ms,
    )


@pytest.fixture
def stock_broker(settings: Settings) -> Iterator[RedisBroker]:
    """Dramatiq's own Redis broker on this test's namespace, to put messages where Dramatiq does."""
    broker = RedisBroker(url=settings.redis.url, namespace=settings.redis.namespace)
    broker.declare_queue(DELIVERY_QUEUE)
    yield broker
    broker.close()


def test_queue_gauges_read_what_dramatiq_holds(
    client: Client, settings: Settings, stock_broker: RedisBroker, broker: RedisBroker
) -> None:
    stock_broker.enqueue(_message(age_ms=10_000))  # the oldest ready one, 10 s old
    stock_broker.enqueue(_message())
    enqueuer(broker)([(uuid.uuid4(), 0), (uuid.uuid4(), 60_000), (uuid.uuid4(), 60_000), (uuid.uuid4(), 60_000)])
    # A worker fetches one delayed message and holds it until its eta: still delayed.
    held = stock_broker.consume(dq_name(DELIVERY_QUEUE), prefetch=1, timeout=1000)
    assert next(held) is not None
    # One dead-lettered by Dramatiq (a message it gave up on) ...
    dead = stock_broker.consume(DELIVERY_QUEUE, prefetch=1, timeout=1000)
    nacked = next(dead)
    assert nacked is not None
    dead.nack(nacked)
    dead.close()
    # ... and one entry in notifier's dead-letter stream.
    redis.Redis.from_url(settings.redis.url).xadd(dead_letter_stream(settings), {"notification_id": "x"})
    got = scraped(client)
    held.close()
    depth = {
        state: got.value("notifier_queue_messages", queue=DELIVERY_QUEUE, state=state) for state in metrics.QUEUE_STATES
    }
    assert depth == {"ready": 2, "delayed": 3, "dead": 1}
    assert got.value("notifier_queue_messages", queue="notifier.schedule", state="ready") == 0
    # The nacked message was the oldest; the next oldest is fresh.
    assert 0 <= got.value("notifier_queue_oldest_message_age_seconds", queue=DELIVERY_QUEUE) < 5
    assert got.value("notifier_dead_letters") == 1
    assert got.value("notifier_backend_up", backend="redis") == 1


def test_the_oldest_ready_age_counts_from_enqueue_or_eta(client: Client, stock_broker: RedisBroker) -> None:
    assert scraped(client).value("notifier_queue_oldest_message_age_seconds", queue=DELIVERY_QUEUE) == 0
    stock_broker.enqueue(_message(age_ms=10_000))
    assert 10 <= scraped(client).value("notifier_queue_oldest_message_age_seconds", queue=DELIVERY_QUEUE) < 15
    stock_broker.client.delete(f"{stock_broker.namespace}:{DELIVERY_QUEUE}")
    # A retried message, ready again after its eta: it has waited since the eta, not since it was first sent.
    retried = _message(age_ms=600_000).copy(options={"eta": current_millis() - 3_000})
    stock_broker.enqueue(retried)
    assert 3 <= scraped(client).value("notifier_queue_oldest_message_age_seconds", queue=DELIVERY_QUEUE) < 8


def test_a_scrape_answers_while_redis_is_away(
    database_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"
    settings = settings_module.load(notifier_env(database_url, away, redis_namespace, NOTIFIER_AUTH_DISABLED="true"))
    with TestClient(make_app(settings)) as client, caplog.at_level(logging.WARNING):
        assert client.post("/notify", json=LOG).status_code == 202  # stored; the relay enqueues it later
        assert client.get("/readyz").status_code == 503
        started = time.monotonic()
        got = scraped(client)
        assert time.monotonic() - started < api_metrics.BACKEND_TIMEOUT + 1
        scraped(client)
    assert got.value("notifier_notifications", status="queued") == 1
    assert got.value("notifier_backend_up", backend="redis") == 0
    assert got.value("notifier_backend_up", backend="postgresql") == 1
    assert not got.has("notifier_queue_messages")
    assert not got.has("notifier_dead_letters")
    assert got.has("notifier_api_requests_total", path="/notify")
    assert got.value("notifier_api_requests_error_total", path="/readyz", status_code="503") >= 1
    assert got.value("notifier_api_requests_in_progress", method="GET", app_name="notifier") == 0
    warnings = [r for r in caplog.records if r.name == "notifier.api.metrics"]
    assert len(warnings) == 1, warnings  # said once, not at every scrape
    assert warnings[0].levelno == logging.WARNING


@pytest.fixture
def worker_registry() -> Iterator[CollectorRegistry]:
    """Counting as a worker process does, on a registry of this test's own."""
    registry = CollectorRegistry()
    metrics.install("worker", registry)
    yield registry
    metrics.install("api")


def test_the_dispatcher_counts_every_outcome(
    settings: Settings, pool: ConnectionPool, worker_registry: CollectorRegistry
) -> None:
    memory = MemoryChannel()
    dispatcher = Dispatcher(settings, pool, {Channel.LOG: memory})
    due = datetime.now(UTC) - timedelta(seconds=30)
    late = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=due))
    assert dispatcher.deliver(late.id) == Delivered("sent")
    flaky = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x"))
    memory.fail_next(TransientDeliveryError("busy"), DeliveryTimeout("slow"))
    for _ in range(2):
        with pytest.raises(RetryLater):
            dispatcher.deliver(flaky.id)
    assert dispatcher.deliver(flaky.id) == Delivered("sent")
    refused = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x"))
    memory.fail_next(PermanentDeliveryError("no such mailbox"))
    assert dispatcher.deliver(refused.id).kind == "failed"
    assert dispatcher.deliver(refused.id) == Delivered("skipped")  # failed already: dropped, no attempt
    assert dispatcher.deliver(uuid.uuid4()) == Delivered("skipped")  # unknown

    got = parse(generate_latest(worker_registry).decode())
    outcomes = {
        outcome: got.value("notifier_deliveries_total", channel="log", outcome=outcome)
        for outcome in ("sent", "transient_error", "timeout", "permanent_error", "abandoned")
    }
    assert outcomes == {"sent": 2, "transient_error": 1, "timeout": 1, "permanent_error": 1, "abandoned": 1}
    assert got.value("notifier_deliveries_total", channel=metrics.UNKNOWN_CHANNEL, outcome="abandoned") == 1
    assert got.value("notifier_delivery_duration_seconds_count", channel="log") == 5  # every provider call
    assert got.value("notifier_delivery_latency_seconds_count", channel="log") == 2  # every send
    # The late one went out 30 s after it was due; the first attempt of each of the three was timed.
    assert got.value("notifier_delivery_latency_seconds_bucket", channel="log", le="30.0") <= 1
    assert got.value("notifier_delivery_lateness_seconds_count", channel="log") == 3
    assert got.value("notifier_delivery_lateness_seconds_sum", channel="log") >= 30


def test_the_relay_counts_why_it_took_each_row(settings: Settings, pool: ConnectionPool) -> None:
    def lost_enqueue(items: object) -> None:
        raise ConnectionError("Redis is away")

    missed = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x"), enqueue=lost_enqueue)
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=later))
    lost = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x"))
    lapsed = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x"))
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET created_at = now() - interval '1 minute'")
        conn.execute("UPDATE notifications SET send_at = now() WHERE id = %s", (scheduled.id,))
        conn.execute(
            "UPDATE notifications SET created_at = now() - interval '1 hour', enqueued_at = now() - interval '1 hour'"
            " WHERE id = %s",
            (lost.id,),
        )
        conn.execute(
            "UPDATE notifications SET status = 'sending', updated_at = now() - interval '1 hour' WHERE id = %s",
            (lapsed.id,),
        )
    registry = CollectorRegistry()
    metrics.install("scheduler", registry)
    try:
        enqueued: list[tuple[uuid.UUID, int]] = []
        assert Relay(settings, pool, enqueued.extend).relay_once() == 4
    finally:
        metrics.install("api")
    assert {i for i, _ in enqueued} == {missed.id, scheduled.id, lost.id, lapsed.id}
    got = parse(generate_latest(registry).decode())
    reasons = {r: got.value("notifier_relay_enqueued_total", reason=r) for r in metrics.RELAY_REASONS}
    assert reasons == {"due": 1, "missed": 1, "lost": 1, "lease_expired": 1}
    assert got.value("notifier_relay_passes_total") == 1
