"""Screenshots of dashboard panels without Grafana: each panel's series from a real Prometheus
(``query_range``), drawn by the vendored uPlot (``vendor/``) in headless Chromium, one PNG a panel
and, if asked for, one of the whole grid.

Test and documentation tooling, not product code. Chromium is Debian's (``/usr/bin/chromium``),
driven by Playwright, which never downloads a browser; the page loads nothing from the network::

    rendered = render_panels(prometheus, metrics.panels(), start=t0, end=t1, step=2, out_dir=Path("docs/panels"))
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dashboards.metrics import Panel
from tests.prometheus import PrometheusServer, Series

HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2"]
"""The first colours of ``panels.js``'s palette: a panel's first series is drawn in the first."""
GRID_FILE = "grid.png"

_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class RenderedPanel:
    title: str
    path: Path
    series: int
    """How many series were drawn with at least one point (0: the panel shows *No data*, or nothing)."""


def require_chromium(done: str) -> None:
    """Skip the rest of the test when Chromium is missing (``done`` says what passed before), except
    under ``CI=true`` (``.ci/run`` installs it), where the test fails instead."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing, so no screenshots: apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it")
    pytest.skip(f"{message} ({done}; under CI=true this fails instead)")


def legend(series: Series, template: str, expr: str) -> str:
    """A series' name as Grafana would show it: ``{{label}}`` filled in, else its labels, else the query."""
    if template and template != "__auto":
        return _LEGEND.sub(lambda m: series.labels.get(m.group(1), ""), template)
    shown = {k: v for k, v in series.labels.items() if k != "__name__"}
    if shown:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"
    return series.labels.get("__name__", expr)


def panel_data(prometheus: PrometheusServer, panel: Panel, start: float, end: float, step: float) -> dict[str, Any]:
    """One panel's series over the range, aligned on one time axis (gaps and NaN as ``null``)."""
    fetched = [
        (query, series) for query in panel.queries for series in prometheus.query_range(query.expr, start, end, step)
    ]
    times = sorted({t for _, series in fetched for t, _ in series.points})
    index = {t: i for i, t in enumerate(times)}
    drawn = []
    for query, series in fetched:
        values: list[float | None] = [None] * len(times)
        for t, v in series.points:
            if v == v and abs(v) != float("inf"):
                values[index[t]] = v
        drawn.append({"label": legend(series, query.legend, query.expr), "values": values})
    return {"title": panel.title, "unit": panel.unit, "x": times, "series": drawn}


def compact(path: Path, colours: int = 256) -> None:
    """Rewrite the PNG at ``path`` with a palette of at most ``colours``, undithered: a dark panel
    has few colours, so it looks the same at about half the size (the README embeds these)."""
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=colours, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "panel"


def page() -> str:
    """The HTML page with uPlot and ``panels.js`` inlined, so the browser needs no network at all."""
    vendor = HERE / "vendor"
    return (
        (HERE / "page.html")
        .read_text()
        .replace("/*UPLOT_CSS*/", (vendor / "uPlot.min.css").read_text())
        .replace("/*UPLOT_JS*/", (vendor / "uPlot.iife.min.js").read_text())
        .replace("/*PANELS_JS*/", (HERE / "panels.js").read_text())
    )


def render_panels(
    prometheus: PrometheusServer,
    panels: Sequence[Panel],
    *,
    start: float,
    end: float,
    step: float,
    out_dir: Path,
    columns: int = 3,
    width: int = 460,
    height: int = 200,
    grid_file: str | None = GRID_FILE,
    chromium: Path = CHROMIUM,
) -> list[RenderedPanel]:
    """Render ``panels`` over ``[start, end]`` into ``out_dir``: ``<slug of the title>.png`` each and,
    unless ``grid_file`` is None, that file with them all; returns each panel's file and how many
    series it drew."""
    from playwright.sync_api import sync_playwright

    data = [panel_data(prometheus, panel, start, end, step) for panel in panels]
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for panel in panels:
        name = slug(panel.title)
        while name in names:
            name += "-2"
        names.append(name)
    spec = {
        "panels": data,
        "columns": max(1, min(columns, len(data))),
        "width": width,
        "height": height,
        "start": start,
        "end": end,
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 900}, device_scale_factor=1)
            context.route("**/*", lambda route: route.abort("internetdisconnected"))
            view = context.new_page()
            errors: list[str] = []
            view.on("pageerror", lambda error: errors.append(str(error)))
            view.set_content(page())
            drawn = view.evaluate("spec => window.renderPanels(spec)", json.loads(json.dumps(spec)))
            assert not errors, f"the panel page failed: {errors}"
            assert drawn == len(data), drawn
            rendered = []
            for index, (shown, name) in enumerate(zip(data, names, strict=True)):
                path = out_dir / f"{name}.png"
                view.locator(f"#panel-{index}").screenshot(path=str(path))
                compact(path)
                drawn_series = sum(any(v is not None for v in series["values"]) for series in shown["series"])
                rendered.append(RenderedPanel(title=shown["title"], path=path, series=drawn_series))
            if grid_file is not None:
                view.locator("#grid").screenshot(path=str(out_dir / grid_file))
                compact(out_dir / grid_file)
        finally:
            browser.close()
    return rendered
