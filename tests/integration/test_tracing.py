"""Tracing in process, on the real PostgreSQL and Redis: the API's SERVER spans, the trace context
each notification is stored with (request, batch, event, rule firing) and the relay's links to it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from notifier.observability import tracing
from notifier.services.relay import Relay
from notifier.services.rules import RuleScheduler
from notifier.settings import Settings
from notifier.store.delivery import Pool
from notifier.worker.broker import DELIVERY_QUEUE, build, enqueuer
from tests.integration.conftest import make_app

Client = TestClient[Litestar]


@pytest.fixture
def traced_client(spans: InMemorySpanExporter, settings: Settings) -> Iterator[Client]:
    """The API built while tracing is on (so with Litestar's OpenTelemetry plugin)."""
    with TestClient(make_app(settings)) as client:
        yield client


def servers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return tracing.format_traceparent(span.context)


def stored_trace_parents(pool: Pool, ids: list[str]) -> list[str | None]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT id::text, trace_parent FROM notifications WHERE id = ANY(%s::uuid[])", (ids,))
        found = {row["id"]: row["trace_parent"] for row in rows.fetchall()}
    return [found[i] for i in ids]


def test_server_spans_are_named_by_route_template_and_probes_make_none(
    traced_client: Client, spans: InMemorySpanExporter
) -> None:
    created = traced_client.post("/notify", json={"channel": "log", "recipient": "ops", "body": "x"}).json()
    assert traced_client.get(f"/notifications/{created['id']}").status_code == 200
    assert traced_client.get("/healthz").status_code == 200
    assert traced_client.get("/readyz").status_code == 200
    assert traced_client.get("/metrics").status_code == 200
    names = [s.name for s in servers(spans)]
    [by_id] = [s for s in servers(spans) if s.name.startswith("GET /notifications/")]
    assert names == ["POST /notify", by_id.name]
    assert created["id"] not in by_id.name
    assert by_id.attributes is not None
    assert by_id.name == f"GET {by_id.attributes['http.route']}"
    assert "{" in by_id.name  # the template's parameter, not the value


def test_notifications_keep_the_trace_context_they_were_created_in(
    traced_client: Client, spans: InMemorySpanExporter, pool: Pool
) -> None:
    one = traced_client.post("/notify", json={"channel": "log", "recipient": "ops", "body": "one"}).json()
    batch = traced_client.post(
        "/notify/batch",
        json={"notifications": [{"channel": "log", "recipient": "ops", "body": f"b{i}"} for i in range(2)]},
    ).json()
    rule = {"name": "r", "event": "order.shipped", "channel": "log", "recipients": ["ops"], "body": "shipped"}
    assert traced_client.post("/rules", json=rule).status_code == 201
    event = traced_client.post("/events", json={"type": "order.shipped", "data": {}}).json()
    by_name = {s.name: s for s in servers(spans)}
    ids = [one["id"], *(r["notification"]["id"] for r in batch["results"]), event["notifications"][0]["id"]]
    assert stored_trace_parents(pool, ids) == [
        traceparent_of(by_name["POST /notify"]),
        traceparent_of(by_name["POST /notify/batch"]),
        traceparent_of(by_name["POST /notify/batch"]),
        traceparent_of(by_name["POST /events"]),
    ]


def test_rule_firings_are_linked_from_the_relay_span_that_enqueues_them(
    traced_client: Client, spans: InMemorySpanExporter, settings: Settings, pool: Pool, redis_url: str
) -> None:
    rule = {
        "name": "stand-up",
        "schedule": "*/5 * * * *",
        "timezone": "UTC",
        "channel": "log",
        "recipients": ["a", "b"],
        "body": "stand up",
    }
    rule_id = traced_client.post("/rules", json=rule).json()["id"]
    due = datetime(2030, 6, 3, 10, 5, tzinfo=UTC)  # the next firing, 10:10, lies beyond the lookahead
    with pool.connection() as conn:
        conn.execute("UPDATE rules SET next_fire_at = %s WHERE id = %s", (due, rule_id))
    assert RuleScheduler(settings, pool).fire_due(due - timedelta(seconds=90)) == 2
    [fire] = [s for s in spans.get_finished_spans() if s.name == "fire rule"]
    assert fire.attributes is not None
    assert fire.attributes["notifier.rule.id"] == rule_id
    with pool.connection() as conn:
        rows = conn.execute("SELECT id::text, trace_parent FROM notifications WHERE rule = %s", (rule_id,)).fetchall()
    assert [row["trace_parent"] for row in rows] == [traceparent_of(fire)] * 2

    broker = build(settings)
    try:
        assert Relay(settings, pool, enqueuer(broker)).relay_once(due + timedelta(seconds=5)) == 2
    finally:
        broker.close()
    [relay] = [s for s in spans.get_finished_spans() if s.name == "relay notifications"]
    assert relay.parent is None
    assert fire.context is not None
    assert [(link.context.trace_id, link.context.span_id) for link in relay.links] == [
        (fire.context.trace_id, fire.context.span_id)
    ] * 2
    producers = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER and s.name == "send notifier.deliver"
    ]
    assert len(producers) == 2
    assert relay.context is not None
    assert all(p.parent is not None and p.parent.span_id == relay.context.span_id for p in producers)
    # The messages on Redis carry their PRODUCER span's context.
    client = redis.Redis.from_url(redis_url)
    try:
        stored: list[dict[str, Any]] = [
            msgspec.json.decode(raw) for raw in client.hvals(f"{settings.redis.namespace}:{DELIVERY_QUEUE}.msgs")
        ]
    finally:
        client.close()
    assert sorted(m["options"]["traceparent"] for m in stored if m["args"][0] in {r["id"] for r in rows}) == sorted(
        traceparent_of(p) for p in producers
    )
