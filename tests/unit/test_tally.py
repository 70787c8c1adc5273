"""A tally adds up to what counting at once gives (:mod:`notifier.observability.tally`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from notifier.observability import metrics
from notifier.observability.tally import Direct, Tally
from tests.scrape import parse


def test_a_tally_adds_up_to_what_counting_at_once_gives() -> None:
    """Every bucket, the sum and the counts, for amounts on the bounds, between them, beyond the last."""
    amounts = [0.0, 0.005, 0.0050001, 0.01, 0.3, 1.0, 2.5, 7.0, 30.0, 31.0, 1e9, 0.005, 0.3]

    def families(registry: CollectorRegistry) -> tuple[Counter, Gauge, Histogram]:
        return (
            Counter("notifier_test", "t", ["outcome"], registry=registry),
            Gauge("notifier_test_inprogress", "t", registry=registry),
            Histogram("notifier_test_seconds", "t", ["channel"], registry=registry, buckets=metrics.PROVIDER_BUCKETS),
        )

    exposed = []
    for counts in (Direct(), Tally()):
        registry = CollectorRegistry()
        counter, gauge, histogram = families(registry)
        for amount in amounts:
            counts.count(counter.labels("sent"), 2)
            counts.count(gauge, 1)
            counts.observe(histogram.labels("log"), amount)
            counts.observe(histogram.labels("sms"), amount / 2)
        counts.count(gauge, -3)
        if isinstance(counts, Tally):
            assert parse(generate_latest(registry).decode()).value("notifier_test_total", outcome="sent") == 0
            counts.add_up()
        exposition = generate_latest(registry).decode().splitlines()
        exposed.append("\n".join(line for line in exposition if "_created" not in line))
    assert exposed[1] == exposed[0]
    assert parse(exposed[0]).value("notifier_test_seconds_bucket", channel="log", le="0.005") == 3
