"""The metric contract the dashboard and the alerts are written against, as data.

Every family a notifier process exports (or a library it runs exports for it) is listed once in
:data:`FAMILIES`, with its type, labels and the Prometheus job that scrapes it. The tests use this
list to hold ``notifier.json`` and ``alerts.yaml`` to the contract; :func:`expressions` lists every
PromQL expression of both (so a test can run each against a real Prometheus), and
:func:`metric_names` reads the series names an expression selects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import promql_parser
import yaml

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "notifier.json"
ALERTS = HERE / "alerts.yaml"

API_JOB = "notifier-api"
WORKER_JOB = "notifier-worker"
SCHEDULER_JOB = "notifier-scheduler"
JOBS = (API_JOB, WORKER_JOB, SCHEDULER_JOB)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: its name as exposed (counters with ``_total``), kind, labels and job."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    job: str

    def samples(self) -> frozenset[str]:
        """The series names this family appears under in a scrape."""
        if self.kind == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return frozenset({self.name})


_HTTP = ("method", "path", "status_code", "app_name")
_DRAMATIQ = ("queue_name", "actor_name")

FAMILIES: tuple[Family, ...] = (
    # The API: Litestar's Prometheus middleware (prefix notifier_api, route templates as `path`).
    Family("notifier_api_requests_total", "counter", _HTTP, API_JOB),
    Family("notifier_api_request_duration_seconds", "histogram", _HTTP, API_JOB),
    Family("notifier_api_requests_in_progress", "gauge", ("method", "path", "app_name"), API_JOB),
    Family("notifier_api_requests_error_total", "counter", _HTTP, API_JOB),
    # The API: notifier's own, the gauges read from Redis and PostgreSQL at scrape.
    Family("notifier_notifications_accepted_total", "counter", ("channel", "source"), API_JOB),
    Family("notifier_queue_messages", "gauge", ("queue", "state"), API_JOB),
    Family("notifier_queue_oldest_message_age_seconds", "gauge", ("queue",), API_JOB),
    Family("notifier_notifications", "gauge", ("status",), API_JOB),
    Family("notifier_dead_letters", "gauge", (), API_JOB),
    # The worker: Dramatiq's Prometheus middleware.
    Family("dramatiq_messages_total", "counter", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_message_errors_total", "counter", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_message_retries_total", "counter", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_message_rejects_total", "counter", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_messages_inprogress", "gauge", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_delayed_messages_inprogress", "gauge", _DRAMATIQ, WORKER_JOB),
    Family("dramatiq_message_duration_milliseconds", "histogram", _DRAMATIQ, WORKER_JOB),
    # The worker: deliveries, and the scheduler's ticks and rule firings (they run on the worker).
    Family("notifier_deliveries_total", "counter", ("channel", "outcome"), WORKER_JOB),
    Family("notifier_delivery_duration_seconds", "histogram", ("channel",), WORKER_JOB),
    Family("notifier_delivery_latency_seconds", "histogram", ("channel",), WORKER_JOB),
    Family("notifier_delivery_lateness_seconds", "histogram", ("channel",), WORKER_JOB),
    Family("notifier_scheduler_ticks_total", "counter", (), WORKER_JOB),
    Family("notifier_rule_firings_total", "counter", ("outcome",), WORKER_JOB),
    # The scheduler: the outbox relay and periodiq's sends.
    Family("notifier_relay_enqueued_total", "counter", ("reason",), SCHEDULER_JOB),
    Family("notifier_relay_passes_total", "counter", (), SCHEDULER_JOB),
    Family("notifier_scheduler_ticks_sent_total", "counter", (), SCHEDULER_JOB),
)

# Series Prometheus makes itself for every target; no process exports them.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Bounded label values the contract fixes, for the tests and the alert thresholds' wording.
OUTCOMES = ("sent", "transient_error", "permanent_error", "timeout", "abandoned", "dead_lettered")
SOURCES = ("api", "batch", "rule", "event")
QUEUE_STATES = ("ready", "delayed", "dead")
QUEUES = ("notifier.deliver", "notifier.schedule")
RELAY_REASONS = ("due", "missed", "lost", "lease_expired")
STATUSES = ("scheduled", "queued", "sending", "retrying", "sent", "failed", "cancelled")

# What Grafana puts in for its variables when it runs a panel's query; the values make the
# expression valid PromQL that selects every target, as the dashboard's "All" does.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
    "${instance:regex}": ".+",
    "$instance": ".+",
}


def family(name: str) -> Family:
    """The family a series name belongs to (``…_bucket`` belongs to its histogram)."""
    for candidate in FAMILIES:
        if name in candidate.samples():
            return candidate
    raise KeyError(name)


def exported_names() -> frozenset[str]:
    """Every series name the contract's families appear under in a scrape."""
    return frozenset().union(*(f.samples() for f in FAMILIES))


def concrete(expr: str) -> str:
    """``expr`` with Grafana's variables replaced, ready for Prometheus' HTTP API as it stands."""
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    leftover = re.search(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"unknown Grafana variable {leftover.group(0)!r} in {expr!r}")
    return expr


def metric_names(expr: str) -> frozenset[str]:
    """The series names ``expr`` selects (parsed, not pattern-matched); Grafana variables allowed."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name is None:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return frozenset(names)


def dashboard_panels(dashboard: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of the committed dashboard that is not a row, including those inside rows."""
    if dashboard is None:
        dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def alert_rules() -> Iterator[dict[str, Any]]:
    """Every alerting rule of ``alerts.yaml``, across its groups."""
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def expressions() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard and the alerts, as ``(source, expression)``.

    ``source`` is ``dashboard: <panel title> [<refId>]`` or ``alert: <name>``; the expression has
    Grafana's variables already replaced (:func:`concrete`), so it can be sent to Prometheus as is.
    """
    found: list[tuple[str, str]] = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            found.append((f"dashboard: {panel['title']} [{target['refId']}]", concrete(target["expr"])))
    for rule in alert_rules():
        found.append((f"alert: {rule['alert']}", rule["expr"]))
    return found
