"""The Prometheus harness and the panel renderer, against an exporter the test serves itself: a real
Prometheus scrapes it, answers queries, and the rendered panels show the series drawn."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests.conftest import free_port
from tests.e2e.conftest import StartPrometheus, wait_until
from tests.prometheus import PrometheusError, Target, scrape_samples
from tests.promql import Expression, Panel, metric_names
from tests.render import CHROMIUM, GRID_FILE, PALETTE, render_panels


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
        """Some traffic: each call moves every family."""
        for route in ("/notify", "/events"):
            self.requests.labels(route=route).inc()
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


def test_prometheus_scrapes_answers_and_the_panels_are_drawn(
    start_prometheus: StartPrometheus, exporter: Exporter, tmp_path: Path
) -> None:
    prometheus = start_prometheus([Target("notifier-api", exporter.address)])
    prometheus.wait_targets_up()
    start = time.time()

    def rated() -> bool:
        exporter.work()
        result = prometheus.query('sum by (route) (rate(harness_requests_total{job="notifier-api"}[1m]))')
        return len(result) == 2 and all(float(item["value"][1]) > 0 for item in result)

    wait_until(rated, 30, "a rate over two scrapes", interval=0.25)
    [up] = prometheus.query('up{job="notifier-api"}')
    assert up["value"][1] == "1"
    assert up["metric"]["instance"] == exporter.address

    scraped = scrape_samples(f"http://{exporter.address}/metrics")
    expr = "histogram_quantile(0.9, sum by (le) (rate(harness_request_duration_seconds_bucket[1m])))"
    assert metric_names(expr) <= set(scraped)

    end = time.time()
    panels = [
        Panel("Requests per route", "reqps", [Expression("t", "sum by (route) (rate(harness_requests_total[1m]))",
                                                         "{{route}}")]),
        Panel("Duration p90", "s", [Expression("t", expr, "p90")]),
        Panel("Queue depth", "short", [Expression("t", "harness_queue_depth")]),
        Panel("Nothing here", "", [Expression("t", "harness_absent_metric")]),
    ]  # fmt: skip
    series = prometheus.query_range(panels[0].targets[0].expr, start, end, 1)
    assert {s.labels["route"] for s in series} == {"/notify", "/events"}
    assert all(s.finite for s in series)

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (the queries above passed)")
    out = tmp_path / "panels"
    rendered = render_panels(prometheus, panels, start=start - 5, end=end + 1, step=1, out_dir=out)
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
    with pytest.raises(PrometheusError, match=f"notifier-worker http://{nobody}/metrics: down .*refused"):
        prometheus.wait_targets_up(timeout=15)
    with pytest.raises(PrometheusError, match="parse error"):
        prometheus.query("sum(rate(")


def stroke_pixels(path: Path, colour: str, tolerance: int = 24) -> int:
    """How many pixels of the PNG at ``path`` are (nearly) ``colour`` (``#rrggbb``)."""
    wanted = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(1 << 24) or []
    return sum(n for n, rgb in colours if isinstance(rgb, tuple) and _near(rgb, wanted, tolerance))


def _near(rgb: tuple[int, ...], wanted: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb[:3], wanted, strict=True))
