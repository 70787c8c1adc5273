"""OpenTelemetry traces: configured once per process, and the small helpers the code calls.

Tracing is on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set (:func:`configure`); the other standard ``OTEL_*`` variables apply as the SDK reads them.
Off, every helper returns at its first test: the accept path pays a few tens of nanoseconds.

What makes a trace run from the API to the provider:

- the API's SERVER spans come from Litestar's OpenTelemetry plugin (``notifier.api.app``);
- :class:`Messaging`, the broker's first middleware, opens a PRODUCER span ``send <queue>`` for every
  message enqueued and writes its W3C ``traceparent`` into the message's options; the worker opens a
  CONSUMER span ``process <queue>`` under it for the message's run. The fast batch enqueue of
  ``notifier.worker.broker`` does the same through :func:`producing`;
- inside a delivery, the claim and the outcome are INTERNAL spans (:func:`span`), the provider call
  a CLIENT span (httpx's instrumentation for webhooks and SMS, :func:`client` for SMTP);
- a notification stores the ``traceparent`` it was created under (:func:`traceparent`); the relay,
  which enqueues it later, opens a span that links to those (:func:`linked`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.common import q_name
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

import notifier

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy
    from opentelemetry.sdk.trace import TracerProvider

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
OPTION = "traceparent"
"""The message option :class:`Messaging` carries the W3C trace context in."""
OPEN_SPANS = 10_000
"""Messages whose spans :class:`Messaging` keeps open at most (per kind); past it the oldest is ended."""

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
_in_batch: contextvars.ContextVar[bool] = contextvars.ContextVar("notifier_in_batch", default=False)
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint is set)."""
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


def enabled_now() -> bool:
    """Whether this process traces (:func:`configure` turned it on)."""
    return _tracer is not None


