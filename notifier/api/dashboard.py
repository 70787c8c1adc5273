"""The Dramatiq dashboard, for operators: queues, delayed and dead-lettered messages, requeue.

A WSGI app, served through ``a2wsgi`` under ``/dramatiq`` behind the same API keys as the rest.
"""

from __future__ import annotations

from typing import Any

from a2wsgi import WSGIMiddleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq_dashboard import DashboardApp
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

PREFIX = "/dramatiq"


def dashboard(broker: RedisBroker) -> ASGIRouteHandler:
    wsgi: Any = WSGIMiddleware(DashboardApp(broker=broker, prefix=PREFIX))

    @asgi(PREFIX, is_mount=True, copy_scope=True, include_in_schema=False)
    async def dramatiq_dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        await wsgi(scope, receive, send)

    return dramatiq_dashboard
