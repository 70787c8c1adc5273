"""Real protocol peers for the tests: an SMTP server, an HTTP server, a Twilio-compatible SMS gateway
and a Standard Webhooks receiver, each on 127.0.0.1 with an ephemeral port, recording what it got.

Loaded as a pytest plugin (``pytest_plugins = ["tests.peers"]``), it provides the fixtures
``tls_ca``, ``smtp_server``, ``smtp_tls_server``, ``http_server``, ``sms_gateway``,
``webhook_receiver`` and ``otlp_receiver`` (an OTLP/HTTP trace collector); each peer is stopped
when its test ends. The classes work on their own as
context managers too::

    with SmtpPeer(implicit_tls=True, auth=("user", "pass")) as smtp:
        ...  # send to smtp.host:smtp.port (or smtp.url), then smtp.wait_for(1)
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import json as jsonlib
import logging
import re
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, quote

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

LOCALHOST = "127.0.0.1"
DEFAULT_WAIT = 10.0

T = TypeVar("T")

# aiosmtpd warns about its own deprecated Session.login_data on every AUTH; that is not ours to fix.
logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())


class _Recorder:
    """A thread-safe record with a deadline-bounded wait for it to grow."""

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def _append(self, items: list[T], item: T) -> None:
        with self._changed:
            items.append(item)
            self._changed.notify_all()

    def _wait(self, items: list[T], count: int, timeout: float, what: str) -> list[T]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{type(self).__name__}: waited {timeout}s for {count} {what}, got {len(items)}: {items!r}"
                    )
                self._changed.wait(remaining)
            return list(items)


def _listening_socket(host: str) -> socket.socket:
    """A socket bound to an ephemeral port (no race between choosing the port and binding it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def new_ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context like ``ssl.create_default_context()`` that also trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOCALHOST, "localhost").configure_cert(context)
    return context


# ----------------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    """One message the SMTP peer accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    tls: bool
    """Whether the session was encrypted (STARTTLS or implicit TLS)."""
    auth_login: str | None
    """The user the session authenticated as, if it did."""


