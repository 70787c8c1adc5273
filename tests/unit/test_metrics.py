"""The metric helpers, each on a registry of its own: what they count, and nothing when off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from notifier.api.metrics import RequestMetrics
from notifier.observability import metrics
from notifier.observability.tally import Tally
from tests.scrape import Scrape, parse


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    fresh = CollectorRegistry()
    metrics.install("worker", fresh)
    yield fresh
    metrics.disable()


def scraped(registry: CollectorRegistry) -> Scrape:
    return parse(generate_latest(registry).decode())


def test_each_helper_counts_on_its_family(registry: CollectorRegistry) -> None:
    metrics.accepted("email", "rule", 3)
    metrics.accepted("email", "rule")
    metrics.delivered("sms", "sent")
    metrics.delivered("sms", "sent")
    metrics.delivered("sms", "timeout")
    metrics.provider_call("webhook", 0.2)
    metrics.sent("webhook", 1.5)
    metrics.first_attempt("webhook", 0.03)
    metrics.tick()
    metrics.rule_firings("fired", 2)
    metrics.rule_firings("failed")
    got = scraped(registry)
    assert got.value("notifier_notifications_accepted_total", channel="email", source="rule") == 4
    assert got.value("notifier_deliveries_total", channel="sms", outcome="sent") == 2
    assert got.value("notifier_deliveries_total", channel="sms", outcome="timeout") == 1
    assert got.value("notifier_delivery_duration_seconds_sum", channel="webhook") == pytest.approx(0.2)
    assert got.value("notifier_delivery_duration_seconds_bucket", channel="webhook", le="0.25") == 1
    assert got.value("notifier_delivery_duration_seconds_bucket", channel="webhook", le="0.1") == 0
    assert got.value("notifier_delivery_latency_seconds_count", channel="webhook") == 1
    assert got.value("notifier_delivery_lateness_seconds_sum", channel="webhook") == pytest.approx(0.03)
    assert got.value("notifier_scheduler_ticks_total") == 1
    assert got.value("notifier_rule_firings_total", outcome="fired") == 2
    assert got.value("notifier_rule_firings_total", outcome="failed") == 1


def test_a_negative_delay_counts_as_on_time(registry: CollectorRegistry) -> None:
    """The worker's clock may run a little behind the API's that stamped created_at."""
    metrics.first_attempt("log", -0.004)
    assert scraped(registry).value("notifier_delivery_lateness_seconds_bucket", channel="log", le="0.01") == 1


def test_no_created_series_and_no_other_process_families(registry: CollectorRegistry) -> None:
    names = scraped(registry).series_names()
    assert "notifier_scheduler_ticks_total" in names  # the worker's, at 0 from the start
    assert not {"notifier_relay_passes_total", "notifier_scheduler_ticks_sent_total"} & names  # the scheduler's
    assert not [n for n in names if n.endswith("_created")]


def test_the_scheduler_counts_relay_passes_by_reason() -> None:
    registry = CollectorRegistry()
    metrics.install("scheduler", registry)
    try:
        metrics.relayed({"due": 2, "missed": 1})
        metrics.relayed({})
        metrics.tick_sent()
    finally:
        metrics.disable()
    got = scraped(registry)
    assert got.value("notifier_relay_passes_total") == 2
    assert got.value("notifier_relay_enqueued_total", reason="due") == 2
    assert got.value("notifier_relay_enqueued_total", reason="missed") == 1
    assert got.value("notifier_relay_enqueued_total", reason="lost") == 0
    assert got.value("notifier_scheduler_ticks_sent_total") == 1
    assert "notifier_scheduler_ticks_total" not in got.series_names()


def test_nothing_is_counted_when_disabled(registry: CollectorRegistry) -> None:
    metrics.disable()
    metrics.accepted("email", "api")
    metrics.delivered("email", "sent")
    metrics.provider_call("email", 1.0)
    metrics.tick()
    got = scraped(registry)
    assert got.value("notifier_notifications_accepted_total") == 0
    assert got.value("notifier_deliveries_total") == 0
    assert got.value("notifier_delivery_duration_seconds_count") == 0
    assert got.value("notifier_scheduler_ticks_total") == 0
    assert not metrics.enabled()


@pytest.mark.parametrize(
    ("process", "family", "label", "values"),
    [
        ("api", "notifier_notifications_accepted_total", "source", {"api", "batch", "event"}),
        ("worker", "notifier_notifications_accepted_total", "source", {"rule"}),
        ("worker", "notifier_deliveries_total", "outcome", set(metrics.OUTCOMES)),
        ("worker", "notifier_delivery_latency_seconds_count", "channel", {"email", "sms", "webhook", "log"}),
        ("worker", "notifier_rule_firings_total", "outcome", {"fired", "failed"}),
        ("scheduler", "notifier_relay_enqueued_total", "reason", set(metrics.RELAY_REASONS)),
    ],
)
def test_every_series_a_process_counts_starts_at_zero(
    process: metrics.Process, family: str, label: str, values: set[str]
) -> None:
    """So that Prometheus sees a first event as an increase (its first sample of a series is its start)."""
    registry = CollectorRegistry()
    metrics.install(process, registry)
    metrics.disable()
    got = scraped(registry)
    assert got.label_values(label, family) == values
    assert got.value(family) == 0
    if family == "notifier_deliveries_total":
        assert got.label_values("channel", family) == {"email", "sms", "webhook", "log", metrics.UNKNOWN_CHANNEL}
        assert {s.labels["outcome"] for s in got.samples(family, channel=metrics.UNKNOWN_CHANNEL)} == {"abandoned"}


def test_installing_twice_on_one_registry_keeps_the_families(registry: CollectorRegistry) -> None:
    metrics.accepted("log", "api")
    metrics.install("worker", registry)  # a second app in the same process: no duplicate registration
    metrics.accepted("log", "api")
    assert scraped(registry).value("notifier_notifications_accepted_total", channel="log", source="api") == 2


def test_live_families_leave_out_what_did_not_answer() -> None:
    depth = metrics.QueueDepth(ready=3, delayed=2, dead=1, oldest_ready_age=4.5)
    text = generate_latest(
        metrics.Chain(
            list(
                metrics.live_families(
                    queues={"notifier.deliver": depth},
                    dead_letters=7,
                    statuses=None,
                    up={"redis": True, "postgresql": False},
                )
            )
        )
    ).decode()
    got = parse(text)
    assert got.value("notifier_queue_messages", queue="notifier.deliver", state="ready") == 3
    assert got.value("notifier_queue_messages", queue="notifier.deliver", state="delayed") == 2
    assert got.value("notifier_queue_messages", queue="notifier.deliver", state="dead") == 1
    assert got.value("notifier_queue_oldest_message_age_seconds", queue="notifier.deliver") == 4.5
    assert got.value("notifier_dead_letters") == 7
    assert "notifier_notifications" not in got.series_names()
    assert got.value("notifier_backend_up", backend="postgresql") == 0
    assert got.value("notifier_backend_up", backend="redis") == 1
    assert got.types()["notifier_queue_messages"] == "gauge"


def test_on_a_tally_the_helpers_count_once_added_up() -> None:
    fresh = CollectorRegistry()
    metrics.install("worker", fresh, Tally())
    try:
        metrics.delivered("sms", "sent")
        metrics.sent("sms", 1.5)
        assert scraped(fresh).value("notifier_deliveries_total", channel="sms", outcome="sent") == 0
        metrics.add_up()
        got = scraped(fresh)
        assert got.value("notifier_deliveries_total", channel="sms", outcome="sent") == 1
        assert got.value("notifier_delivery_latency_seconds_bucket", channel="sms", le="2.5") == 1
        assert got.value("notifier_delivery_latency_seconds_bucket", channel="sms", le="1.0") == 0
    finally:
        metrics.disable()


def test_the_apis_request_counts_do_not_grow_unscraped() -> None:
    """Unscraped, the API's tally holds its series, however many requests it counted."""
    tally = Tally()

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = "/things/{id}"
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    counted = RequestMetrics(route, tally, prefix="notifier_test_api")

    async def requests(n: int) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        for i in range(n):
            await counted({"type": "http", "method": "POST", "path": f"/things/{i}"}, receive, send)  # type: ignore[arg-type]

    asyncio.run(requests(100))
    held = tally.held()
    asyncio.run(requests(2000))
    assert tally.held() == held == 3  # in progress, requests, durations
    tally.add_up()
    labels = {"method": "POST", "path": "/things/{id}", "status_code": "202", "app_name": "notifier"}
    assert REGISTRY.get_sample_value("notifier_test_api_requests_total", labels) == 2100
    in_progress = REGISTRY.get_sample_value(
        "notifier_test_api_requests_in_progress", {"method": "POST", "app_name": "notifier"}
    )
    assert in_progress == 0
