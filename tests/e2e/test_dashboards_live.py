"""The dashboard and the alerts against the real processes: every metric they name is exported, and
every panel's query, run by a real Prometheus scraping ``notifier api``, ``worker`` and ``scheduler``,
returns data once traffic has gone through every outcome. The panels are then rendered as PNGs.

Screenshots go to a temporary directory; with ``NOTIFIER_TEST_UPDATE_PANELS=1`` they replace the
committed ones in ``docs/panels/`` (the README embeds ``docs/panels/overview.png``).
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from dashboards import metrics
from tests.conftest import free_port
from tests.e2e.conftest import Stack, StartPrometheus, StartStack, wait_until
from tests.live_queries import check_answered, check_exported, check_rules_evaluate, scraped
from tests.peers import WebhookPeer
from tests.prometheus import JOBS, Target
from tests.render import GRID_FILE, render_panels, require_chromium

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "dashboards" / "notifier.json"
ALERTS = ROOT / "dashboards" / "alerts.yaml"
PANELS = ROOT / "docs" / "panels"
OUTCOMES = ("sent", "transient_error", "permanent_error", "timeout", "abandoned", "dead_lettered")
SOURCES = ("api", "batch", "event", "rule")
EXPENSIVE = (
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(2) %}{% endfor %}{% endfor %}{% endfor %}"
)


def _missing() -> list[str]:
    missing = [str(p.relative_to(ROOT)) for p in (DASHBOARD, ALERTS) if not p.exists()]
    if importlib.util.find_spec("notifier.observability.metrics") is None:
        missing.append("notifier/observability/metrics.py (the metric families)")
    return missing


MISSING = _missing()
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"not there yet: {', '.join(MISSING)}"),
    # Its traffic does not yet produce every outcome within its deadline against the real metrics
    # (issue 10, open): skipped until it is wired to dashboards.metrics and made to pass.
    pytest.mark.skip(reason="the live dashboard check is not wired to the merged metrics yet (issue 10)"),
]


def samples_of(url: str) -> dict[str, list[dict[str, str]]]:
    """Each sample name of a direct scrape with the label sets it has."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[dict[str, str]]] = {}
    for metric in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in metric.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def has(samples: dict[str, list[dict[str, str]]], name: str, **labels: str) -> bool:
    return any(labels.items() <= s.items() for s in samples.get(name, []))


