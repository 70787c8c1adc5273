"""The PromQL metric-name extractor and the dashboard/alerts readers the live dashboard test uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.promql import (
    alert_expressions,
    dashboard_expressions,
    dashboard_panels,
    family,
    metric_names,
    substitute,
    tokenize,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (channel) (rate(notifier_deliveries_total{outcome="sent"}[5m]))', {"notifier_deliveries_total"}),
        (
            "histogram_quantile(0.99, sum by (le, channel) (rate(notifier_delivery_latency_seconds_bucket[5m])))",
            {"notifier_delivery_latency_seconds_bucket"},
        ),
        (
            'sum(rate(notifier_api_requests_total{status_code=~"5.."}[5m])) without (instance)'
            " / ignoring (job) sum(rate(notifier_api_requests_total[5m]))",
            {"notifier_api_requests_total"},
        ),
        ('count_values("version", build_info) or vector(0)', {"build_info"}),
        ('{__name__="notifier_dead_letters", job="notifier-api"}', {"notifier_dead_letters"}),
        ("rate(x_total[5m] offset 1h) > bool 0 and on (queue) y", {"x_total", "y"}),
        ("max_over_time(deriv(queue_depth[10m:1m])[1h:]) @ end()", {"queue_depth"}),
        ("absent(up{job='notifier-scheduler'} == 1)", {"up"}),
        ("a * on (queue) group_left (state) b", {"a", "b"}),
        ("topk(3, sum by (by) (rate(by_total[1m])))", {"by_total"}),
        ("1e3 * Inf + NaN - 0x1f", set()),
        ("# a comment\nfoo:bar:rate5m", {"foo:bar:rate5m"}),
        ('time() - max(notifier_last_tick_timestamp_seconds{a="sum(b)"})', {"notifier_last_tick_timestamp_seconds"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_character_promql_has_not_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot tokenize"):
        tokenize("rate(x[5m]) ; drop")


def test_histogram_series_map_to_their_family() -> None:
    samples = {
        "d_seconds_bucket": {"family": "d_seconds", "type": "histogram"},
        "jobs_total": {"family": "jobs", "type": "counter"},
    }
    assert family("d_seconds_bucket", samples) == "d_seconds"
    assert family("jobs_total", samples) == "jobs_total"
    assert family("unknown_count", samples) == "unknown"
    assert family("plain", samples) == "plain"


def test_grafana_variables_are_replaced() -> None:
    expr = 'rate(x{channel=~"$channel", job=~"${job:regex}"}[$__rate_interval]) * [[scale]]'
    assert substitute(expr, {"job": "notifier-worker"}, interval="30s") == (
        'rate(x{channel=~".*", job=~"notifier-worker"}[30s]) * .*'
    )


def test_dashboard_and_alert_expressions_are_found_wherever_they_nest(tmp_path: Path) -> None:
    dashboard = {
        "templating": {"list": [{"name": "channel", "type": "query", "includeAll": True, "allValue": ".+"}]},
        "panels": [
            {"type": "row", "title": "Delivery", "collapsed": True, "panels": [
                {"title": "Delivered", "fieldConfig": {"defaults": {"unit": "ops"}}, "targets": [
                    {"refId": "A", "expr": 'sum by (channel) (rate(d_total{channel=~"$channel"}[$__rate_interval]))',
                     "legendFormat": "{{channel}}"},
                ]},
            ]},
            {"type": "text", "title": "Notes"},
            {"type": "timeseries", "title": "Queue", "targets": [{"refId": "A", "expr": "q"}, {"refId": "B"}]},
        ],
        "rows": [{"panels": [{"title": "Old style", "targets": [{"expr": "old_metric"}]}]}],
    }  # fmt: skip
    path = tmp_path / "notifier.json"
    path.write_text(json.dumps(dashboard))
    panels = dashboard_panels(dashboard)
    assert [(p.title, p.unit) for p in panels] == [("Delivered", "ops"), ("Queue", ""), ("Old style", "")]
    assert [(e.source, e.expr, e.legend) for e in dashboard_expressions(path)] == [
        ("dashboard: Delivered [A]", 'sum by (channel) (rate(d_total{channel=~".+"}[1m]))', "{{channel}}"),
        ("dashboard: Queue [A]", "q", ""),
        ("dashboard: Old style [0]", "old_metric", ""),
    ]

    alerts = tmp_path / "alerts.yaml"
    alerts.write_text(
        "groups:\n- name: notifier\n  rules:\n"
        "  - alert: DeadLettersGrowing\n    expr: increase(notifier_dead_letters[10m]) > 0\n"
        "  - record: job:x:rate5m\n    expr: rate(x_total[5m])\n"
    )
    assert [(e.source, e.expr) for e in alert_expressions(alerts)] == [
        ("alert: DeadLettersGrowing", "increase(notifier_dead_letters[10m]) > 0"),
        ("alert: job:x:rate5m", "rate(x_total[5m])"),
    ]
