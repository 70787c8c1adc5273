"""Bearer API keys: every route but health, readiness, metrics (unless ``NOTIFIER_METRICS_AUTH=true``)
and the vendored static assets needs ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from notifier.api.errors import Problem, ProblemType

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
PUBLIC_PREFIXES = ("/static/",)

UNAUTHORIZED = msgspec.json.encode(
    Problem(
        type=ProblemType.UNAUTHORIZED.uri,
        title=ProblemType.UNAUTHORIZED.spec.title,
        status=401,
        detail="send Authorization: Bearer <API key>",
    )
)


class ApiKeyMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = (*(f"^{p}$" for p in PUBLIC_PATHS), *(f"^{p}" for p in PUBLIC_PREFIXES))

    def __init__(self, keys: Sequence[str], *, public_metrics: bool = True) -> None:
        self.keys = [key.encode() for key in keys]
        if not public_metrics:
            self.exclude_path_pattern = tuple(p for p in self.exclude_path_pattern if p != "^/metrics$")

    def authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                token = token.strip()
                # compare_digest against every key, so timing does not tell which prefix matched
                return any([hmac.compare_digest(token, key) for key in self.keys])
        return False

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if self.authorized(scope):
            await next_app(scope, receive, send)
            return
        body = UNAUTHORIZED
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"www-authenticate", b'Bearer realm="notifier"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        await send(start)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(end)
