"""``GET /metrics``: the API process's Prometheus metrics, and the gauges read at each scrape.

:class:`RequestMetrics` (Litestar's Prometheus middleware's families, counted around the app)
counts requests per route template (``notifier_api_*``); the families of
:mod:`notifier.observability.metrics` count what the API accepted. At each scrape the controller
also reads, without blocking the event loop, the queues and the dead-letter stream from Redis and
the notifications by status from PostgreSQL (that one cached for :data:`STATUS_CACHE_SECONDS`). A
backend that does not answer within :data:`BACKEND_TIMEOUT` leaves its families out of that scrape
(``notifier_backend_up`` says which); the scrape still answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import redis.asyncio
from litestar import Litestar, Response, get
from litestar.enums import ScopeType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import SecurityRequirement
from litestar.plugins.prometheus import PrometheusController
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from notifier.api.errors import problems
from notifier.api.health import PUBLIC
from notifier.observability import metrics
from notifier.observability.tally import Counts
from notifier.services.notifications import Notifications

logger = logging.getLogger("notifier.api.metrics")

PATH = "/metrics"
BACKEND_TIMEOUT = 2.0
"""Seconds a scrape waits for Redis, and for PostgreSQL, at most."""
STATUS_CACHE_SECONDS = 5.0

QueueReader = Callable[[redis.asyncio.Redis, str], Awaitable[tuple[dict[str, metrics.QueueDepth], int]]]
"""Reads every queue's depth and the dead-letter stream's length from Redis, in a namespace
(:func:`notifier.worker.broker.queue_depths`)."""


APP_NAME = "notifier"
PREFIX = "notifier_api"


class RequestMetrics:
    """Counts each HTTP request, as Litestar's Prometheus middleware does and with its family names:
    ``notifier_api_requests_total``, ``…_request_duration_seconds`` and ``…_requests_error_total``
    (5xx) by method, route template and status; ``…_requests_in_progress`` by method.

    It wraps the Litestar app's ASGI handler (:func:`count_requests`), around its routing and its
    middleware, rather than being one of them: once any middleware is configured, Litestar puts an
    exception-handling layer under it on every route, and with Litestar's middleware machinery that
    cost ``POST /notify`` 7.5 % of its throughput (``bench/README.md``). The route template is the
    one routing left in the scope; a request no route matched is not counted (a raw path is never a
    label), nor are scrapes of ``/metrics``. Refused requests (401, 413, 422) are counted, under
    their route. Its counts are noted on the API's tally (:mod:`notifier.observability.tally`),
    added up at each scrape.
    """

    _families: ClassVar[dict[str, tuple[Counter, Histogram, Gauge, Counter]]] = {}

    def __init__(self, app: ASGIApp, counts: Counts, *, prefix: str = PREFIX, app_name: str = APP_NAME) -> None:
        self.app = app
        if prefix not in RequestMetrics._families:  # once per process: the families live on the default registry
            labels = ["method", "path", "status_code", "app_name"]
            RequestMetrics._families[prefix] = (
                Counter(f"{prefix}_requests_total", "Total requests", labels),
                Histogram(f"{prefix}_request_duration_seconds", "Request duration, in seconds", labels),
                Gauge(f"{prefix}_requests_in_progress", "Requests in progress", ["method", "app_name"]),
                Counter(f"{prefix}_requests_error_total", "Requests answered with a 5xx status", labels),
            )
        self._requests, self._durations, self._in_progress, self._errors = RequestMetrics._families[prefix]
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter | None]] = {}
        self._running: dict[str, Gauge] = {}
        self._name = app_name
        self._count = counts.count
        self._observe = counts.observe

    def _new_series(self, method: str, path: str, status: int) -> tuple[Counter, Histogram, Counter | None]:
        labels = (method, path, str(status), self._name)
        series = self._series[method, path, status] = (
            self._requests.labels(*labels),
            self._durations.labels(*labels),
            self._errors.labels(*labels) if status >= HTTP_500_INTERNAL_SERVER_ERROR else None,
        )
        return series

    def _new_running(self, method: str) -> Gauge:
        running = self._running[method] = self._in_progress.labels(method, self._name)
        return running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] == PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        status = HTTP_500_INTERNAL_SERVER_ERROR

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        count = self._count
        running = self._running.get(method) or self._new_running(method)
        count(running, 1)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            count(running, -1)
            template = scope.get("path_template")
            if template is not None:
                path = template or "/"  # the root route's template is ""
                requests, durations, errors = self._series.get((method, path, status)) or self._new_series(
                    method, path, status
                )
                count(requests, 1)
                self._observe(durations, time.perf_counter() - started)
                if errors is not None:
                    count(errors, 1)


def count_requests(app: Litestar, counts: Counts) -> None:
    """Count ``app``'s requests (:class:`RequestMetrics`) on ``counts``, around its ASGI handler,
    which ``Litestar.__call__`` calls for every request after the lifespan."""
    app.asgi_handler = RequestMetrics(app.asgi_handler, counts)


class Backend:
    """One backing service the scrape reads, remembered up or down so that a change is logged once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True

    async def read(self, probe: Awaitable[Any]) -> Any | None:
        try:
            found = await asyncio.wait_for(probe, timeout=BACKEND_TIMEOUT)
        except Exception as exc:
            if self.up:
                logger.warning(
                    "metrics: %s did not answer; its gauges are left out until it does",
                    self.name,
                    extra={"error": repr(exc)},
                )
            self.up = False
            return None
        if not self.up:
            logger.info("metrics: %s answers again", self.name)
        self.up = True
        return found


