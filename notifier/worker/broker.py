"""Builds the Redis broker and its middleware, and enqueues delivery messages on it.

Every process builds its broker here, from its settings: the worker (``actors``, which also makes
it Dramatiq's global broker before declaring the actors) and the API (to enqueue and to show the
dashboard). Both agree on the queue and actor names below.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import redis
import redis.asyncio
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from periodiq import PeriodiqMiddleware

from notifier.services import Enqueue
from notifier.settings import Settings

DELIVERY_QUEUE = "notifier.deliver"
DELIVER_ACTOR = "deliver_notification"
SCHEDULE_QUEUE = "notifier.schedule"
FIRE_SCHEDULES_ACTOR = "fire_schedules"

MAINTENANCE_CHANCE = 100_000
"""Out of a million Redis commands (Dramatiq's default: 1,000)."""

DEAD_LETTER_STREAM = "dead-letters"
DEAD_LETTER_STREAM_LENGTH = 100_000

INFRASTRUCTURE_RETRIES = 10
"""Retries beyond the delivery attempts, for failures outside the channel (PostgreSQL away)."""


def build(settings: Settings) -> RedisBroker:
    retry = settings.retry
    client = redis.Redis.from_url(
        settings.redis.url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )
    # Every provider call is bounded by NOTIFIER_DELIVERY_TIMEOUT; the time limit is the backstop.
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=int(settings.time_limit * 1000)),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        Retries(
            max_retries=max(settings.policy(c).max_attempts for c in ("email", "sms", "webhook", "log"))
            + INFRASTRUCTURE_RETRIES,
            min_backoff=int(retry.min_backoff * 1000),
            max_backoff=int(retry.max_backoff * 1000),
        ),
        # Lets actors declare `periodic=` and drops a tick message that waited over 30 s: the
        # tick works from the database's state, so the next one catches up.
        PeriodiqMiddleware(skip_delay=30),
    ]
    broker = RedisBroker(
        client=client,
        namespace=settings.redis.namespace,
        middleware=middleware,
        # A worker silent this long is dead: its unacknowledged messages go back to the queue
        # during maintenance, which runs on one Redis command in ten.
        heartbeat_timeout=int(settings.worker.heartbeat_timeout * 1000),
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    broker.declare_queue(DELIVERY_QUEUE)
    broker.declare_queue(SCHEDULE_QUEUE)
    return broker


def dead_letter_stream(settings: Settings) -> str:
    """The capped Redis Stream every final failure is appended to: ``notifier:dead-letters`` by default."""
    return f"{settings.redis.namespace}:{DEAD_LETTER_STREAM}"


def ticker(broker: RedisBroker) -> Callable[[], None]:
    """Sends one ``fire_schedules`` message now, outside periodiq's minute ticks."""

    def tick() -> None:
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=SCHEDULE_QUEUE, actor_name=FIRE_SCHEDULES_ACTOR, args=(), kwargs={}, options={}
        )
        broker.enqueue(message)

    return tick


PIPELINE_BATCH = 500


def _message(notification_id: uuid.UUID) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=DELIVERY_QUEUE, actor_name=DELIVER_ACTOR, args=(str(notification_id),), kwargs={}, options={}
    )


def enqueuer(broker: RedisBroker) -> Enqueue:
    """An :data:`~notifier.services.Enqueue` that puts ``deliver_notification`` messages on ``broker``.

    One message is enqueued as Dramatiq does it; several go through a Redis pipeline, in batches
    of :data:`PIPELINE_BATCH`, running the broker's own enqueue script for each (one round trip
    per batch instead of one per message).
    """

    def enqueue(items: Sequence[tuple[uuid.UUID, int]]) -> None:
        if len(items) == 1:
            notification_id, delay_ms = items[0]
            broker.enqueue(_message(notification_id), delay=delay_ms or None)
            return
        for start in range(0, len(items), PIPELINE_BATCH):
            _enqueue_pipelined(broker, [(_message(i), d or None) for i, d in items[start : start + PIPELINE_BATCH]])

    return enqueue


def _dispatch_args(
    broker: RedisBroker, original: dramatiq.Message[None], delay: int | None, now: int
) -> tuple[dramatiq.Message[None], list[Any]]:
    """What ``RedisBroker.enqueue`` prepares for one message (its Redis id, its eta), and the
    arguments of the broker's dispatch script that enqueues it."""
    queue_name = original.queue_name
    options: dict[str, Any] = {"redis_message_id": str(uuid.uuid4())}
    if delay is not None:
        queue_name = dq_name(queue_name)
        options["eta"] = now + delay
    msg = original.copy(queue_name=queue_name, options=options)
    args = [
        "enqueue",
        now,
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        0,  # no maintenance from here; the consumers' own commands do it
        broker._max_unpack_size(),
        msg.options["redis_message_id"],
        msg.encode(),
    ]
    return msg, args


def _enqueue_pipelined(broker: RedisBroker, batch: list[tuple[dramatiq.Message[None], int | None]]) -> None:
    """What ``RedisBroker.enqueue`` does per message (ids, eta, middleware hooks), in one pipeline."""
    script = broker.scripts["dispatch"]
    now = int(time.time() * 1000)
    prepared = []
    with broker.client.pipeline(transaction=False) as pipe:
        for original, delay in batch:
            msg, args = _dispatch_args(broker, original, delay, now)
            broker.emit_before("enqueue", msg, delay)
            script(keys=[broker.namespace], args=args, client=pipe)
            prepared.append((msg, delay))
        pipe.execute()
    for msg, delay in prepared:
        broker.emit_after("enqueue", msg, delay)


class AsyncEnqueuer:
    """An :data:`~notifier.services.AsyncEnqueue` for the API: enqueues from the event loop through
    ``redis.asyncio``, running the broker's own dispatch script, so no request waits for a thread
    (and a batch is one pipelined round trip)."""

    def __init__(self, broker: RedisBroker, url: str) -> None:
        self.broker = broker
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        self.script = self.client.register_script(broker.scripts["dispatch"].script)

    async def __call__(self, items: Sequence[tuple[uuid.UUID, int]]) -> None:
        now = int(time.time() * 1000)
        keys = [self.broker.namespace]
        for start in range(0, len(items), PIPELINE_BATCH):
            batch = items[start : start + PIPELINE_BATCH]
            delays = [d or None for _, d in batch]
            prepared = [
                _dispatch_args(self.broker, _message(i), d, now) for (i, _), d in zip(batch, delays, strict=True)
            ]
            for (msg, _), delay in zip(prepared, delays, strict=True):
                self.broker.emit_before("enqueue", msg, delay)
            if len(prepared) == 1:
                await self.script(keys=keys, args=prepared[0][1])
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for _, args in prepared:
                        await self.script(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            for (msg, _), delay in zip(prepared, delays, strict=True):
                self.broker.emit_after("enqueue", msg, delay)

    async def aclose(self) -> None:
        await self.client.aclose()
