"""The worker's Prometheus middleware (:class:`notifier.worker.prometheus.Prometheus`) counts what
Dramatiq's own does, at once or on a tally, and re-implements hooks that are still Dramatiq's."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import prometheus as dramatiq_prometheus

from notifier.observability import metrics
from notifier.observability.tally import Direct, Tally
from notifier.worker.app import instrument
from notifier.worker.prometheus import Prometheus

LABELS = {"queue_name": "notifier.test", "actor_name": "noop"}


def counted(middleware: dramatiq_prometheus.Prometheus) -> dict[str, float]:
    """Every sample of the middleware's families for :data:`LABELS`, by sample name and bucket."""
    found: dict[str, float] = {}
    for family in vars(middleware).values():
        if hasattr(family, "_labelnames"):
            for metric in family.collect():
                for sample in metric.samples:
                    labels = dict(sample.labels)
                    bucket = labels.pop("le", None)
                    if labels == LABELS and not sample.name.endswith("_created"):
                        found[sample.name + ("" if bucket is None else f"{{le={bucket}}}")] = sample.value
    return found


SUM = "dramatiq_message_duration_milliseconds_sum"


def untimed(found: dict[str, float]) -> dict[str, float]:
    """``found`` without what depends on how long each message took (the durations' sum and their
    buckets under a second: a pause of the test process can move one)."""
    assert 0 <= found[SUM] < 60_000

    def timed(name: str) -> bool:
        bound = name.partition("{le=")[2].rstrip("}")
        return name == SUM or (bound not in ("", "+Inf") and float(bound) < 1000)

    return {name: value for name, value in found.items() if not timed(name)}


def run_messages(middleware: dramatiq_prometheus.Prometheus) -> None:
    """Three messages processed, one failed, one skipped, through ``middleware`` on a broker of its own."""
    broker = StubBroker()
    broker.add_middleware(middleware)
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="notifier.test")
    def noop() -> None:
        pass

    messages = [MessageProxy(noop.message()) for _ in range(5)]
    for message in messages[:3]:
        broker.emit_before("process_message", message)
        broker.emit_after("process_message", message, result=None)
    broker.emit_before("process_message", messages[3])
    broker.emit_after("process_message", messages[3], exception=RuntimeError("boom"))
    broker.emit_after("skip_message", messages[4])


@pytest.fixture
def booted() -> Iterator[tuple[dramatiq.Broker, Prometheus]]:
    """A broker instrumented as a worker process's is (outside multiprocess mode: counting at once), booted."""
    broker = StubBroker()
    instrument(broker)
    (prometheus,) = [m for m in broker.middleware if isinstance(m, dramatiq_prometheus.Prometheus)]
    assert isinstance(prometheus, Prometheus)
    broker.emit_after("process_boot")
    yield broker, prometheus
    metrics.disable()


def test_it_counts_what_dramatiqs_middleware_counts() -> None:
    stock = dramatiq_prometheus.Prometheus()
    ours = Prometheus(Direct())
    run_messages(stock)
    run_messages(ours)
    expected = counted(stock)
    assert expected["dramatiq_messages_total"] == 5
    assert expected["dramatiq_message_errors_total"] == 1
    assert expected["dramatiq_message_duration_milliseconds_count"] == 5
    assert untimed(counted(ours)) == untimed(expected)


def test_on_a_tally_it_counts_once_added_up() -> None:
    stock = dramatiq_prometheus.Prometheus()
    tally = Tally()
    ours = Prometheus(tally)
    run_messages(stock)
    run_messages(ours)
    assert counted(ours)["dramatiq_messages_total"] == 0
    tally.add_up()
    assert untimed(counted(ours)) == untimed(counted(stock))


def test_the_series_are_looked_up_once(booted: tuple[dramatiq.Broker, Prometheus]) -> None:
    _, prometheus = booted
    message = MessageProxy(dramatiq.Message("notifier.test", "noop", (), {}, {}))
    assert prometheus.series(message) is prometheus.series(message)
    assert prometheus.series(message).total is prometheus.total_messages.labels("notifier.test", "noop")


HOOKS: dict[str, str] = {
    "before_process_message": "ad6252383e808718",
    "after_process_message": "7d285fa41bfbcf2c",
    "after_worker_shutdown": "6665a88aaee6ed9b",
}
"""The first 16 hex digits of the SHA-256 of the source of each Dramatiq hook
:class:`~notifier.worker.prometheus.Prometheus` overrides, as of the Dramatiq version pinned."""


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_the_hooks_it_overrides_are_dramatiqs_as_pinned(hook: str) -> None:
    source = inspect.getsource(getattr(dramatiq_prometheus.Prometheus, hook))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == HOOKS[hook], (
        f"Dramatiq's Prometheus.{hook} changed: count in notifier/worker/prometheus.py what it counts now,"
        f" then update HOOKS\n{source}"
    )
    override: Callable[..., Any] = getattr(Prometheus, hook)
    assert override is not getattr(dramatiq_prometheus.Prometheus, hook)
    assert Prometheus.after_skip_message is Prometheus.after_process_message
    assert dramatiq_prometheus.Prometheus.after_skip_message is dramatiq_prometheus.Prometheus.after_process_message
