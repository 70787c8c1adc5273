"""Tracing's helpers and Dramatiq middleware on Dramatiq's StubBroker, spans kept in memory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, TimeLimit
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from notifier.observability import tracing
from notifier.observability.logging import Context, delivery


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def record(message: str = "hello") -> logging.LogRecord:
    record = logging.makeLogRecord({"msg": message})
    Context().filter(record)
    return record


def test_everything_is_a_no_op_when_off() -> None:
    assert not tracing.enabled_now()
    with tracing.span("claim notification", a=1) as span, tracing.client("smtp send"), tracing.linked("x", ["bad"]):
        assert span is None
        assert tracing.traceparent() is None
        assert tracing.ids() is None
        tracing.rename("ignored")
        tracing.annotate(a=2)
    message: dramatiq.Message[None] = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    with tracing.producing([message]):
        pass
    middleware = tracing.Messaging()
    broker = StubBroker()
    middleware.before_enqueue(broker, message, None)
    assert message.options == {}
    assert "trace_id" not in vars(record())


def test_configure_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure("notifier-test") is False
    assert not tracing.enabled_now()
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})


def test_traceparent_and_ids_name_the_current_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer", answer=42):
        parent = tracing.traceparent()
        found = tracing.ids()
        tracing.rename("renamed")
        tracing.annotate(extra="yes")
    [span] = spans.get_finished_spans()
    trace_id, span_id = hex_ids(span)
    assert span.context is not None
    assert parent == f"00-{trace_id}-{span_id}-{span.context.trace_flags:02x}"
    assert span.context.trace_flags.sampled
    assert found == (trace_id, span_id)
    assert span.name == "renamed"
    assert span.kind is SpanKind.INTERNAL
    assert dict(span.attributes or {}) == {"answer": 42, "extra": "yes"}
    assert tracing.traceparent() is None  # no span now


def test_a_span_left_by_an_exception_is_an_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.client("smtp send", **{"server.port": 25}):
        raise RuntimeError("refused")
    [span] = spans.get_finished_spans()
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_parse_takes_only_valid_traceparents() -> None:
    good = tracing.parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert good is not None
    assert good.is_remote
    assert (good.trace_id, good.span_id) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    for bad in (
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-zz" + "0" * 30 + "-b7ad6b7169203331-01",
    ):
        assert tracing.parse(bad) is None


def test_linked_links_to_each_valid_traceparent(spans: InMemorySpanExporter) -> None:
    with tracing.span("request one"):
        first = tracing.traceparent()
    with tracing.span("request two"):
        second = tracing.traceparent()
    with tracing.linked("relay notifications", [first, None, "nonsense", second], count=2):
        pass
    relay = by_name(spans)["relay notifications"][0]
    assert [hex_ids(r) for r in (by_name(spans)["request one"][0], by_name(spans)["request two"][0])] == [
        (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in relay.links
    ]
    assert relay.parent is None


def test_producing_gives_each_message_a_producer_span_and_its_traceparent(spans: InMemorySpanExporter) -> None:
    broker = StubBroker(middleware=[tracing.Messaging()])
    broker.declare_queue("notifier.deliver")
    messages: list[dramatiq.Message[None]] = [
        dramatiq.Message(queue_name=name, actor_name="deliver_notification", args=(str(i),), kwargs={}, options={})
        for i, name in enumerate(("notifier.deliver", "notifier.deliver.DQ"))
    ]
    with tracing.span("POST /notify"), tracing.producing(messages):
        for message in messages:
            broker.emit_before("enqueue", message, None)  # as the fast enqueue does: the middleware stays out
    found = by_name(spans)
    [server] = found["POST /notify"]
    producers = found["send notifier.deliver"]
    assert len(producers) == 2
    assert len(spans.get_finished_spans()) == 3
    for message, producer in zip(messages, producers, strict=True):
        assert producer.kind is SpanKind.PRODUCER
        assert producer.parent is not None
        assert server.context is not None
        assert producer.parent.span_id == server.context.span_id
        trace_id, span_id = hex_ids(producer)
        assert message.options["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
        assert producer.attributes is not None
        assert producer.attributes["messaging.system"] == "dramatiq"
        assert producer.attributes["messaging.destination.name"] == "notifier.deliver"
        assert producer.attributes["messaging.message.id"] == message.message_id


def test_a_failed_batch_enqueue_marks_its_producer_spans_failed(spans: InMemorySpanExporter) -> None:
    message: dramatiq.Message[None] = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    with pytest.raises(ConnectionError), tracing.producing([message]):
        raise ConnectionError("redis away")
    [producer] = spans.get_finished_spans()
    assert producer.status.status_code is StatusCode.ERROR


def test_a_message_is_traced_from_send_through_its_retry(spans: InMemorySpanExporter) -> None:
    """send → process (ERROR) → send (the retry, under the failed run) → process, in one trace."""
    messaging = tracing.Messaging()
    broker = StubBroker(
        middleware=[
            messaging,
            AgeLimit(),
            TimeLimit(),
            Callbacks(),
            Pipelines(),
            CurrentMessage(),
            Retries(min_backoff=10, max_backoff=10, max_retries=3),
        ]
    )
    runs: list[tuple[str, str] | None] = []
    lines: list[logging.LogRecord] = []

    @dramatiq.actor(broker=broker, actor_name="deliver_notification", queue_name="notifier.deliver")
    def deliver(notification_id: str) -> None:
        runs.append(tracing.ids())
        with delivery(notification_id, len(runs)):
            lines.append(record("attempt"))
        if len(runs) == 1:
            raise dramatiq.Retry("503", delay=10)

    with tracing.span("POST /notify"):
        deliver.send("n-1")
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("notifier.deliver", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    found = by_name(spans)
    [server] = found["POST /notify"]
    first_send, retry_send = sorted(found["send notifier.deliver"], key=lambda s: s.start_time or 0)
    first_run, second_run = sorted(found["process notifier.deliver"], key=lambda s: s.start_time or 0)
    assert {hex_ids(s)[0] for s in (server, first_send, retry_send, first_run, second_run)} == {hex_ids(server)[0]}

    def parent(span: ReadableSpan) -> str | None:
        return None if span.parent is None else f"{span.parent.span_id:016x}"

    assert parent(first_send) == hex_ids(server)[1]
    assert parent(first_run) == hex_ids(first_send)[1]
    assert parent(retry_send) == hex_ids(first_run)[1]
    assert parent(second_run) == hex_ids(retry_send)[1]
    assert first_run.kind is SpanKind.CONSUMER
    assert first_send.kind is SpanKind.PRODUCER
    assert first_run.status.status_code is StatusCode.ERROR
    assert second_run.status.status_code is StatusCode.UNSET
    assert runs == [hex_ids(first_run), hex_ids(second_run)]
    assert [(r.notification_id, r.attempt, r.trace_id, r.span_id) for r in lines] == [  # type: ignore[attr-defined]
        ("n-1", 1, *hex_ids(first_run)),
        ("n-1", 2, *hex_ids(second_run)),
    ]
    assert not messaging.processing.spans
    assert not messaging.sending.spans


def test_open_spans_are_bounded() -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    open_spans = tracing._OpenSpans(limit=2)
    for key in "abc":
        open_spans.put(key, tracer.start_span(key))
    assert list(open_spans.spans) == ["b", "c"]
    assert [s.name for s in exporter.get_finished_spans()] == ["a"]  # the evicted one ended, so it is exported


def test_log_lines_carry_the_delivery_and_keep_what_extra_set(spans: InMemorySpanExporter) -> None:
    assert "notification_id" not in vars(record())
    with delivery("n-7", 3):
        plain = record()
        explicit = logging.makeLogRecord({"msg": "x", "attempt": 9})
        Context().filter(explicit)
        with tracing.span("process notifier.deliver"):
            traced = record()
            expected = tracing.ids()
    assert (plain.notification_id, plain.attempt) == ("n-7", 3)  # type: ignore[attr-defined]
    assert "trace_id" not in vars(plain)
    assert explicit.attempt == 9  # type: ignore[attr-defined]
    assert expected is not None
    assert (traced.trace_id, traced.span_id) == expected  # type: ignore[attr-defined]


SHOW_SERVICE = """
import os
from notifier.observability import tracing
assert tracing.configure("notifier-worker")
provider = tracing.provider()
print(provider.resource.attributes["service.name"], os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"])
"""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "notifier-worker http"),
        ({"OTEL_SERVICE_NAME": "billing-notifier"}, "billing-notifier http"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,team=ops"}, "from-attributes http"),
        ({"OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup"}, "notifier-worker http/dup"),
    ],
)
def test_configure_names_the_service_unless_the_environment_does(env: dict[str, str], expected: str) -> None:
    """In a process of its own: configuring sets this process's global tracer provider."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Nothing listens there; the batch processor exports nothing before the process ends.
    base["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://127.0.0.1:9/v1/traces"
    done = subprocess.run(
        [sys.executable, "-c", SHOW_SERVICE], env={**base, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
