"""The Prometheus harness and the panel renderer, against an exporter the test serves itself: a real
Prometheus scrapes it, answers queries, and the rendered panels show the series drawn."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dashboards import metrics
from dashboards.metrics import Panel, Query
from tests.conftest import free_port
from tests.e2e.conftest import StartPrometheus, wait_until
from tests.live_queries import check_answered, check_exported, check_rules_evaluate, scraped
from tests.prometheus import PrometheusError, Target
from tests.render import GRID_FILE, PALETTE, render_panels, require_chromium


class Exporter:
    """A prometheus_client registry served over HTTP on a free loopback port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("harness_requests", "Requests.", ["route"], registry=self.registry)
        self.duration = Histogram("harness_request_duration_seconds", "Duration.", registry=self.registry)
        self.depth = Gauge("harness_queue_depth", "Depth.", registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def work(self) -> None:
        """Some traffic: each call moves every family (the two routes at different rates, so that
        neither line hides the other)."""
        self.requests.labels(route="/notify").inc(2)
        self.requests.labels(route="/events").inc()
        self.duration.observe(0.02 + (time.monotonic() % 1) / 10)
        self.depth.set(time.monotonic() % 30)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    served = Exporter()
    try:
        yield served
    finally:
        served.stop()


STAND_IN_DASHBOARD = {
    "title": "harness",
    "templating": {"list": [{"name": "route", "type": "query", "includeAll": True}]},
    "panels": [
        {"type": "row", "title": "Requests", "panels": []},
        {
            "type": "timeseries",
            "title": "Requests per route",
            "fieldConfig": {"defaults": {"unit": "reqps"}},
            "targets": [
                {
                    "refId": "A",
                    "expr": 'sum by (route) (rate(harness_requests_total{route=~"$route"}[$__rate_interval]))',
                    "legendFormat": "{{route}}",
                }
            ],
        },
        {
            "type": "timeseries",
            "title": "Duration p90",
            "fieldConfig": {"defaults": {"unit": "s"}},
            "targets": [
                {
                    "refId": "A",
                    "expr": "histogram_quantile(0.9, sum by (le) (rate(harness_request_duration_seconds_bucket[1m])))",
                    "legendFormat": "p90",
                }
            ],
        },
        {"type": "stat", "title": "Queue depth", "targets": [{"refId": "A", "expr": "harness_queue_depth"}]},
    ],
}
STAND_IN_ALERTS = """\
groups:
  - name: harness
    rules:
      - alert: HarnessQueueDeep
        expr: harness_queue_depth > 1000 and on () up{job="notifier-api"} == 1
        for: 1m
        annotations: {summary: deep}
"""


def test_prometheus_scrapes_answers_and_the_panels_are_drawn(
    start_prometheus: StartPrometheus, exporter: Exporter, tmp_path: Path
) -> None:
    alerts_path = tmp_path / "alerts.yaml"
    alerts_path.write_text(STAND_IN_ALERTS)
    prometheus = start_prometheus([Target("notifier-api", exporter.address)], rule_files=[alerts_path])
    start = time.time()
    exporter.work()
    prometheus.wait_targets_up()

    def rated() -> bool:
        exporter.work()
        result = prometheus.query('sum by (route) (rate(harness_requests_total{job="notifier-api"}[1m]))')
        return len(result) == 2 and all(float(item["value"][1]) > 0 for item in result)

    wait_until(rated, 30, "a rate over two scrapes", interval=0.25)
    [up] = prometheus.query('up{job="notifier-api"}')
    assert up["value"][1] == "1"
    assert up["metric"]["instance"] == exporter.address
    series = prometheus.query_range("sum by (route) (rate(harness_requests_total[1m]))", start, time.time() + 1, 1)
    assert {s.labels["route"] for s in series} == {"/notify", "/events"}
    assert all(s.finite for s in series)

    # The live dashboard test's checks, on the stand-in dashboard and alerts.
    stand_in = metrics.panels(STAND_IN_DASHBOARD, interval="1m")
    panel_queries = [query for panel in stand_in for query in panel.queries]
    alerts = metrics.expressions({}, yaml.safe_load(STAND_IN_ALERTS))
    samples = scraped([exporter.address])
    check_exported(panel_queries + alerts, samples)
    with pytest.raises(AssertionError, match=r"dashboard: Lost \[A\]: \['harness_lost_seconds_bucket'\]"):
        check_exported([Query("dashboard: Lost [A]", "rate(harness_lost_seconds_bucket[1m])")], samples)
    check_answered(prometheus, panel_queries, alerts, start)
    with pytest.raises(AssertionError, match=r"alert: Lost: .*harness_lost_total"):
        check_answered(prometheus, [], [Query("alert: Lost", "harness_lost_total > 0")], start, timeout=0)
    assert check_rules_evaluate(prometheus) == ["HarnessQueueDeep"]

    require_chromium("the queries above passed")

    def drawable() -> bool:
        """Enough points for every panel to draw a line, not a dot."""
        exporter.work()
        for expr in [e.expr for e in panel_queries]:
            series = prometheus.query_range(expr, start, time.time() + 1, 1)
            if not series or any(len(s.finite) < 3 for s in series):
                return False
        return True

    wait_until(drawable, 30, "three points in every panel", interval=0.5)
    out = tmp_path / "panels"
    panels = [*stand_in, Panel("Nothing here", "", (Query("t", "harness_absent"),))]
    rendered = render_panels(prometheus, panels, start=start, end=time.time() + 1, step=1, out_dir=out)
    assert [(r.title, r.path.name, r.series) for r in rendered] == [
        ("Requests per route", "requests-per-route.png", 2),
        ("Duration p90", "duration-p90.png", 1),
        ("Queue depth", "queue-depth.png", 1),
        ("Nothing here", "nothing-here.png", 0),
    ]
    for panel in rendered[:3]:
        assert stroke_pixels(panel.path, PALETTE[0]) > 20, f"{panel.path}: no line drawn in {PALETTE[0]}"
    assert stroke_pixels(rendered[3].path, PALETTE[0]) == 0
    assert stroke_pixels(rendered[0].path, PALETTE[1]) > 20, "the second series is not drawn"
    with Image.open(out / GRID_FILE) as grid, Image.open(rendered[0].path) as one:
        assert grid.width > 2 * one.width
        assert grid.height > one.height


def test_a_target_that_is_down_is_named_with_its_error(start_prometheus: StartPrometheus) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    prometheus = start_prometheus([Target("notifier-worker", nobody)])
    wait_until(lambda: [t["health"] for t in prometheus.targets_status()] == ["down"], 30, "a failed scrape")
    with pytest.raises(PrometheusError, match=f"notifier-worker http://{nobody}/metrics: down .*refused"):
        prometheus.wait_targets_up(timeout=0)
    with pytest.raises(PrometheusError, match="parse error"):
        prometheus.query("sum(rate(")


def stroke_pixels(path: Path, colour: str, tolerance: int = 24, plot_bottom: int = 225) -> int:
    """How many pixels of the PNG at ``path`` above ``plot_bottom`` (the title and the chart, not the
    legend, whose markers have the series' colours too) are (nearly) ``colour`` (``#rrggbb``)."""
    wanted = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    with Image.open(path) as image:
        colours = image.convert("RGB").crop((0, 0, image.width, plot_bottom)).getcolors(1 << 24) or []
    return sum(n for n, rgb in colours if isinstance(rgb, tuple) and _near(rgb, wanted, tolerance))


def _near(rgb: tuple[int, ...], wanted: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb[:3], wanted, strict=True))
