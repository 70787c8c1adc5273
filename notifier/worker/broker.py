"""Builds the Redis broker and its middleware, and sets it as Dramatiq's broker.

This is the one module that does work at import time: Dramatiq binds actors to the global broker
when they are declared, so ``notifier.worker.actors`` imports this module first.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

from notifier import settings as settings_module
from notifier.observability import configure_logging
from notifier.settings import Settings

DELIVERY_QUEUE = "notifier.deliver"

INFRASTRUCTURE_RETRIES = 10
"""Retries beyond the delivery attempts, for failures outside the channel (PostgreSQL away)."""


def build(settings: Settings) -> RedisBroker:
    retry = settings.retry
    client = redis.Redis.from_url(
        settings.redis.url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )
    # Every provider call is bounded by NOTIFIER_DELIVERY_TIMEOUT; the time limit is the backstop.
    time_limit_ms = int((settings.delivery.timeout * 3 + 5) * 1000)
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=retry.max_attempts + INFRASTRUCTURE_RETRIES,
            min_backoff=int(retry.min_backoff * 1000),
            max_backoff=int(retry.max_backoff * 1000),
        ),
    ]
    return RedisBroker(client=client, namespace=settings.redis.namespace, middleware=middleware)


settings = settings_module.load()
configure_logging(settings.log.level)
broker = build(settings)
dramatiq.set_broker(broker)
