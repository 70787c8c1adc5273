"""Traces from the real processes: API → enqueue → worker → provider, exported over OTLP/HTTP to a
local receiver, and the worker's log lines of a delivery carrying the trace."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Stack, StartStack
from tests.peers import OtlpPeer, ReceivedSpan, SmtpPeer, WebhookPeer

TRACE_WAIT = 30.0


@pytest.fixture
def traced(start_stack: StartStack, otlp_receiver: OtlpPeer) -> Stack:
    """The api, a worker and a scheduler exporting their spans to ``otlp_receiver`` every 100 ms."""
    return start_stack(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        NOTIFIER_LOG_LEVEL="DEBUG",
    )


def one(spans: list[ReceivedSpan], **wanted: Any) -> ReceivedSpan:
    """The single span whose fields have the values given."""
    found = [s for s in spans if all(getattr(s, k) == v for k, v in wanted.items())]
    assert len(found) == 1, f"{len(found)} spans match {wanted}: {found!r}"
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: (s.name, s.span_id))


def shape(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[tuple[str, str, str]]:
    """(name, kind, service) of ``parent``'s children, sorted."""
    return sorted((s.name, s.kind, s.service) for s in children(spans, parent))


def tree(spans: list[ReceivedSpan], root: ReceivedSpan, depth: int = 0) -> str:
    """The spans under ``root`` as an indented tree (shown with ``-s``, and in failures)."""
    status = "" if root.status == "UNSET" else f" {root.status}"
    line = f"{'    ' * depth}{root.name} [{root.kind} {root.service}{status}] {root.span_id}\n"
    ordered = sorted(children(spans, root), key=lambda s: s.start)
    return line + "".join(tree(spans, child, depth + 1) for child in ordered)


def server_trace(otlp: OtlpPeer, route: str, complete: Any) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The API's one SERVER span for ``route`` and every span of its trace, once ``complete(trace)``."""

    def found(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan]] | None:
        servers = [s for s in spans if s.kind == "SERVER" and s.name == route]
        if len(servers) != 1:
            return None
        trace = [s for s in spans if s.trace_id == servers[0].trace_id]
        return (servers[0], trace) if complete(trace) else None

    result: tuple[ReceivedSpan, list[ReceivedSpan]] = otlp.wait_until(found, TRACE_WAIT, f"the trace of {route}")
    return result


