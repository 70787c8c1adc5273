"""The application factory; its lifespan owns the database pool, the Redis client and the relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from litestar import Litestar
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send

import notifier
from notifier import channels
from notifier.api.auth import ApiKeyMiddleware
from notifier.api.dashboard import dashboard
from notifier.api.dead_letters import DeadLetterController
from notifier.api.docs import index, render_plugins, static_files
from notifier.api.errors import HANDLERS
from notifier.api.events import EventController
from notifier.api.health import healthz, readyz
from notifier.api.intake import check_request
from notifier.api.metrics import Gauges, QueueReader, count_requests, metrics_controller
from notifier.api.notifications import NotificationController
from notifier.api.rules import RuleController
from notifier.observability import metrics, tracing
from notifier.observability.tally import Tally
from notifier.services import AsyncEnqueue
from notifier.services.events import Events
from notifier.services.notifications import Notifications
from notifier.services.rules import Rules
from notifier.settings import Settings


def create_app(
    settings: Settings,
    broker: RedisBroker,
    enqueue: AsyncEnqueue,
    tick: Callable[[], None],
    queues: QueueReader,
) -> Litestar:
    """Build the API from ``settings``; ``enqueue`` puts delivery messages on ``broker``, ``tick``
    asks for a scheduler tick, ``queues`` reads the queues' depths for ``/metrics`` (which is there
    unless ``NOTIFIER_METRICS_ENABLED=false``)."""
    if settings.metrics.enabled:
        counts = metrics.install("api", counts=Tally()).counts  # added up at each scrape
    else:
        metrics.disable()
    configured = channels.configured(settings)
    service = Notifications(settings, enqueue, configured)
    rules = Rules(configured, tick, policy=service.policy, budget=settings.template.render_budget)
    events = Events(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        app.state.redis = redis.asyncio.Redis.from_url(settings.redis.url, socket_connect_timeout=2)
        app.state.notifications = service
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await service.stop()
            if hasattr(enqueue, "aclose"):
                await enqueue.aclose()
            broker.close()

    def provide_service() -> Notifications:
        return service

    def provide_rules() -> Rules:
        return rules

    def provide_events() -> Events:
        return events

    middleware: list[Any] = []
    handlers: list[Any] = []
    if settings.metrics.enabled:
        gauges = Gauges(service, queues, lambda: app.state.redis, settings.redis.namespace)
        public = not settings.metrics.auth or not settings.api.keys
        handlers.append(metrics_controller(gauges, public=public))
    if settings.api.keys:
        middleware.append(ApiKeyMiddleware(settings.api.keys, public_metrics=not settings.metrics.auth))

    plugins: list[Any] = []
    if tracing.enabled_now():
        plugins.append(_tracing_plugin())
        middleware.insert(0, _name_server_span)

    app = Litestar(
        plugins=plugins,
        route_handlers=[
            healthz,
            readyz,
            *handlers,
            NotificationController,
            DeadLetterController,
            RuleController,
            EventController,
            dashboard(broker, service),
            index,
            static_files(),
        ],
        dependencies={
            "service": Provide(provide_service, sync_to_thread=False),
            "rules": Provide(provide_rules, sync_to_thread=False),
            "events": Provide(provide_events, sync_to_thread=False),
        },
        lifespan=[lifespan],
        middleware=middleware,
        exception_handlers=HANDLERS,
        before_request=check_request,
        request_max_body_size=settings.api.max_body_size,
        openapi_config=OpenAPIConfig(
            title="notifier",
            version=notifier.__version__,
            description="Accept notifications over REST; deliver them by email, SMS, webhook or log.",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An API key from NOTIFIER_API_KEYS, as `Authorization: Bearer <key>`.",
                    )
                }
            ),
            security=[{"bearer": []}],
            render_plugins=render_plugins(),
        ),
        logging_config=None,
        debug=False,
    )
    if settings.metrics.enabled:
        count_requests(app, counts)
    return app


UNTRACED = ("/healthz", "/readyz", "/metrics")
"""Paths whose requests make no span: probes and scrapes."""


def _tracing_plugin() -> Any:
    """Litestar's OpenTelemetry plugin: a SERVER span per request, with the trace context the caller
    sent as its parent. It wraps the router, so it names the span by the method alone (never the raw
    path); :func:`_name_server_span`, once the route is known, adds the route template."""
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    def method_only(scope: Any) -> tuple[str, dict[str, str]]:
        return str(scope.get("method", "")), {}

    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            exclude=[f"^{path}$" for path in UNTRACED],
            scope_span_details_extractor=method_only,
            tracer_provider=tracing.provider(),
            exclude_spans=["receive", "send"],
        )
    )


def _name_server_span(app: ASGIApp) -> ASGIApp:
    """Names the request's SERVER span ``<METHOD> <route template>`` and sets ``http.route``: an app
    middleware runs after routing, where the scope has the template."""

    async def name(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            template = scope.get("path_template") or "/"  # the root route's template is ""
            tracing.rename(f"{scope.get('method', '')} {template}")
            tracing.annotate(**{"http.route": template})
        await app(scope, receive, send)

    return name