def traffic(stack: Stack, webhook: WebhookPeer, database_url: str) -> None:
    """Notifications through every source and every delivery outcome, each waited for."""
    hook = f"{webhook.url}/live"
    sent = [
        stack.notify(channel="email", recipient="ada@example.com", subject="s", body="b"),
        stack.notify(channel="sms", recipient="+14155552671", body="b"),
        stack.notify(channel="log", recipient="ops", body="b"),
        stack.notify(channel="log", recipient="ops", body="due", send_at=_in(2)),  # the relay's `due`
    ]
    items = [{"channel": "log", "recipient": "ops", "body": f"{i}"} for i in (1, 2)]
    batch = stack.client.post("/notify/batch", json={"notifications": items})
    assert batch.status_code in (200, 207), batch.text
    rule = {"channel": "log", "recipients": ["ops"], "body": "b"}
    assert stack.client.post("/rules", json={"name": "shipped", "event": "order.shipped", **rule}).status_code == 201
    assert stack.client.post("/events", json={"type": "order.shipped", "data": {}}).status_code == 202

    # A schedule rule whose template became too costly fails its firing; creating the next one asks
    # for a tick at once, in which the next one fires.
    costly = stack.client.post("/rules", json={"name": "costly", "schedule": "* * * * *", **rule}).json()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE rules SET body = %s, next_fire_at = now() WHERE id = %s", (EXPENSIVE, costly["id"]))
    minutely = stack.client.post("/rules", json={"name": "minutely", "schedule": "* * * * *", **rule})
    assert minutely.status_code == 201, minutely.text

    # The webhook peer answers in the order scripted, so these go one after the other.
    webhook.respond(503, body="maintenance")
    transient = stack.notify(channel="webhook", recipient=hook, body="retried")
    stack.wait_status(transient["id"], "sent")
    webhook.respond(410, body="gone")
    stack.wait_status(stack.notify(channel="webhook", recipient=hook, body="refused")["id"], "failed")
    webhook.respond(200, delay=2, times=2)  # NOTIFIER_WEBHOOK_TIMEOUT=1, two attempts
    stack.wait_status(stack.notify(channel="webhook", recipient=hook, body="slow")["id"], "failed", timeout=30)

    from notifier import settings
    from notifier.worker.broker import build, enqueuer

    broker = build(settings.load(stack.env))
    try:
        enqueuer(broker)([(uuid.uuid4(), 0)])  # a notification nobody knows: dropped, `abandoned`
    finally:
        broker.close()
    for created in sent:
        stack.wait_status(created["id"], "sent")


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_every_dashboard_and_alert_query_is_exported_and_answered(
    start_stack: StartStack, start_prometheus: StartPrometheus, webhook_receiver: WebhookPeer, database_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    worker_port, scheduler_port = free_port(), free_port()
    stack = start_stack(
        NOTIFIER_WORKER_METRICS_PORT=str(worker_port),
        NOTIFIER_SCHEDULER_METRICS_PORT=str(scheduler_port),
        NOTIFIER_METRICS_HOST="127.0.0.1",
        NOTIFIER_METRICS_DIR=str(tmp_path / "metrics"),
        NOTIFIER_WEBHOOK_TIMEOUT="1",
        NOTIFIER_WEBHOOK_MAX_ATTEMPTS="2",
    )
    urls = {
        "notifier-api": f"127.0.0.1:{stack.port}",
        "notifier-worker": f"127.0.0.1:{worker_port}",
        "notifier-scheduler": f"127.0.0.1:{scheduler_port}",
    }
    assert set(urls) == set(JOBS)
    # Prometheus first, so that it scrapes while the traffic flows and the rates have something to show.
    prometheus = start_prometheus([Target(job, address) for job, address in urls.items()], rule_files=[ALERTS])
    start = time.time()
    traffic(stack, webhook_receiver, database_url)

    def worker_saw_every_outcome() -> dict[str, list[dict[str, str]]] | None:
        samples = samples_of(f"http://{urls['notifier-worker']}/metrics")
        done = all(has(samples, "notifier_deliveries_total", outcome=o) for o in OUTCOMES)
        return samples if done else None

    wait_until(worker_saw_every_outcome, 30, f"notifier_deliveries_total with every outcome {OUTCOMES}", interval=0.5)
    api = samples_of(f"http://{urls['notifier-api']}/metrics")
    worker = samples_of(f"http://{urls['notifier-worker']}/metrics")
    for source in SOURCES:
        where = worker if source == "rule" else api
        assert has(where, "notifier_notifications_accepted_total", source=source), f"no accepted source={source}"
    for outcome in ("fired", "failed"):
        assert has(worker, "notifier_rule_firings_total", outcome=outcome), f"no rule firing {outcome}"
    scheduler = samples_of(f"http://{urls['notifier-scheduler']}/metrics")
    assert has(scheduler, "notifier_relay_enqueued_total", reason="due"), "the relay enqueued nothing due"

    queries = metrics.expressions(interval="1m")
    check_exported(queries, scraped(urls.values()))
    prometheus.wait_targets_up(timeout=30)
    panel_queries = [q for q in queries if q.source.startswith("dashboard:")]
    check_answered(prometheus, panel_queries, [q for q in queries if q.source.startswith("alert:")], start)
    check_rules_evaluate(prometheus)

    require_chromium("the queries passed")
    out = PANELS if os.environ.get("NOTIFIER_TEST_UPDATE_PANELS") else tmp_path / "panels"
    panels = metrics.panels(interval="1m")
    rendered = render_panels(prometheus, panels, start=start - 5, end=time.time(), step=1, out_dir=out)
    assert [r.title for r in rendered if r.series == 0] == [], "panels rendered without data"
    assert (out / GRID_FILE).stat().st_size > 10_000