def configure(service_default: str) -> bool:
    """Turn tracing on for this process if the environment asks for it; ``True`` when on.

    ``service_default`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` names one. Spans go through a batch processor to the OTLP/HTTP
    exporter (``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*`` apply); httpx requests become CLIENT spans
    and carry ``traceparent`` to the provider. HTTP spans follow the stable semantic conventions
    unless ``OTEL_SEMCONV_STABILITY_OPT_IN`` says otherwise.
    """
    if not enabled():
        return False
    if _provider is not None:
        return True
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_default}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Make ``provider`` the one the helpers use (``None``: off); :func:`configure` calls it, and
    the tests, with an in-memory exporter."""
    global _tracer, _provider
    _provider = provider
    if provider is None:
        _tracer = None
        return
    with contextlib.suppress(Exception):  # the global provider can be set once per process
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("notifier", notifier.__version__)


def provider() -> TracerProvider | None:
    """The tracer provider the helpers use, for instrumentations (``None`` when off)."""
    return _provider


def flush(timeout_ms: int = 5_000) -> None:
    """Export what the batch processor holds (at a worker's shutdown)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """An INTERNAL span around a block, a child of the current one; an exception leaving the block
    is recorded and sets the span's status to ERROR."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


def client(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A CLIENT span (a call to another system) around a block, like :func:`span`."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def linked(name: str, traceparents: Iterable[str | None], **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """An INTERNAL span that links to each ``traceparent`` given (the ones that parse).

    The SDK keeps ``OTEL_SPAN_LINK_COUNT_LIMIT`` links a span (128 by default) and drops the rest.
    """
    if _tracer is None:
        return _NOTHING
    links = [Link(context) for context in map(parse, traceparents) if context is not None]
    return _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes, links=links)


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, or ``None`` (tracing off, no span)."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format_traceparent(context) if context.is_valid else None


def ids() -> tuple[str, str] | None:
    """The current recording span's ``(trace_id, span_id)`` in hex, for log lines; else ``None``."""
    if _tracer is None:
        return None
    current = trace.get_current_span()
    if not current.is_recording():
        return None
    context = current.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def rename(name: str) -> None:
    """Rename the current span."""
    if _tracer is not None:
        trace.get_current_span().update_name(name)


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def parse(value: str | None) -> SpanContext | None:
    """The remote span context a version-00 ``traceparent`` names; ``None`` if it is not one."""
    if not value or len(value) != 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    try:
        trace_id, span_id, flags = int(value[3:35], 16), int(value[36:52], 16), int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def _parent(value: str | None) -> otel_context.Context | None:
    remote = parse(value)
    return None if remote is None else trace.set_span_in_context(NonRecordingSpan(remote))


def _attributes(message: Any, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "dramatiq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": q_name(message.queue_name),
        "messaging.message.id": message.message_id,
        "messaging.dramatiq.actor": message.actor_name,
    }


def _producer(message: dramatiq.Message[Any]) -> Span:
    """A started PRODUCER span for ``message``, whose ``traceparent`` option now names it."""
    assert _tracer is not None
    started = _tracer.start_span(
        f"send {q_name(message.queue_name)}", kind=SpanKind.PRODUCER, attributes=_attributes(message, "send")
    )
    message.options[OPTION] = format_traceparent(started.get_span_context())
    return started


@contextlib.contextmanager
def _producing(messages: Sequence[dramatiq.Message[Any]]) -> Iterator[None]:
    spans = [_producer(message) for message in messages]
    token = _in_batch.set(True)
    try:
        yield
    except BaseException as exc:
        for each in spans:
            each.record_exception(exc)
            each.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        _in_batch.reset(token)
        for each in spans:
            each.end()


def producing(messages: Sequence[dramatiq.Message[Any]]) -> contextlib.AbstractContextManager[None]:
    """Around an enqueue that bypasses ``broker.enqueue`` (the fast batch enqueue): a PRODUCER span
    for each message, under the current span, named in its ``traceparent`` option before it is
    encoded; the spans end with the block (ERROR if it raised). :class:`Messaging` leaves these
    messages alone."""
    if _tracer is None:
        return _NOTHING
    return _producing(messages)


class _OpenSpans:
    """Spans open across two middleware hooks, by message id, at most :data:`OPEN_SPANS`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.spans: OrderedDict[str, tuple[Span, object | None]] = OrderedDict()

    def put(self, key: str, opened: Span, token: object | None = None) -> None:
        with self.lock:
            self.spans[key] = (opened, token)
            evicted = self.spans.popitem(last=False) if len(self.spans) > self.limit else None
        if evicted is not None:
            evicted[1][0].end()

    def pop(self, key: str) -> tuple[Span, object | None] | None:
        with self.lock:
            return self.spans.pop(key, None)


class Messaging(dramatiq.Middleware):
    """Trace context through Dramatiq: PRODUCER spans at enqueue, CONSUMER spans around processing.

    It belongs first in the broker's middleware, so that its ``before`` hooks run first and its
    ``after`` hooks last: the CONSUMER span is current while the other middleware finish (a retry
    that Retries enqueues is sent under it, in the same trace). A message moved from a delay queue
    to its work queue keeps the trace context it was sent with.
    """

    def __init__(self, limit: int = OPEN_SPANS) -> None:
        self.sending = _OpenSpans(limit)
        self.processing = _OpenSpans(limit)

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if _tracer is None or _in_batch.get():
            return
        if OPTION in message.options and not trace.get_current_span().get_span_context().is_valid:
            return  # the worker moving a delayed message on: it was traced when it was sent
        self.sending.put(message.message_id, _producer(message))

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if _tracer is None:
            return
        found = self.sending.pop(message.message_id)
        if found is not None:
            found[0].end()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if _tracer is None:
            return
        parent = _parent(message.options.get(OPTION))
        started = _tracer.start_span(
            f"process {q_name(message.queue_name)}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message, "process"),
        )
        token = otel_context.attach(trace.set_span_in_context(started, parent))
        self.processing.put(message.message_id, started, token)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if _tracer is None:
            return
        found = self.processing.pop(message.message_id)
        if found is None:
            return
        opened, token = found
        if exception is not None:
            opened.record_exception(exception)
            opened.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
        _end(opened, token)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if _tracer is None:
            return
        found = self.processing.pop(message.message_id)
        if found is not None:
            found[0].set_attribute("messaging.dramatiq.skipped", True)
            _end(*found)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        flush()


def _end(opened: Span, token: object | None) -> None:
    if token is not None:
        with contextlib.suppress(ValueError):  # attached in another context: nothing to restore
            otel_context.detach(token)  # type: ignore[arg-type]
    opened.end()
