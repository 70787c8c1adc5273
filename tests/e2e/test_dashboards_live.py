"""The dashboard and the alerts against the real processes: every metric they name is exported, and
every panel's query, run by a real Prometheus scraping ``notifier api``, ``worker --processes 2``
and ``scheduler``, returns data once the shared traffic (``traffic.py``) has gone through every
outcome; Prometheus evaluates every alerting rule without error; and every panel, drawn from
Prometheus' series in headless Chromium, shows data.

The screenshots go to a temporary directory; with ``NOTIFIER_TEST_UPDATE_PANELS=1`` they replace
the committed ones, ``docs/panels/<panel>.png`` (the README embeds ``delivery-outcomes.png``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dashboards import metrics
from tests.e2e import traffic
from tests.e2e.conftest import Stack, StartPrometheus, StartStack, wait_until
from tests.live_queries import check_answered, check_exported, check_rules_evaluate, scraped
from tests.peers import SmsPeer, WebhookPeer
from tests.prometheus import PrometheusServer, Target
from tests.render import render_panels, require_chromium
from tests.scrape import scrape

PANELS = Path(__file__).parents[2] / "docs" / "panels"
RATE_INTERVAL = "15s"
"""``$__rate_interval`` for this test's queries: Grafana's choice for a 1 s scrape interval is
shorter still; 15 s keeps every rate defined across the short run and still shows its shape."""
OUTCOME_DEADLINE = 120
ACCEPTED = "notifier_notifications_accepted_total"


def every_outcome_scraped(stack: Stack) -> bool:
    """Whether the api's, the worker's and the scheduler's scrapes together show every delivery
    outcome, every source, a rule firing and the relay's ``due`` and ``missed``; AssertionError as
    soon as a process has died."""
    for process in stack.processes:
        assert process.popen.poll() is None, f"{process.name} exited:\n{process.log()}"
    [scheduler] = stack.schedulers
    api, worker, relay = (
        scrape(f"{stack.client.base_url}/metrics"),
        scrape(stack.worker.metrics_url),
        scrape(scheduler.metrics_url),
    )
    return (
        worker.counted("outcome", "notifier_deliveries_total") == set(metrics.OUTCOMES)
        and api.counted("source", ACCEPTED) | worker.counted("source", ACCEPTED) == set(metrics.SOURCES)
        and worker.value("notifier_rule_firings_total", outcome="fired") > 0
        and {"due", "missed"} <= relay.counted("reason", "notifier_relay_enqueued_total")
    )


def outcomes_stored(prometheus: PrometheusServer, expr: str, since: float | None = None) -> set[str]:
    """The outcomes ``expr`` (over ``notifier_deliveries_total``) has a point for: now, or since ``since``."""
    if since is None:
        return {series["metric"]["outcome"] for series in prometheus.query(expr)}
    return {s.labels["outcome"] for s in prometheus.query_range(expr, since, time.time() + 1, 1) if s.finite}


def test_every_dashboard_and_alert_query_is_exported_and_answered(
    start_stack: StartStack,
    start_prometheus: StartPrometheus,
    webhook_receiver: WebhookPeer,
    sms_gateway: SmsPeer,
    tmp_path: Path,
) -> None:
    stack = start_stack(processes=2, **traffic.SETTINGS)
    [scheduler] = stack.schedulers
    addresses = {
        metrics.API_JOB: f"127.0.0.1:{stack.port}",
        metrics.WORKER_JOB: f"127.0.0.1:{stack.worker.metrics_port}",
        metrics.SCHEDULER_JOB: f"127.0.0.1:{scheduler.metrics_port}",
    }
    # Prometheus scrapes before the traffic starts, so that the rates have something to show.
    prometheus = start_prometheus(
        [Target(job, address) for job, address in addresses.items()], rule_files=[metrics.ALERTS]
    )
    prometheus.wait_targets_up(timeout=30)
    start = time.time()

    # Every series is exported at 0 from each process's start and scraped before the traffic, so
    # that the traffic shows on the rates.
    traffic.settle(stack, traffic.every_outcome(stack, webhook_receiver, sms_gateway, tmp_path))
    wait_until(
        lambda: every_outcome_scraped(stack),
        OUTCOME_DEADLINE,
        f"every outcome {metrics.OUTCOMES}, source {metrics.SOURCES}, a rule firing and the relay's due and missed",
        interval=0.5,
    )
    wait_until(
        lambda: (
            outcomes_stored(prometheus, f"rate(notifier_deliveries_total[{RATE_INTERVAL}]) > 0", start)
            == set(metrics.OUTCOMES)
        ),
        30,
        "a rate above 0 for every outcome in Prometheus",
        interval=0.5,
    )

    queries = metrics.expressions(interval=RATE_INTERVAL)
    check_exported(queries, scraped(addresses.values()))
    panels = metrics.panels(interval=RATE_INTERVAL)
    panel_queries = [query for panel in panels for query in panel.queries]
    alerts = [query for query in queries if query not in panel_queries]
    assert len(alerts) == len(list(metrics.alert_rules())) > 0
    check_answered(prometheus, panel_queries, alerts, start)
    assert sorted(check_rules_evaluate(prometheus)) == sorted(rule["alert"] for rule in metrics.alert_rules())

    require_chromium("the queries and the rules passed")
    out = PANELS if os.environ.get("NOTIFIER_TEST_UPDATE_PANELS") else tmp_path / "panels"
    if out == PANELS:
        for stale in PANELS.glob("*.png"):
            stale.unlink()
    rendered = render_panels(
        prometheus, panels, start=start, end=time.time() + 1, step=1, out_dir=out, width=400, height=150, grid_file=None
    )
    assert [r.title for r in rendered] == [panel.title for panel in panels]
    assert [r.title for r in rendered if r.series == 0] == [], "panels drawn without data"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(r.path.name for r in rendered)
