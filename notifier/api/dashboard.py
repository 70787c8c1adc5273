"""The Dramatiq dashboard, for operators: queues, delayed and dead-lettered messages, requeue.

The dashboard is ``dramatiq_dashboard`` 0.4.0, vendored under ``notifier/vendor`` (LGPL; its
README there says why and what changed), a WSGI app served through ``a2wsgi`` under ``/dramatiq``
behind the same API keys as the rest.
"""

from __future__ import annotations

from typing import Any

from a2wsgi import WSGIMiddleware
from dramatiq.brokers.redis import RedisBroker
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from notifier.vendor.dramatiq_dashboard import DashboardApp

PREFIX = "/dramatiq"


def dashboard(broker: RedisBroker) -> ASGIRouteHandler:
    app: Any = DashboardApp(broker=broker, prefix=PREFIX)
    wsgi: Any = WSGIMiddleware(app)

    @asgi(PREFIX, is_mount=True, copy_scope=True, include_in_schema=False)
    async def dramatiq_dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        await wsgi(scope, receive, send)

    return dramatiq_dashboard
