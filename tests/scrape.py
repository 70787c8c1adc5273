"""Scraping a Prometheus endpoint in tests, parsed by prometheus-client's own text parser.

``scrape(url)`` (or ``parse(text)``) gives a :class:`Scrape`: the families by name, and every
sample by the name PromQL knows it by (``notifier_deliveries_total``, ``…_bucket``, ``…_count``),
so that a test can check the metric names of a dashboard's or an alert's expressions against what
the processes really export (:meth:`Scrape.series_names`), and read values summed over labels
(:meth:`Scrape.value`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    families: dict[str, Metric]
    """By family name: a counter's without its ``_total``, as prometheus-client parses it."""

    def samples(self, name: str | None = None, **labels: str) -> Iterator[Sample]:
        """The samples named ``name`` (any, if ``None``) whose labels include ``labels``."""
        for family in self.families.values():
            for sample in family.samples:
                if (name is None or sample.name == name) and all(sample.labels.get(k) == v for k, v in labels.items()):
                    yield sample

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` with these labels (0 when there is none)."""
        return sum(sample.value for sample in self.samples(name, **labels))

    def has(self, name: str, **labels: str) -> bool:
        return any(True for _ in self.samples(name, **labels))

    def series_names(self) -> set[str]:
        """Every sample name exported (what PromQL selects)."""
        return {sample.name for sample in self.samples()}

    def label_values(self, label: str, name: str | None = None) -> set[str]:
        """The values ``label`` takes, on the samples named ``name`` (on all, if ``None``)."""
        return {s.labels[label] for s in self.samples(name) if label in s.labels}

    def counted(self, label: str, name: str) -> set[str]:
        """The values ``label`` takes on the samples named ``name`` that are above 0 (every series a
        process counts is exported from its start, at 0)."""
        return {s.labels[label] for s in self.samples(name) if label in s.labels and s.value > 0}

    def types(self) -> dict[str, str]:
        """Each family's type (``counter``, ``gauge``, ``histogram``, …)."""
        return {name: family.type for name, family in self.families.items()}


def parse(text: str) -> Scrape:
    return Scrape({family.name: family for family in text_string_to_metric_families(text)})


def scrape(url: str, *, headers: dict[str, str] | None = None, timeout: float = 5) -> Scrape:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it; AssertionError unless it answers 200."""
    response = httpx.get(url, headers=headers, timeout=timeout)
    assert response.status_code == 200, f"GET {url}: {response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith("text/plain"), response.headers["content-type"]
    return parse(response.text)


def merged(scrapes: Iterable[Scrape]) -> set[str]:
    """The series names of several scrapes together (the api's, the worker's, the scheduler's)."""
    return set().union(*(s.series_names() for s in scrapes))