def log_lines(stack: Stack, notification_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in stack.worker.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("notification_id") == notification_id:
                lines.append(entry)
    return lines


def test_a_retried_webhook_is_one_trace_from_the_request_to_both_provider_calls(
    traced: Stack, otlp_receiver: OtlpPeer, webhook_receiver: WebhookPeer
) -> None:
    webhook_receiver.respond(503, body="maintenance")
    created = traced.notify(channel="webhook", recipient=f"{webhook_receiver.url}/hook", body="trace me")
    traced.wait_status(created["id"], "sent")

    def complete(trace: list[ReceivedSpan]) -> bool:
        # A CONSUMER span ends after everything under it, so the batches it goes out in come last.
        return [s.kind for s in trace].count("CONSUMER") == 2

    server, spans = server_trace(otlp_receiver, "POST /notify", complete)
    print(f"trace {server.trace_id}:\n{tree(spans, server)}")
    assert server.service == "notifier-api"
    assert server.parent_id == ""
    assert server.attributes["http.route"] == "/notify"
    [send] = children(spans, server)
    assert (send.name, send.kind, send.service) == ("send notifier.deliver", "PRODUCER", "notifier-api")
    assert send.attributes["messaging.system"] == "dramatiq"
    assert send.attributes["messaging.destination.name"] == "notifier.deliver"
    [first] = children(spans, send)
    assert (first.name, first.kind, first.service) == ("process notifier.deliver", "CONSUMER", "notifier-worker")
    assert first.status == "ERROR"
    assert first.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert shape(spans, first) == [
        ("POST", "CLIENT", "notifier-worker"),
        ("claim notification", "INTERNAL", "notifier-worker"),
        ("record outcome", "INTERNAL", "notifier-worker"),
        ("send notifier.deliver", "PRODUCER", "notifier-worker"),  # the retry, sent under the failed run
    ]
    retry = one(children(spans, first), kind="PRODUCER")
    [second] = children(spans, retry)
    assert (second.kind, second.service, second.status) == ("CONSUMER", "notifier-worker", "UNSET")
    assert shape(spans, second) == [
        ("POST", "CLIENT", "notifier-worker"),
        ("claim notification", "INTERNAL", "notifier-worker"),
        ("record outcome", "INTERNAL", "notifier-worker"),
    ]
    first_call, second_call = one(children(spans, first), kind="CLIENT"), one(children(spans, second), kind="CLIENT")
    assert first_call.attributes["http.response.status_code"] == 503
    assert second_call.attributes["http.response.status_code"] == 204
    assert one(children(spans, first), name="record outcome").attributes["notifier.outcome"] == "transient_error"
    assert one(children(spans, second), name="record outcome").attributes["notifier.outcome"] == "sent"
    # httpx carried the trace context to the provider: each request names its CLIENT span.
    requests = webhook_receiver.wait_for_requests(2)
    assert [r.headers["traceparent"][:52] for r in requests] == [
        f"00-{server.trace_id}-{call.span_id}" for call in (first_call, second_call)
    ]
    # Every log line of the delivery carries the trace, its span, the notification and the attempt.
    ids = {s.span_id for s in spans}
    lines = log_lines(traced, created["id"])
    assert {line["message"] for line in lines} >= {"delivery attempt failed; will retry", "notification sent"}
    for line in lines:
        assert line["trace_id"] == server.trace_id, line
        assert line["span_id"] in ids, line
        assert line["attempt"] in (1, 2), line
    assert {line["attempt"] for line in lines} == {1, 2}
    print("\n".join(json.dumps(line) for line in lines))


def test_an_email_delivery_traces_the_smtp_call(traced: Stack, otlp_receiver: OtlpPeer, smtp_server: SmtpPeer) -> None:
    created = traced.notify(channel="email", recipient="ada@example.com", subject="Hi", body="traced mail")
    traced.wait_status(created["id"], "sent")
    server, spans = server_trace(otlp_receiver, "POST /notify", lambda trace: any(s.kind == "CONSUMER" for s in trace))
    [send] = children(spans, server)
    [process] = children(spans, send)
    assert (process.kind, process.service, process.status) == ("CONSUMER", "notifier-worker", "UNSET")
    assert shape(spans, process) == [
        ("claim notification", "INTERNAL", "notifier-worker"),
        ("record outcome", "INTERNAL", "notifier-worker"),
        ("smtp send", "CLIENT", "notifier-worker"),
    ]
    smtp = one(children(spans, process), name="smtp send")
    assert smtp.attributes["server.address"] == smtp_server.host
    assert smtp.attributes["server.port"] == smtp_server.port
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["ada@example.com"]


def test_a_scheduled_notification_is_relayed_in_a_span_linked_to_its_request(
    traced: Stack, otlp_receiver: OtlpPeer, webhook_receiver: WebhookPeer, database_url: str
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    created = traced.notify(
        channel="webhook", recipient=f"{webhook_receiver.url}/later", body="later", send_at=send_at.isoformat()
    )
    traced.wait_status(created["id"], "sent")
    server, request_trace = server_trace(otlp_receiver, "POST /notify", lambda trace: True)
    assert request_trace == [server]  # not due: the API enqueued nothing
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT trace_parent FROM notifications WHERE id = %s", (created["id"],)).fetchone()
    assert row is not None
    assert row[0].startswith(f"00-{server.trace_id}-{server.span_id}-")

    def relayed(spans: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        relays = [s for s in spans if s.name == "relay notifications" and (server.trace_id, server.span_id) in s.links]
        if len(relays) != 1:
            return None
        trace = [s for s in spans if s.trace_id == relays[0].trace_id]
        return trace if any(s.kind == "CONSUMER" for s in trace) else None

    spans = otlp_receiver.wait_until(relayed, TRACE_WAIT, "the relay's trace")
    relay = one(spans, name="relay notifications")
    print(f"trace {relay.trace_id}, linked to {server.trace_id}:\n{tree(spans, relay)}")
    assert relay.service == "notifier-scheduler"
    assert relay.trace_id != server.trace_id
    [send] = children(spans, relay)
    assert (send.name, send.kind, send.service) == ("send notifier.deliver", "PRODUCER", "notifier-scheduler")
    [process] = children(spans, send)
    assert (process.kind, process.service) == ("CONSUMER", "notifier-worker")
    assert ("POST", "CLIENT", "notifier-worker") in shape(spans, process)
