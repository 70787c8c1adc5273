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


def test_every_variable_a_query_uses_is_defined() -> None:
    """``metrics.concrete`` refuses any other variable, so the queries may use only these (and Grafana's)."""
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]}
    substituted = {name.strip("${}").split(":")[0] for name in metrics.GRAFANA_VARIABLES} - {
        "__rate_interval",
        "__interval",
        "__range",
    }
    assert substituted == defined - {"datasource"}


@pytest.mark.parametrize(("source", "expr"), metrics.expressions())
def test_every_metric_name_is_in_the_contract(source: str, expr: str) -> None:
    names = metrics.metric_names(expr)
    assert names, f"{source} selects no metric"
    unknown = names - metrics.exported_names() - metrics.SYNTHETIC
    assert not unknown, f"{source} uses {sorted(unknown)}, which the contract does not export"


def test_histograms_are_read_through_their_buckets_and_counters_through_rate() -> None:
    """A raw counter or a raw ``_bucket`` on a graph is a mistake: counters only ever grow."""
    for source, expr in metrics.expressions():
        for name in metrics.metric_names(expr) - metrics.SYNTHETIC:
            kind = metrics.family(name).kind
            if kind == "counter" or name.endswith("_bucket"):
                assert any(f"{fn}(" in expr for fn in ("rate", "increase")), f"{source}: {name} outside rate()"


def test_dashboard_covers_every_family_it_was_asked_for() -> None:
    used = {
        metrics.family(name).name
        for _, expr in metrics.expressions()
        for name in metrics.metric_names(expr)
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


def test_metric_names_reads_selectors_not_words() -> None:
    expr = 'sum(rate(a_total{outcome="b_total"}[$__rate_interval])) / on() group_left count(up{job=~"x"})'
    assert metrics.metric_names(expr) == {"a_total", "up"}


def test_concrete_refuses_an_unknown_variable() -> None:
    with pytest.raises(ValueError, match=r"\$channel"):
        metrics.concrete('rate(x_total{channel="$channel"}[5m])')


def test_contract_labels_are_bounded() -> None:
    unbounded = {"recipient", "notification_id", "id", "key", "url", "raw_path", "rule_id"}
    for family in metrics.FAMILIES:
        assert not unbounded & set(family.labels), family
        assert family.job in metrics.JOBS
