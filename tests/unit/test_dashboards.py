"""The committed Grafana dashboard is the generator's output, and every query keeps to the metric contract."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from dashboards import generate, metrics

DASHBOARD: dict[str, Any] = json.loads(metrics.DASHBOARD.read_text())
PANELS = list(metrics.dashboard_panels(DASHBOARD))


def test_committed_dashboard_is_the_generators_output() -> None:
    assert metrics.DASHBOARD.read_text() == generate.render(), "run `uv run python dashboards/generate.py`"


def test_check_mode_fails_on_a_stale_dashboard(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "notifier.json"
    stale.write_text(generate.render().replace('"notifier"', '"stale"', 1))
    monkeypatch.setattr(generate, "DASHBOARD", stale)
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    assert stale.read_text() == generate.render()


def test_the_script_runs_from_the_repository_root() -> None:
    result = subprocess.run(
        [sys.executable, "dashboards/generate.py", "--check"],
        cwd=metrics.HERE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_has_every_row() -> None:
    rows = [panel["title"] for panel in DASHBOARD["panels"] if panel["type"] == "row"]
    assert rows == ["Overview", "Latency", "Queues", "API", "Dramatiq workers"]


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_every_panel_has_a_title_a_query_a_unit_and_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel.get("title")
    assert panel.get("description")
    assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']} has no unit"
    assert panel["targets"], f"{panel['title']} has no query"
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for target in panel["targets"]:
        assert target["expr"].strip()
        assert target.get("legendFormat"), f"{panel['title']} [{target['refId']}] has no legend"
        assert target["datasource"] == panel["datasource"]
    refs = [target["refId"] for target in panel["targets"]]
    assert len(refs) == len(set(refs)), refs


def test_datasource_variable_selects_prometheus() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == generate.DATASOURCE_UID


def test_every_variable_a_query_uses_is_defined_and_used() -> None:
    """``metrics.concrete`` refuses a variable the dashboard does not define, so reading every query
    through it shows that each one the queries use is there; and each defined one is used."""
    assert all("$" not in query.expr for query in metrics.expressions())
    raw = " ".join(target["expr"] for panel in PANELS for target in panel["targets"])
    for name in metrics.variables():
        assert f"${name}" in raw or f"${{{name}:" in raw, f"the variable {name} is never used"


@pytest.mark.parametrize("query", metrics.expressions(), ids=lambda query: query.source)
def test_every_metric_name_is_in_the_contract(query: metrics.Query) -> None:
    source, names = query.source, metrics.metric_names(query.expr)
    assert names, f"{source} selects no metric"
    unknown = names - metrics.exported_names() - metrics.SYNTHETIC
    assert not unknown, f"{source} uses {sorted(unknown)}, which the contract does not export"


def test_histograms_are_read_through_their_buckets_and_counters_through_rate() -> None:
    """A raw counter or a raw ``_bucket`` on a graph is a mistake: counters only ever grow."""
    for query in metrics.expressions():
        for name in metrics.metric_names(query.expr) - metrics.SYNTHETIC:
            kind = metrics.family(name).kind
            if kind == "counter" or name.endswith("_bucket"):
                assert any(f"{fn}(" in query.expr for fn in ("rate", "increase")), f"{query.source}: {name}"


def test_dashboard_covers_every_family_it_was_asked_for() -> None:
    used = {
        metrics.family(name).name
        for query in metrics.expressions()
        for name in metrics.metric_names(query.expr)
        if name not in metrics.SYNTHETIC
    }
    wanted = {
        "notifier_notifications_accepted_total",
        "notifier_deliveries_total",
        "notifier_delivery_duration_seconds",
        "notifier_delivery_latency_seconds",
        "notifier_delivery_lateness_seconds",
        "notifier_queue_messages",
        "notifier_queue_oldest_message_age_seconds",
        "notifier_dead_letters",
        "notifier_relay_enqueued_total",
        "notifier_scheduler_ticks_total",
        "notifier_rule_firings_total",
        "notifier_api_requests_total",
        "notifier_api_request_duration_seconds",
        "dramatiq_messages_total",
        "dramatiq_message_errors_total",
        "dramatiq_message_retries_total",
        "dramatiq_messages_inprogress",
        "dramatiq_message_duration_milliseconds",
    }
    assert wanted <= used, sorted(wanted - used)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum(rate(a_total{outcome="b_total"}[$__rate_interval])) / on() group_left count(up{job=~"x"})',
            {"a_total", "up"},
        ),
        ('{__name__="notifier_dead_letters", job="notifier-api"}', {"notifier_dead_letters"}),
        ("rate(x_total[5m] offset 1h) > bool 0 and on (queue) y", {"x_total", "y"}),
        ("max_over_time(deriv(queue_depth[10m:1m])[1h:])", {"queue_depth"}),
        ("a * on (queue) group_left (state) b", {"a", "b"}),
        ("topk(3, sum by (by) (rate(by_total[1m])))", {"by_total"}),
        ('time() - max(t{a="sum(b)"}) + 1e3 * Inf - 0x1f', {"t"}),
    ],
)
def test_metric_names_reads_selectors_not_words(expr: str, names: set[str]) -> None:
    assert metrics.metric_names(expr) == names


def test_a_selector_without_a_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="without a metric name"):
        metrics.metric_names('{job="notifier-api"}')


def test_concrete_refuses_an_unknown_variable() -> None:
    with pytest.raises(ValueError, match=r"\$channel"):
        metrics.concrete('rate(x_total{channel="$channel"}[5m])')


def test_concrete_puts_in_grafanas_intervals_and_the_dashboards_variables() -> None:
    expr = 'rate(x{channel=~"$channel", instance=~"${instance:regex}"}[$__rate_interval]) * $__interval'
    assert metrics.concrete(expr, {"channel": "sms|email", "instance": ".+"}, interval="30s") == (
        'rate(x{channel=~"sms|email", instance=~".+"}[30s]) * 30s'
    )
    assert metrics.concrete("rate(x[$__rate_interval])") == f"rate(x[{metrics.RATE_INTERVAL}])"


STAND_IN = {
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "current": {"value": "uid"}},
            {"name": "channel", "type": "query", "includeAll": True, "allValue": ".*"},
            {"name": "job", "type": "custom", "current": {"value": ["a", "b"]}},
            {"name": "instance", "type": "query", "includeAll": True},
            {"name": "env", "type": "custom", "current": {"value": "prod"}},
        ]
    },
    "panels": [
        {"type": "row", "title": "Delivery", "collapsed": True, "panels": [
            {"title": "Delivered", "fieldConfig": {"defaults": {"unit": "ops"}}, "targets": [
                {"refId": "A", "expr": 'sum by (channel) (rate(d_total{channel=~"$channel"}[$__rate_interval]))',
                 "legendFormat": "{{channel}}"},
                {"refId": "B", "expr": 'q{job=~"$job", env="$env"}'},
            ]},
        ]},
        {"type": "text", "title": "Notes"},
        {"type": "timeseries", "title": "Queue", "targets": [{"refId": "A", "expr": "q"}, {"refId": "B"}]},
    ],
}  # fmt: skip


def test_another_dashboard_and_rules_document_are_read_in_place_of_the_committed_ones() -> None:
    assert metrics.variables(STAND_IN) == {"channel": ".*", "job": "a|b", "instance": ".+", "env": "prod"}
    assert [(p.title, p.unit, [q.source for q in p.queries]) for p in metrics.panels(STAND_IN, interval="5s")] == [
        ("Delivered", "ops", ["dashboard: Delivered [A]", "dashboard: Delivered [B]"]),
        ("Queue", "", ["dashboard: Queue [A]"]),
    ]
    rules = {
        "groups": [
            {"name": "a", "rules": [{"alert": "Deep", "expr": "q > 1"}, {"record": "x:rate", "expr": "rate(x[1m])"}]},
            {"name": "b", "rules": [{"alert": "Gone", "expr": "absent(up)"}]},
        ]
    }
    assert [rule["alert"] for rule in metrics.alert_rules(rules)] == ["Deep", "Gone"]
    assert metrics.expressions(STAND_IN, rules, interval="5s") == [
        metrics.Query("dashboard: Delivered [A]", 'sum by (channel) (rate(d_total{channel=~".*"}[5s]))', "{{channel}}"),
        metrics.Query("dashboard: Delivered [B]", 'q{job=~"a|b", env="prod"}'),
        metrics.Query("dashboard: Queue [A]", "q"),
        metrics.Query("alert: Deep", "q > 1"),
        metrics.Query("alert: Gone", "absent(up)"),
    ]


def test_contract_labels_are_bounded() -> None:
    unbounded = {"recipient", "notification_id", "id", "key", "url", "raw_path", "rule_id"}
    for family in metrics.FAMILIES:
        assert not unbounded & set(family.labels), family
        assert family.job in metrics.JOBS
