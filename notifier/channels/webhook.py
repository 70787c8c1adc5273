"""The ``webhook`` channel: an HTTP POST of the notification as JSON, signed per Standard Webhooks.

The ``webhook-id`` is the notification id on every attempt, so a receiver can drop a redelivery.

The URL is the client's, so the channel guards the network it sends from (see
:mod:`notifier.domain.addresses`): it resolves the host itself, refuses the send if any address
the name resolves to is one the policy refuses, and connects to an address it checked, never
asking the resolver a second time (so a name that changes its answer between the check and the
connection, DNS rebinding, reaches nothing new). TLS still verifies the URL's own host name.
Redirects are not followed, and proxies from the environment are not used: the connection the
check judged is the one that carries the request.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import typing
from collections.abc import Callable
from datetime import UTC, datetime

import httpcore
import httpx
import msgspec
from standardwebhooks import Webhook

from notifier.channels import http
from notifier.domain import Notification
from notifier.domain.addresses import PUBLIC_ONLY, AddressPolicy, IPAddress, webhook_url
from notifier.errors import InvalidNotification, PermanentDeliveryError

Resolve = Callable[[str, int], list[IPAddress]]
"""Host and port to the addresses to try, in order (``getaddrinfo`` by default)."""


class AddressRefused(PermanentDeliveryError):
    """The webhook's host is, or resolves to, an address the policy refuses."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, each once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses ``policy`` allows.

    The host is resolved once per connection, every address is checked before any is tried, and
    the socket is opened to the checked address itself.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolve = resolve) -> None:
        self._policy = policy
        self._resolve = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            if reason := self._policy.explain(host, address, resolved=True):
                raise AddressRefused(f"refused: {reason}")
        deadline = None if timeout is None else time.monotonic() + timeout
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._inner.connect_tcp(str(address), port, remaining, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise AddressRefused("refused: webhooks do not connect to Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_transport(backend: httpcore.NetworkBackend) -> httpx.HTTPTransport:
    """httpx's own transport, its connection pool rebuilt on ``backend``.

    httpx 0.28 offers no public way to choose httpcore's network backend (encode/httpx#3749
    proposes one), so the transport's private pool is replaced; should httpx rename it, this
    fails here rather than send unguarded, and the channel's tests fail with it.
    """
    transport = httpx.HTTPTransport(trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        raise RuntimeError("httpx.HTTPTransport no longer keeps its pool in _pool: the webhook guard needs updating")
    transport._pool.close()
    transport._pool = httpcore.ConnectionPool(  # httpx's default limits
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=backend,
    )
    return transport


class WebhookChannel:
    """Signs with ``secret`` (none when empty); reaches only the addresses ``policy`` allows."""

    def __init__(
        self, secret: str, *, timeout: float, policy: AddressPolicy = PUBLIC_ONLY, resolver: Resolve = resolve
    ) -> None:
        self._signer = Webhook(secret) if secret else None
        self._policy = policy
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            transport=guarded_transport(GuardedBackend(policy, resolver)),
        )

    @staticmethod
    def payload(notification: Notification, now: datetime) -> bytes:
        data = {
            "id": notification.id,
            "subject": notification.subject,
            "body": notification.body,
            "metadata": notification.metadata,
            "send_at": notification.send_at,
            "created_at": notification.created_at,
        }
        return msgspec.json.encode({"type": "notification", "timestamp": now, "data": data})

    def send(self, notification: Notification) -> str | None:
        try:
            # Checked again here: the API checked it too, but a rule renders its recipients later,
            # and a row written before this check existed was never checked at all.
            webhook_url(notification.recipient, self._policy)
        except InvalidNotification as exc:
            raise AddressRefused(f"refused: recipient {exc.reason}") from None
        now = datetime.now(UTC).replace(microsecond=0)
        body = self.payload(notification, now)
        msg_id = str(notification.id)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(msg_id, now, body.decode())
        http.post(self._http, notification.recipient, content=body, headers=headers)
        return msg_id

    def close(self) -> None:
        self._http.close()
