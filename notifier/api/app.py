"""The application factory; its lifespan owns the database pool, the Redis client and the relay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

import notifier
from notifier import channels
from notifier.api.auth import ApiKeyMiddleware
from notifier.api.dashboard import dashboard
from notifier.api.errors import HANDLERS
from notifier.api.health import healthz, readyz
from notifier.api.notifications import NotificationController
from notifier.services import Enqueue, Notifications
from notifier.settings import Settings


def create_app(settings: Settings, broker: RedisBroker, enqueue: Enqueue, *, relay: bool = True) -> Litestar:
    """Build the API from ``settings``; ``enqueue`` puts delivery messages on ``broker``.

    ``relay=False`` leaves the outbox relay to other processes (tests drive it themselves).
    """
    service = Notifications(settings, enqueue, channels.configured(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        app.state.redis = redis.asyncio.Redis.from_url(settings.redis.url, socket_connect_timeout=2)
        app.state.notifications = service
        relay_task = asyncio.create_task(service.relay_forever()) if relay else None
        try:
            yield
        finally:
            if relay_task is not None:
                relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay_task
            await app.state.redis.aclose()
            await service.stop()
            broker.close()

    def provide_service() -> Notifications:
        return service

    middleware: list[Any] = []
    if settings.api.keys:
        middleware.append(ApiKeyMiddleware(settings.api.keys))

    return Litestar(
        route_handlers=[healthz, readyz, NotificationController, dashboard(broker)],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        lifespan=[lifespan],
        middleware=middleware,
        exception_handlers=HANDLERS,
        request_max_body_size=settings.api.max_body_size,
        openapi_config=OpenAPIConfig(
            title="notifier",
            version=notifier.__version__,
            description="Accept notifications over REST; deliver them by email, SMS, webhook or log.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,
        debug=False,
    )