class Gauges:
    """The gauges read at scrape: the queues and dead letters from Redis, the statuses from PostgreSQL."""

    def __init__(
        self, service: Notifications, queues: QueueReader, client: Callable[[], redis.asyncio.Redis], namespace: str
    ) -> None:
        self.service = service
        self.queues = queues
        self.client = client
        self.namespace = namespace
        self.redis = Backend("redis")
        self.postgresql = Backend("postgresql")
        self._statuses: dict[str, int] | None = None
        self._statuses_at = -STATUS_CACHE_SECONDS
        self._lock: asyncio.Lock | None = None

    async def statuses(self) -> dict[str, int] | None:
        if self._lock is None:  # created on first use, inside the event loop
            self._lock = asyncio.Lock()
        async with self._lock:  # one query for concurrent scrapes
            if time.monotonic() - self._statuses_at >= STATUS_CACHE_SECONDS or not self.postgresql.up:
                counts = await self.postgresql.read(self.service.counts())
                self._statuses = None if counts is None else {str(s): n for s, n in counts.items()}
                self._statuses_at = time.monotonic()
        return self._statuses

    async def exposition(self) -> bytes:
        """The text exposition of the process's registry and of the gauges read now."""
        queues, statuses = await asyncio.gather(
            self.redis.read(self.queues(self.client(), self.namespace)), self.statuses()
        )
        live = metrics.live_families(
            queues=None if queues is None else queues[0],
            dead_letters=None if queues is None else queues[1],
            statuses=statuses,
            up={"redis": self.redis.up, "postgresql": self.postgresql.up},
        )
        metrics.add_up()
        return generate_latest(metrics.Chain(REGISTRY, live))


def metrics_controller(gauges: Gauges, *, public: bool) -> type[PrometheusController]:
    """``GET /metrics``, public (``public``) or behind the API keys."""
    security: list[SecurityRequirement] | None = PUBLIC if public else None

    class MetricsController(PrometheusController):
        path = "/"  # the handler names the whole path, which the API key middleware's exclusion matches

        @get(
            PATH,
            summary="Prometheus metrics",
            tags=["health"],
            security=security,
            media_type=CONTENT_TYPE_LATEST,
            responses={
                200: ResponseSpec(str, description="Prometheus text format 0.0.4.", media_type=CONTENT_TYPE_LATEST),
                **({422: problems()[422]} if public else problems()),
            },
        )
        async def get(self) -> Response[bytes]:
            """Every family this API process exports (requests, accepted notifications, queues, dead
            letters, notifications by status) in Prometheus's text format."""
            return Response(await gauges.exposition(), media_type=CONTENT_TYPE_LATEST)

    return MetricsController
