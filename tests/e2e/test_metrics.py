"""Every family of the metric contract, from the real api, ``worker --processes 2`` and scheduler,
after traffic through every outcome: scraped from their three ports and checked against what
PostgreSQL recorded."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.mmap_dict import MmapedDict

from notifier.observability.metrics import OUTCOMES, RELAY_REASONS, SOURCES
from tests.e2e import traffic
from tests.e2e.conftest import StartStack, wait_until
from tests.peers import SmsPeer, SmtpPeer, WebhookPeer
from tests.scrape import Scrape, scrape

LOG = {"channel": "log", "recipient": "ops", "body": "x"}
CHANNELS = {"email", "sms", "webhook", "log"}
STATUSES = {"scheduled", "queued", "sending", "retrying", "sent", "failed", "cancelled"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

API_FAMILIES = {
    "notifier_api_requests_total",
    "notifier_api_request_duration_seconds_bucket",
    "notifier_api_requests_in_progress",
    "notifier_notifications_accepted_total",
    "notifier_queue_messages",
    "notifier_queue_oldest_message_age_seconds",
    "notifier_notifications",
    "notifier_dead_letters",
    "process_cpu_seconds_total",
    "python_info",
}
WORKER_FAMILIES = {
    "dramatiq_messages_total",
    "dramatiq_message_errors_total",
    "dramatiq_message_retries_total",
    "dramatiq_message_rejects_total",
    "dramatiq_messages_inprogress",
    "dramatiq_message_duration_milliseconds_bucket",
    "notifier_deliveries_total",
    "notifier_delivery_duration_seconds_bucket",
    "notifier_delivery_latency_seconds_bucket",
    "notifier_delivery_lateness_seconds_bucket",
    "notifier_scheduler_ticks_total",
    "notifier_rule_firings_total",
    "notifier_notifications_accepted_total",
}
SCHEDULER_FAMILIES = {
    "notifier_relay_enqueued_total",
    "notifier_relay_passes_total",
    "notifier_scheduler_ticks_sent_total",
    "process_cpu_seconds_total",
    "python_info",
}


def in_db(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def per_process_sent(directory: Path) -> dict[str, float]:
    """``notifier_deliveries_total{outcome="sent"}`` as each worker process wrote it (its own file)."""
    found: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if '"notifier_deliveries_total"' in key and '"sent"' in key:
                found[path.name] = found.get(path.name, 0.0) + value
    return found


def test_every_family_is_exported_and_adds_up(
    start_stack: StartStack,
    database_url: str,
    smtp_server: SmtpPeer,
    sms_gateway: SmsPeer,
    webhook_receiver: WebhookPeer,
    tmp_path: Path,
) -> None:
    stack = start_stack(processes=2, **traffic.SETTINGS)
    api_url = f"{stack.client.base_url}/metrics"
    worker_url = stack.worker.metrics_url
    [scheduler] = stack.schedulers

    # Two worker processes, one exposition: N sent are N, however the processes shared them.
    batch = stack.client.post("/notify/batch", json={"notifications": [LOG] * 40})
    assert batch.status_code == 200, batch.text
    ids = [r["notification"]["id"] for r in batch.json()["results"]]
    wait_until(lambda: sent_count(database_url) == 40, 30, "the batch to be sent")
    first = wait_until(
        lambda: (s := scrape(worker_url)).value("notifier_deliveries_total", outcome="sent") == 40 and s,
        10,
        "the worker's metrics to count the batch",
    )
    assert first.value("notifier_deliveries_total", channel="log", outcome="sent") == 40
    assert first.value("dramatiq_messages_total", actor_name="deliver_notification") == 40
    assert first.value("notifier_delivery_latency_seconds_count", channel="log") == 40
    by_process = per_process_sent(tmp_path / "worker-metrics")
    assert len(by_process) == 2, f"both processes should have delivered some: {by_process}"
    assert sum(by_process.values()) == 40
    assert len(ids) == 40

    # Every outcome, every source, every relay reason the processes can show without faults.
    outcomes = traffic.every_outcome(stack, webhook_receiver, sms_gateway, tmp_path)
    traffic.settle(stack, outcomes)

    worker, api, relay = wait_until(
        lambda: settled(database_url, worker_url, api_url, scheduler.metrics_url), 40, "a settled scrape that adds up"
    )

    # The API: the requests by route template, what it accepted by source, the gauges it read.
    assert api.series_names() >= API_FAMILIES
    assert api.value("notifier_api_requests_total", method="POST", path="/notify", status_code="202") >= 10
    assert api.value("notifier_api_requests_total", path="/notifications/{notification_id}") >= 1
    assert api.value("notifier_notifications_accepted_total", source="api") >= 10
    assert api.value("notifier_notifications_accepted_total", channel="log", source="batch") == 40 + traffic.BATCH
    assert api.value("notifier_notifications_accepted_total", channel="webhook", source="event") == 1
    assert api.label_values("status", "notifier_notifications") == STATUSES
    assert api.value("notifier_notifications", status="failed") == traffic.DEAD_LETTERED
    assert {(s.labels["queue"], s.labels["state"]) for s in api.samples("notifier_queue_messages")} == {
        (q, state) for q in ("notifier.deliver", "notifier.schedule") for state in ("ready", "delayed", "dead")
    }
    assert api.value("notifier_queue_messages", queue="notifier.deliver", state="dead") == traffic.DEAD_LETTERED
    assert api.value("notifier_dead_letters") == traffic.DEAD_LETTERED

    # The worker: Dramatiq's families and the deliveries.
    assert worker.series_names() >= WORKER_FAMILIES
    assert worker.counted("outcome", "notifier_deliveries_total") == set(OUTCOMES)
    assert worker.value("notifier_deliveries_total", channel="sms", outcome="abandoned") == 1
    assert (
        worker.value("notifier_deliveries_total", channel="webhook", outcome="dead_lettered") == traffic.DEAD_LETTERED
    )
    assert worker.counted("channel", "notifier_delivery_duration_seconds_count") == CHANNELS
    assert worker.counted("channel", "notifier_delivery_latency_seconds_count") == CHANNELS
    assert worker.counted("channel", "notifier_delivery_lateness_seconds_count") == CHANNELS
    assert worker.value("dramatiq_message_rejects_total", actor_name="deliver_notification") == traffic.DEAD_LETTERED
    assert worker.value("dramatiq_message_retries_total", actor_name="deliver_notification") >= 5
    assert worker.value("dramatiq_message_errors_total", actor_name="deliver_notification") >= 5
    assert worker.value("dramatiq_messages_total", actor_name="fire_schedules") >= 1
    assert worker.value("notifier_scheduler_ticks_total") >= 1
    assert worker.label_values("source", "notifier_notifications_accepted_total") == {"rule"}
    assert worker.value("notifier_notifications_accepted_total", channel="log", source="rule") >= 1

    # The scheduler: what the relay took and why, its passes, the ticks it sent (0 until a minute turns).
    assert relay.series_names() >= SCHEDULER_FAMILIES
    assert relay.value("notifier_relay_enqueued_total", reason="due") >= 1
    assert relay.value("notifier_relay_enqueued_total", reason="missed") >= 1
    assert relay.label_values("reason", "notifier_relay_enqueued_total") <= set(RELAY_REASONS)
    assert relay.value("notifier_relay_passes_total") >= 1

    # Bounded labels everywhere: no id, no raw path.
    for scraped in (api, worker, relay):
        assert scraped.label_values("source") <= set(SOURCES)
        assert scraped.label_values("channel") <= CHANNELS | {"unknown"}
        for sample in scraped.samples():
            for value in sample.labels.values():
                assert not UUID.search(value), (sample.name, sample.labels)
    assert smtp_server.messages
    assert outcomes.hooks.seen["/flaky"] == 2


def sent_count(database_url: str) -> int:
    [(count,)] = in_db(database_url, "SELECT count(*) FROM notifications WHERE status = 'sent'")
    return int(count)


def settled(
    database_url: str, worker_url: str, api_url: str, scheduler_url: str
) -> tuple[Scrape, Scrape, Scrape] | None:
    """The three scrapes, once nothing is on its way and the worker's counts equal the attempts and
    failures PostgreSQL recorded (read before and after the scrape, unchanged in between)."""

    def truth() -> tuple[Counter[tuple[str, str]], list[tuple[Any, ...]]]:
        attempts = Counter(
            {
                (channel, outcome): n
                for channel, outcome, n in in_db(
                    database_url,
                    "SELECT n.channel, a.outcome, count(*) FROM delivery_attempts a"
                    " JOIN notifications n ON n.id = a.notification GROUP BY 1, 2",
                )
            }
        )
        for channel, n in in_db(
            database_url, "SELECT channel, count(*) FROM notifications WHERE status = 'failed' GROUP BY 1"
        ):
            attempts[channel, "dead_lettered"] = n
        busy = in_db(database_url, "SELECT id FROM notifications WHERE status IN ('queued', 'sending', 'retrying')")
        return attempts, busy

    before, busy = truth()
    if busy:
        return None
    worker = scrape(worker_url)
    after, _ = truth()
    if before != after:
        return None
    counted = Counter(
        {
            (s.labels["channel"], s.labels["outcome"]): int(s.value)
            for s in worker.samples("notifier_deliveries_total")
            if s.labels["outcome"] != "abandoned"
        }
    )
    if counted != +before:
        return None
    messages = worker.value("dramatiq_messages_total", actor_name="deliver_notification")
    handled = sum(n for (_, outcome), n in before.items() if outcome != "dead_lettered")
    if messages < handled + worker.value("notifier_deliveries_total", outcome="abandoned"):
        return None
    return worker, scrape(api_url), scrape(scheduler_url)


def test_metrics_off_serves_none(start_stack: StartStack) -> None:
    stack = start_stack(NOTIFIER_METRICS_ENABLED="false")
    sent = stack.notify(**LOG)
    stack.wait_status(sent["id"], "sent")
    assert stack.client.get("/metrics").status_code == 404
    for process in (stack.worker, *stack.schedulers):
        try:
            httpx.get(process.metrics_url, timeout=2)
        except httpx.ConnectError:
            continue
        raise AssertionError(f"{process.name} serves metrics with NOTIFIER_METRICS_ENABLED=false")
    assert "serving metrics" not in stack.schedulers[0].log()
