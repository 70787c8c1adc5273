"""The metric contract the dashboard and the alerts are written against, as data.

Every family a notifier process exports (or a library it runs exports for it) is listed once in
:data:`FAMILIES`, with its type, labels and the Prometheus job that scrapes it. The tests use this
list to hold ``notifier.json`` and ``alerts.yaml`` to the contract; :func:`expressions` lists every
PromQL expression of both (so a test can run each against a real Prometheus), :func:`panels` the
dashboard's panels with their queries and legends (so a test can draw them), and
:func:`metric_names` reads the series names an expression selects. Each reader takes another
dashboard or rules document in place of the committed ones.
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
    # The API: Litestar's Prometheus middleware's families (prefix notifier_api, route templates as `path`).
    Family("notifier_api_requests_total", "counter", _HTTP, API_JOB),
    Family("notifier_api_request_duration_seconds", "histogram", _HTTP, API_JOB),
    Family("notifier_api_requests_in_progress", "gauge", ("method", "app_name"), API_JOB),
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

# What Grafana puts in for its own variables when it runs a panel's query (``$__rate_interval``
# follows the interval a caller gives, see :func:`concrete`).
GRAFANA_INTERVALS = ("__rate_interval", "__interval", "__range")
RATE_INTERVAL = "2m"

_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<plain>\w+)")


def family(name: str) -> Family:
    """The family a series name belongs to (``…_bucket`` belongs to its histogram)."""
    for candidate in FAMILIES:
        if name in candidate.samples():
            return candidate
    raise KeyError(name)


def exported_names() -> frozenset[str]:
    """Every series name the contract's families appear under in a scrape."""
    return frozenset().union(*(f.samples() for f in FAMILIES))


def variables(dashboard: dict[str, Any] | None = None) -> dict[str, str]:
    """The dashboard's template variables (the datasource aside), each with the value a panel's query
    gets on the dashboard as it opens: the ``allValue`` (``.+`` if none) of one that includes *All*,
    else its current value."""
    if dashboard is None:
        dashboard = _committed_dashboard()
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            continue
        current = variable.get("current", {}).get("value")
        if variable.get("includeAll") or current in (None, "$__all", ["$__all"]):
            values[variable["name"]] = variable.get("allValue") or ".+"
        elif isinstance(current, list):
            values[variable["name"]] = "|".join(current)
        else:
            values[variable["name"]] = str(current)
    return values


def concrete(expr: str, values: dict[str, str] | None = None, *, interval: str = RATE_INTERVAL) -> str:
    """``expr`` with Grafana's variables replaced, ready for Prometheus' HTTP API as it stands.

    ``$__rate_interval``, ``$__interval`` and ``$__range`` become ``interval``; ``$name`` and
    ``${name:format}`` the dashboard variable's value in ``values`` (by default the committed
    dashboard's, :func:`variables`). ValueError names a variable that is neither.
    """
    if values is None:
        values = variables()

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name in GRAFANA_INTERVALS:
            return interval
        if name not in values:
            raise ValueError(f"unknown Grafana variable {match.group(0)!r} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> frozenset[str]:
    """The series names ``expr`` selects (parsed, not pattern-matched; ``{__name__="x"}`` selects
    ``x``); the committed dashboard's variables and Grafana's allowed."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            equal = promql_parser.MatchOp.Equal
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__" and m.op == equal), None
            )
            if name is None:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            names.add(name)

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return frozenset(names)


@dataclass(frozen=True)
class Query:
    """One PromQL expression, where it comes from (``dashboard: <panel title> [<refId>]`` or
    ``alert: <name>``) and, for a panel's, its legend template (``{{channel}}``)."""

    source: str
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel as a renderer needs it: its title, its Grafana unit (``s``, ``ops``, ``percentunit``,
    …) and its queries, variables replaced."""

    title: str
    unit: str
    queries: tuple[Query, ...]


def _committed_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel of ``dashboard`` (the committed one by default) that is not a row, including
    those inside rows."""
    if dashboard is None:
        dashboard = _committed_dashboard()
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panels(dashboard: dict[str, Any] | None = None, *, interval: str = RATE_INTERVAL) -> list[Panel]:
    """The panels of ``dashboard`` (the committed one by default) that query something, in order,
    each query with its variables replaced (:func:`concrete`) and its legend."""
    if dashboard is None:
        dashboard = _committed_dashboard()
    values = variables(dashboard)
    found = []
    for panel in dashboard_panels(dashboard):
        targets = [t for t in panel.get("targets", []) if t.get("expr")]
        if not targets:
            continue
        queries = tuple(
            Query(
                f"dashboard: {panel['title']} [{target['refId']}]",
                concrete(target["expr"], values, interval=interval),
                target.get("legendFormat", ""),
            )
            for target in targets
        )
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        found.append(Panel(panel["title"], unit, queries))
    return found


def alert_rules(rules: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every alerting rule of the rules document ``rules`` (``alerts.yaml`` by default), across its
    groups."""
    if rules is None:
        rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def expressions(
    dashboard: dict[str, Any] | None = None, rules: dict[str, Any] | None = None, *, interval: str = RATE_INTERVAL
) -> list[Query]:
    """Every PromQL expression of the dashboard and of the alerting rules (by default the committed
    ``notifier.json`` and ``alerts.yaml``), the panels' first, Grafana's variables replaced
    (:func:`concrete`), so that each can be sent to Prometheus as it is."""
    found = [query for panel in panels(dashboard, interval=interval) for query in panel.queries]
    found += [Query(f"alert: {rule['alert']}", rule["expr"]) for rule in alert_rules(rules)]
    return found
