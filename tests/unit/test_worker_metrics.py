"""Dramatiq's Prometheus middleware with :class:`~notifier.worker.app.KeepSeries` beside it: the same
series, counted as before, looked up once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.prometheus import Prometheus

from notifier.observability import metrics
from notifier.worker.app import instrument


def value(prometheus: Prometheus, family: str, **labels: str) -> float | None:
    for metric in getattr(prometheus, family).collect():
        for sample in metric.samples:
            counted = sample.name.endswith("_count") or family != "message_durations"
            if sample.labels == labels and counted and not sample.name.endswith(("_created", "_bucket")):
                return float(sample.value)
    return None


@pytest.fixture
def booted() -> Iterator[tuple[dramatiq.Broker, Prometheus, Any]]:
    """A broker instrumented as a worker process's is, booted."""
    broker = StubBroker()
    instrument(broker)
    (prometheus,) = [m for m in broker.middleware if isinstance(m, Prometheus)]
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="notifier.test")
    def noop() -> None:
        pass

    yield broker, prometheus, noop
    metrics.disable()


def test_the_series_are_looked_up_once_and_still_count(booted: tuple[dramatiq.Broker, Prometheus, Any]) -> None:
    broker, prometheus, noop = booted
    message = MessageProxy(noop.message())
    for _ in range(3):
        broker.emit_before("process_message", message)
        broker.emit_after("process_message", message, result=None)
    broker.emit_before("process_message", message)
    broker.emit_after("process_message", message, exception=RuntimeError("boom"))

    labels = {"queue_name": "notifier.test", "actor_name": "noop"}
    assert value(prometheus, "total_messages", **labels) == 4
    assert value(prometheus, "total_errored_messages", **labels) == 1
    assert value(prometheus, "inprogress_messages", **labels) == 0
    assert value(prometheus, "message_durations", **labels) == 4
    assert prometheus.total_messages.labels("notifier.test", "noop") is prometheus.total_messages.labels(
        "notifier.test", "noop"
    )
    assert prometheus.total_messages.labels.cache_info().hits >= 3  # type: ignore[attr-defined]


def test_every_family_of_the_middleware_is_kept(booted: tuple[dramatiq.Broker, Prometheus, Any]) -> None:
    """Whatever families a Dramatiq release adds, each is kept: a release that renames them still
    passes through the middleware's own ``labels``, and the count above fails if that breaks."""
    _, prometheus, _ = booted
    families = [f for f in vars(prometheus).values() if hasattr(f, "_labelnames")]
    assert len(families) >= 6
    assert all(hasattr(f.labels, "cache_info") for f in families)