class _SmtpHandler:
    def __init__(self, peer: SmtpPeer) -> None:
        self.peer = peer

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.peer.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if refusal := self.peer._refusal("RCPT"):
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if refusal := self.peer._refusal("DATA"):
            return refusal
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        # Lines arrive CRLF-terminated; a mail store keeps them as local (LF) text.
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        transport = server.transport
        auth = session.auth_data if session.authenticated else None
        self.peer._record(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                raw=raw,
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
                auth_login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return "250 2.0.0 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's threaded controller on a socket bound beforehand, so port 0 works."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpPeer(_Recorder):
    """A real SMTP server (aiosmtpd) recording every message it accepts in :attr:`messages`.

    ``starttls`` offers (and requires) STARTTLS, ``implicit_tls`` speaks TLS from the first byte
    (SMTPS); both use a certificate for 127.0.0.1/localhost signed by ``ca`` (a fresh trustme CA
    when not given; see :meth:`client_tls_context`). ``auth=(user, password)`` makes MAIL FROM
    require a successful AUTH. ``refuse_first=N`` answers the first N ``refuse_at`` commands
    (``"RCPT"`` or ``"DATA"``) with ``refuse_code`` (451: transient, 550: permanent).
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
        ca: trustme.CA | None = None,
        refuse_first: int = 0,
        refuse_code: int = 451,
        refuse_at: Literal["RCPT", "DATA"] = "RCPT",
        refuse_message: str | None = None,
    ) -> None:
        super().__init__()
        if starttls and implicit_tls:
            raise ValueError("starttls and implicit_tls exclude each other")
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.ca = ca if ca is not None or not (starttls or implicit_tls) else new_ca()
        self.refuse_code = refuse_code
        self.refuse_at = refuse_at
        self.refuse_message = refuse_message or (
            "4.3.0 Temporarily unable to accept, try again later"
            if 400 <= refuse_code < 500
            else "5.1.1 Mailbox unavailable"
        )
        self.messages: list[ReceivedMail] = []
        self.refused = 0
        """How many commands were refused so far."""
        self._refuse_left = refuse_first
        self._lock = threading.Lock()
        self._controller: _Controller | None = None
        self.host = LOCALHOST
        self.port = 0

    # -- lifecycle

    def start(self) -> Self:
        tls = _server_context(self.ca) if self.ca is not None and (self.starttls or self.implicit_tls) else None
        kwargs: dict[str, Any] = {
            "server_hostname": "localhost",
            "ready_timeout": DEFAULT_WAIT,
            # aiosmtpd only offers AUTH over STARTTLS by default; implicit TLS and plain text need this off.
            "auth_require_tls": self.starttls,
        }
        if self.implicit_tls:
            kwargs["ssl_context"] = tls
        if self.starttls:
            kwargs.update(tls_context=tls, require_starttls=True)
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
        sock = _listening_socket(LOCALHOST)
        self.host, self.port = sock.getsockname()[:2]
        controller = _Controller(_SmtpHandler(self), sock, **kwargs)
        try:
            controller.start()
        except BaseException:
            sock.close()
            controller.stop(no_assert=True)
            raise
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use

    @property
    def url(self) -> str:
        """``NOTIFIER_SMTP_URL`` for this peer, credentials and TLS mode included."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        userinfo = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@" if self.auth else ""
        query = "?starttls=true" if self.starttls else ""
        return f"{scheme}://{userinfo}{self.host}:{self.port}{query}"

    def client_tls_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this peer's certificate."""
        if self.ca is None:
            raise ValueError("this SMTP peer does not use TLS")
        return client_context(self.ca)

    def wait_for(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[ReceivedMail]:
        """The messages received once there are at least ``count``; AssertionError after ``timeout``."""
        return self._wait(self.messages, count, timeout, "messages")

    # -- internals, called on aiosmtpd's thread

    def _record(self, mail: ReceivedMail) -> None:
        self._append(self.messages, mail)

    def _refusal(self, command: str) -> str | None:
        if command != self.refuse_at:
            return None
        with self._lock:
            if self._refuse_left <= 0:
                return None
            self._refuse_left -= 1
            self.refused += 1
        return f"{self.refuse_code} {self.refuse_message}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login.decode(),
                auth_data.password.decode(),
            )
            == self.auth
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


# ----------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Request:
    """One HTTP request as the peer received it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass(frozen=True)
class Response:
    """A scripted answer; ``delay`` seconds pass before it is sent (a hang, when long)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def of_json(cls, status: int, data: Any, headers: dict[str, str] | None = None, delay: float = 0.0) -> Response:
        return cls(status, jsonlib.dumps(data).encode(), {"content-type": "application/json", **(headers or {})}, delay)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection frees its thread after this long
    peer: HttpPeer

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        response = self.peer._answer(request)
        if response.delay and self.peer._stopping.wait(response.delay):
            self.close_connection = True
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status >= 200 and response.status not in (204, 304):
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout passed)

    def _read_chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve  # noqa: N815 (http.server's names)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpPeer(_Recorder):
    """A real HTTP/1.1 server recording every request in :attr:`requests`.

    Each request is answered by the next :meth:`respond`-queued response, or else by
    :meth:`handle` (by default :attr:`default`).
    """

    def __init__(self, default: Response | None = None) -> None:
        super().__init__()
        self.default = default or Response(200)
        self.requests: list[Request] = []
        self._scripted: deque[Response] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"peer": self})
        self._server = ThreadingHTTPServer((LOCALHOST, 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are "hanging"
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(DEFAULT_WAIT)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, like ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def respond(
        self,
        status: int = 200,
        *,
        body: bytes | str = b"",
        json: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests like this, before falling back to the default."""
        if json is not None:
            response = Response.of_json(status, json, headers, delay)
        else:
            response = Response(status, body.encode() if isinstance(body, str) else body, headers or {}, delay)
        with self._lock:
            self._scripted.extend([response] * times)

    def wait_for_requests(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[Request]:
        """The requests received once there are at least ``count``; AssertionError after ``timeout``."""
        return self._wait(self.requests, count, timeout, "requests")

    def wait_for(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[Any]:
        """What this peer records (for a plain HttpPeer, its requests), once there are ``count``."""
        return self.wait_for_requests(count, timeout)

    # -- for subclasses

    def handle(self, request: Request) -> Response:
        """The answer when nothing is scripted."""
        return self.default

    def inspect(self, request: Request) -> None:
        """Called with every request before it is answered, scripted or not."""

    def _answer(self, request: Request) -> Response:
        self.inspect(request)
        self._append(self.requests, request)
        with self._lock:
            scripted = self._scripted.popleft() if self._scripted else None
        return scripted if scripted is not None else self.handle(request)


# ------------------------------------------------------------------------------------------ SMS


@dataclass(frozen=True)
class SmsMessage:
    """One message the gateway accepted."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str


_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/?]+)/Messages\.json(?:\?.*)?$")


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    """A Twilio REST error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class SmsPeer(HttpPeer):
    """A Twilio-compatible Messages API: ``POST /2010-04-01/Accounts/{sid}/Messages.json`` with HTTP
    basic auth (sid, token) and form fields To/From/Body, answered 201 with Twilio's JSON.

    Accepted messages are in :attr:`messages`; every request (refused ones too) in :attr:`requests`.
    """

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        super().__init__()
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.messages: list[SmsMessage] = []

    def wait_for(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[SmsMessage]:
        """The accepted messages once there are at least ``count``; AssertionError after ``timeout``."""
        return self._wait(self.messages, count, timeout, "messages")

    def _authorised(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, binascii.Error):
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(password, self.auth_token)

    def handle(self, request: Request) -> Response:
        match = _MESSAGES_PATH.match(request.path)
        if not match:
            return Response.of_json(
                404, twilio_error(404, 20404, f"The requested resource {request.path} was not found")
            )
        if request.method != "POST":
            return Response.of_json(405, twilio_error(405, 20004, "Method not allowed"))
        if not self._authorised(request) or match["sid"] != self.account_sid:
            return Response.of_json(
                401, twilio_error(401, 20003, "Authenticate"), {"www-authenticate": 'Basic realm="Twilio API"'}
            )
        form = request.form()
        for name, code in (("To", 21604), ("From", 21603), ("Body", 21602)):
            if not form.get(name):
                what = "Message body" if name == "Body" else f"A '{name}' phone number"
                return Response.of_json(400, twilio_error(400, code, f"{what} is required."))
        message = SmsMessage(
            sid="SM" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=form["To"],
            from_=form["From"],
            body=form["Body"],
        )
        self._append(self.messages, message)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        return Response.of_json(
            201,
            {
                "sid": message.sid,
                "account_sid": message.account_sid,
                "to": message.to,
                "from": message.from_,
                "body": message.body,
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "api_version": "2010-04-01",
                "date_created": now,
                "date_updated": now,
                "date_sent": None,
                "price": None,
                "error_code": None,
                "error_message": None,
                "uri": f"/2010-04-01/Accounts/{message.account_sid}/Messages/{message.sid}.json",
            },
        )


# -------------------------------------------------------------------------------------- Webhook


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook request: its headers, its parsed JSON (None if not JSON) and whether it verified."""

    headers: dict[str, str]
    payload: Any
    verified: bool
    error: str | None
    """Why verification failed, when it did."""


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookPeer(HttpPeer):
    """A Standard Webhooks receiver: verifies every request with ``standardwebhooks`` and answers
    204 when the signature is valid, 400 when not (with ``secret=None`` it verifies nothing and
    answers 204). Every request is in :attr:`deliveries` (and :attr:`requests`).
    """

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self.secret = secret
        self.deliveries: list[WebhookDelivery] = []
        self._verifier = Webhook(secret) if secret else None

    def wait_for(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[WebhookDelivery]:
        """The deliveries once there are at least ``count``; AssertionError after ``timeout``."""
        return self._wait(self.deliveries, count, timeout, "deliveries")

    def _verify(self, request: Request) -> str | None:
        if self._verifier is None:
            return "no secret configured"
        try:
            self._verifier.verify(request.body, request.headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def inspect(self, request: Request) -> None:
        error = self._verify(request)
        try:
            payload = request.json()
        except ValueError:
            payload = None
        delivery = WebhookDelivery(request.headers, payload, error is None, error)
        self._append(self.deliveries, delivery)

    def handle(self, request: Request) -> Response:
        if self._verifier is None:
            return Response(204)
        error = self._verify(request)
        return Response(204) if error is None else Response(400, f"invalid signature: {error}".encode())


# ----------------------------------------------------------------------------------------- OTLP


SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span an exporter sent, decoded from OTLP; ids in lower-case hex, ``parent_id`` ``""`` for a root."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    """(trace id, span id) of each link."""
    status: str
    status_message: str
    start: int
    """Its start, in nanoseconds since the epoch."""


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


class OtlpPeer(HttpPeer):
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf): decodes every
    ``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps its spans in :attr:`spans`.

    Point an exporter at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[ReceivedSpan] = []

    def handle(self, request: Request) -> Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        if request.method != "POST" or request.path != "/v1/traces":
            return Response(404)
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._append(
                        self.spans,
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                            service=str(resource.get("service.name", "")),
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            status=STATUS_CODES.get(span.status.code, str(span.status.code)),
                            status_message=span.status.message,
                            start=span.start_time_unix_nano,
                        ),
                    )
        return Response(
            200, ExportTraceServiceResponse().SerializeToString(), {"content-type": "application/x-protobuf"}
        )

    def wait_for(self, count: int = 1, timeout: float = DEFAULT_WAIT) -> list[ReceivedSpan]:
        return self._wait(self.spans, count, timeout, "spans")

    def wait_until(
        self, predicate: Callable[[list[ReceivedSpan]], T | None], timeout: float = DEFAULT_WAIT, what: str = "spans"
    ) -> T:
        """What ``predicate`` makes of the spans received so far, once it is not ``None``/falsy."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = predicate(list(self.spans))
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"OtlpPeer: waited {timeout}s for {what}; got {self.spans!r}")
                self._changed.wait(remaining)


# ------------------------------------------------------------------------------------- fixtures


def _running(peer_factory: Callable[[], Any]) -> Iterator[Any]:
    peer = peer_factory()
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A trustme CA; ``tls_ca.cert_pem.write_to_path(p)`` gives a CA file (e.g. for SSL_CERT_FILE)."""
    return new_ca()


@pytest.fixture
def smtp_server() -> Iterator[SmtpPeer]:
    """A plain SMTP server: no TLS, no AUTH."""
    yield from _running(SmtpPeer)


@pytest.fixture
def smtp_tls_server(tls_ca: trustme.CA) -> Iterator[SmtpPeer]:
    """An SMTP server requiring STARTTLS (cert signed by ``tls_ca``) and AUTH as ``smtp_tls_server.auth``."""
    yield from _running(lambda: SmtpPeer(starttls=True, auth=("notifier", secrets.token_urlsafe(12)), ca=tls_ca))


@pytest.fixture
def http_server() -> Iterator[HttpPeer]:
    """An HTTP server answering 200 unless told otherwise with ``respond``."""
    yield from _running(HttpPeer)


@pytest.fixture
def sms_gateway() -> Iterator[SmsPeer]:
    """A Twilio-compatible gateway; credentials in ``account_sid`` / ``auth_token``, base URL in ``url``."""
    yield from _running(SmsPeer)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookPeer]:
    """A Standard Webhooks receiver with a fresh ``whsec_`` secret in ``webhook_receiver.secret``."""
    yield from _running(lambda: WebhookPeer(new_webhook_secret()))


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpPeer]:
    """An OTLP/HTTP trace receiver; its base URL (``otlp_receiver.url``) is an ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    yield from _running(OtlpPeer)
