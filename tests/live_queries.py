"""The checks that a dashboard and its alerts work against what a set of processes really export,
shared by the live dashboard test and the harness's self-test (which runs them on a stand-in).

:func:`check_exported`: every metric an expression names is in a direct scrape of the targets.
:func:`check_answered`: every panel query, run by Prometheus over the test's window, has a finite
point; for an alert (a condition, empty while all is well) each metric it reads has data.
:func:`check_rules_evaluate`: Prometheus evaluates every loaded rule without error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import httpx

from dashboards.metrics import SYNTHETIC, Query, metric_names
from tests.prometheus import PrometheusServer, scrape_samples

PROMETHEUS_OWN = SYNTHETIC | {"ALERTS", "ALERTS_FOR_STATE"}
"""Series Prometheus makes itself, never in a scrape."""


def scraped(addresses: Iterable[str], path: str = "/metrics") -> dict[str, dict[str, str]]:
    """The sample names (with family and type) of a direct scrape of every ``host:port``."""
    samples: dict[str, dict[str, str]] = {}
    for address in addresses:
        samples.update(scrape_samples(f"http://{address}{path}"))
    return samples


def check_exported(expressions: Sequence[Query], samples: dict[str, dict[str, str]]) -> None:
    """AssertionError listing each expression that names a series no target exports."""
    assert expressions, "no expression to check"
    unexported = [
        f"{e.source}: {sorted(names)} in {e.expr}"
        for e in expressions
        if (names := metric_names(e.expr) - set(samples) - PROMETHEUS_OWN)
    ]
    assert not unexported, "named but not exported:\n" + "\n".join(unexported)


def without_data(prometheus: PrometheusServer, expressions: Sequence[Query], start: float) -> list[str]:
    """The expressions whose range query over ``[start, now]`` has no finite point, with what came back
    (the range ends a step past now, so that the last scrape is in it whatever the steps' phase)."""
    empty = []
    for expression in expressions:
        series = prometheus.query_range(expression.expr, start, time.time() + 1, 1)
        if not any(s.finite for s in series):
            empty.append(f"{expression.source}: {expression.expr} → {len(series)} series, none finite")
    return empty


def reads(alerts: Sequence[Query]) -> list[Query]:
    """For each alert, one query a metric it reads (``count({__name__="…"})``), Prometheus' own left out."""
    return [
        Query(e.source, f'count({{__name__="{name}"}})')
        for e in alerts
        for name in sorted(metric_names(e.expr) - (PROMETHEUS_OWN - {"up"}))
    ]


def check_answered(
    prometheus: PrometheusServer,
    panels: Sequence[Query],
    alerts: Sequence[Query],
    start: float,
    timeout: float = 30,
) -> None:
    """Poll until every panel query and every metric the alerts read has data since ``start``;
    AssertionError listing the ones still empty at the deadline."""
    queries = [*panels, *reads(alerts)]
    deadline = time.monotonic() + timeout
    while True:
        remaining = without_data(prometheus, queries, start)
        if not remaining:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no data from Prometheus after {timeout}s for:\n" + "\n".join(remaining))
        time.sleep(1)


def check_rules_evaluate(prometheus: PrometheusServer, timeout: float = 15) -> list[str]:
    """Wait until Prometheus has evaluated every loaded rule; AssertionError naming each that failed
    to evaluate. Returns the names of the rules."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rules = prometheus.rules()
        except httpx.TransportError:
            rules = []
        evaluated = rules and all(str(r.get("lastEvaluation", "")).startswith("20") for r in rules)
        if evaluated or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rules, "Prometheus loaded no rule"
    assert evaluated, f"rules not evaluated after {timeout}s: {[r['name'] for r in rules]}"
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, "rules Prometheus cannot evaluate:\n" + "\n".join(broken)
    return [str(r["name"]) for r in rules]
