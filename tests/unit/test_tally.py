"""A tally adds up to what counting at once gives (:mod:`notifier.observability.tally`)."""

from __future__ import annotations

import threading

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


def test_threads_counting_while_it_adds_up_are_counted_exactly() -> None:
    """Each thread notes on its own shard while another adds up, again and again: nothing is lost or
    counted twice, and a shard whose thread has ended is dropped once added up."""
    registry = CollectorRegistry()
    counter = Counter("notifier_test", "t", registry=registry)
    gauge = Gauge("notifier_test_inprogress", "t", registry=registry)
    histogram = Histogram("notifier_test_seconds", "t", registry=registry, buckets=(0.1, 1.0))
    tally = Tally()
    go = threading.Event()

    def count() -> None:
        go.wait()
        for _ in range(5000):
            tally.count(gauge, 1)
            tally.count(counter, 1)
            tally.observe(histogram, 0.5)
            tally.count(gauge, -1)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    while any(thread.is_alive() for thread in threads):
        tally.add_up()
    tally.add_up()
    got = parse(generate_latest(registry).decode())
    assert got.value("notifier_test_total") == 40_000
    assert got.value("notifier_test_inprogress") == 0
    assert got.value("notifier_test_seconds_bucket", le="1.0") == 40_000
    assert got.value("notifier_test_seconds_bucket", le="0.1") == 0
    assert got.value("notifier_test_seconds_sum") == 20_000
    assert tally.held() == 0
