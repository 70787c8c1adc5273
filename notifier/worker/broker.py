"""Builds the Redis broker and its middleware, and enqueues delivery messages on it.

Every process builds its broker here, from its settings: the worker (``app``, which also makes
it Dramatiq's global broker before declaring the actors) and the API (to enqueue and to show the
dashboard). Both agree on the queue and actor names below.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import msgspec
import redis
import redis.asyncio
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name, xq_name
from dramatiq.errors import ConnectionClosed
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

from notifier.observability import tracing
from notifier.observability.metrics import QueueDepth
from notifier.services import Enqueue
from notifier.settings import Settings

DELIVERY_QUEUE = "notifier.deliver"
DELIVER_ACTOR = "deliver_notification"
SCHEDULE_QUEUE = "notifier.schedule"
FIRE_SCHEDULES_ACTOR = "fire_schedules"

MAINTENANCE_CHANCE = 10_000
"""Out of a million Redis commands, those that also run Dramatiq's maintenance (its default: 1,000).

Maintenance puts a dead worker's unacknowledged messages back on their queue; with a worker process
fetching from each queue ten times a second when idle, one in a hundred does so about 10 s after
the heartbeat timeout. It costs a few microseconds when no worker died, but for each dead worker
it walks every key of the database (``KEYS``): 20 dead workers took 0.4 ms, 26 ms in a database of
10,000 keys, a hundredth of which is what the average command pays (``python -m bench.maintenance``;
README, "Upgrading Dramatiq")."""

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
        # First: its before hooks run before the others' and its after hooks after them, so the
        # worker's CONSUMER span spans the whole of a message's processing (retries included).
        tracing.Messaging(),
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
    broker = Broker(
        client=client,
        namespace=settings.redis.namespace,
        middleware=middleware,
        # A worker silent this long is dead: its unacknowledged messages go back to the queue
        # during maintenance, which runs on one Redis command in a hundred.
        heartbeat_timeout=int(settings.worker.heartbeat_timeout * 1000),
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    broker.declare_queue(DELIVERY_QUEUE)
    broker.declare_queue(SCHEDULE_QUEUE)
    return broker


ACK_BATCH = 200
"""Acknowledgements a worker's consumer holds at most before it sends them."""

ACK_DELAY = 0.02
"""Seconds a worker's consumer holds an acknowledgement at most before it sends it."""

ACK_MANY = """
-- keys = [namespace], args = [timestamp, worker id, queue name, message id, message id, ...]
-- What the "ack" command of Dramatiq's dispatch script does for one message (record the worker's
-- heartbeat, drop the message from the worker's unacknowledged set and its data), for many.
local acks = KEYS[1] .. ":__acks__." .. ARGV[2] .. "." .. ARGV[3]
local messages = KEYS[1] .. ":" .. ARGV[3] .. ".msgs"
redis.call("zadd", KEYS[1] .. ":__heartbeats__", ARGV[1], ARGV[2])
for i = 4, #ARGV do
    if redis.call("srem", acks, ARGV[i]) > 0 then
        redis.call("hdel", messages, ARGV[i])
    end
end
"""


class Broker(RedisBroker):
    """Dramatiq's Redis broker, whose consumers acknowledge messages in batches (:class:`_Consumer`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.ack_many = self.client.register_script(ACK_MANY)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _Consumer


class _Consumer(_RedisConsumer):
    """Sends the acknowledgements of the messages its worker threads finished together: one script
    call for up to :data:`ACK_BATCH`, at most :data:`ACK_DELAY` late, and before any fetch.

    Dramatiq sends one script call a message, from the worker thread, which cost about as much CPU
    as a delivery's database work. An acknowledgement lost with the process only means that the
    message is delivered again once the worker counts as dead; the claim finds the notification
    taken and drops it.
    """

    def __init__(self, broker: Broker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.lock = threading.Lock()
        self.unacked: list[str] = []
        self.oldest = 0.0

    def ack(self, message: MessageProxy) -> None:
        """Called by the worker threads: the message is done, its acknowledgement goes out soon."""
        with self.lock:
            if not self.unacked:
                self.oldest = time.monotonic()
            self.unacked.append(message.options["redis_message_id"])
            self.queued_message_ids.discard(message.message_id)
            full = len(self.unacked) >= ACK_BATCH
        if full:
            self.send_acks()

    def send_acks(self) -> None:
        with self.lock:
            ids, self.unacked = self.unacked, []
        if not ids:
            return
        try:
            self.broker.ack_many(
                keys=[self.broker.namespace], args=[current_millis(), self.broker.broker_id, self.queue_name, *ids]
            )
        except redis.ConnectionError as exc:
            with self.lock:
                self.unacked[:0] = ids
            raise ConnectionClosed(exc) from None

    def __next__(self) -> MessageProxy | None:
        if self.unacked and (not self.message_cache or time.monotonic() - self.oldest >= ACK_DELAY):
            self.send_acks()
        return super().__next__()  # type: ignore[no-untyped-call,no-any-return]

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # lost: see the class's doc
            self.send_acks()
        super().close()


def dead_letter_stream(settings: Settings) -> str:
    """The capped Redis Stream every final failure is appended to: ``notifier:dead-letters`` by default."""
    return f"{settings.redis.namespace}:{DEAD_LETTER_STREAM}"


QUEUES = (DELIVERY_QUEUE, SCHEDULE_QUEUE)


_message_times = msgspec.json.Decoder(dict[str, Any])


async def queue_depths(client: redis.asyncio.Redis, namespace: str) -> tuple[dict[str, QueueDepth], int]:
    """Every queue's :class:`~notifier.observability.metrics.QueueDepth`, and the dead-letter stream's
    length: two round trips, read
    from Dramatiq's key layout (``<ns>:<queue>``, ``.DQ``, ``.XQ``, ``.msgs``, ``__acks__``)."""
    first = client.pipeline(transaction=False)
    for queue in QUEUES:
        first.llen(f"{namespace}:{queue}")
        first.llen(f"{namespace}:{dq_name(queue)}")
        first.zcard(f"{namespace}:{xq_name(queue)}")
        first.lindex(f"{namespace}:{queue}", 0)
    first.zrange(f"{namespace}:__heartbeats__", 0, -1)
    first.xlen(f"{namespace}:{DEAD_LETTER_STREAM}")
    answers = await first.execute()
    *per_queue, workers, dead_letters = answers
    second = client.pipeline(transaction=False)
    for position, queue in enumerate(QUEUES):
        second.hget(f"{namespace}:{queue}.msgs", per_queue[position * 4 + 3] or b"")
        for worker in workers:
            second.scard(f"{namespace}:__acks__.{worker.decode()}.{dq_name(queue)}")
    held = await second.execute()
    now_ms = current_millis()
    depths: dict[str, QueueDepth] = {}
    for position, queue in enumerate(QUEUES):
        ready, waiting, dead, _ = per_queue[position * 4 : position * 4 + 4]
        start = position * (len(workers) + 1)
        oldest, fetched = held[start], held[start + 1 : start + 1 + len(workers)]
        age = 0.0
        if ready and oldest is not None:
            message = _message_times.decode(oldest)
            since = max(message.get("message_timestamp") or 0, (message.get("options") or {}).get("eta") or 0)
            age = max(0.0, (now_ms - since) / 1000)
        depths[queue] = QueueDepth(ready=ready, delayed=waiting + sum(fetched), dead=dead, oldest_ready_age=age)
    return depths, dead_letters


def ticker(broker: RedisBroker) -> Callable[[], None]:
    """Sends one ``fire_schedules`` message now, outside periodiq's minute ticks."""

    def tick() -> None:
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=SCHEDULE_QUEUE, actor_name=FIRE_SCHEDULES_ACTOR, args=(), kwargs={}, options={}
        )
        broker.enqueue(message)

    return tick


ENQUEUE_BATCH = 500
"""Messages a script call enqueues at most (well under Redis's Lua ``unpack`` limit)."""

ENQUEUE_MANY = """
-- keys = [namespace], args = [timestamp, sender id, queue name, id1, message1, id2, message2, ...]
-- What the "enqueue" command of Dramatiq's dispatch script does for one message (store it in
-- the queue's hash, push its id on the queue, record the sender's heartbeat), for many at once.
local queue = KEYS[1] .. ":" .. ARGV[3]
redis.call("zadd", KEYS[1] .. ":__heartbeats__", ARGV[1], ARGV[2])
local ids = {}
for i = 4, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
end
redis.call("hset", queue .. ".msgs", unpack(ARGV, 4))
redis.call("rpush", queue, unpack(ids))
"""

_encode = msgspec.json.Encoder().encode


class _Batch:
    """``deliver_notification`` messages as ``RedisBroker.enqueue`` makes them (a Redis message id,
    the delay queue and an ``eta`` when delayed), for :data:`ENQUEUE_MANY`.

    Like ``RedisBroker.enqueue``, it runs the middleware's ``before_enqueue`` before it encodes a
    message, so what a middleware stamps on the message there (its options) is stored with it.
    :meth:`traced` gives each message its PRODUCER span and ``traceparent`` (tracing's middleware
    leaves the messages of a batch to it).
    """

    def __init__(self, broker: RedisBroker, items: Sequence[tuple[uuid.UUID, int]]) -> None:
        self.broker = broker
        self.now = int(time.time() * 1000)
        self.messages: list[tuple[dramatiq.Message[None], int | None]] = []
        for notification_id, delay_ms in items:
            delay = delay_ms or None
            queue_name = DELIVERY_QUEUE if delay is None else dq_name(DELIVERY_QUEUE)
            options: dict[str, Any] = {"redis_message_id": str(uuid.uuid4())}
            if delay is not None:
                options["eta"] = self.now + delay
            message: dramatiq.Message[None] = dramatiq.Message(
                queue_name=queue_name,
                actor_name=DELIVER_ACTOR,
                args=(str(notification_id),),
                kwargs={},
                options=options,
            )
            self.messages.append((message, delay))

    def traced(self) -> contextlib.AbstractContextManager[None]:
        """Around the script calls: see :func:`notifier.observability.tracing.producing`."""
        return tracing.producing([message for message, _ in self.messages] if tracing.enabled_now() else ())

    def before(self) -> list[list[Any]]:
        """Emits ``before_enqueue`` for every message, then encodes them: the arguments of one
        :data:`ENQUEUE_MANY` call per queue."""
        for message, delay in self.messages:
            self.broker.emit_before("enqueue", message, delay)
        queues: dict[str, list[str | bytes]] = {}
        for message, _ in self.messages:
            # Dramatiq's JSON encoder writes the same fields; msgspec is several times faster.
            queues.setdefault(message.queue_name, []).extend(
                (message.options["redis_message_id"], _encode(message.asdict()))
            )
        return [[self.now, self.broker.broker_id, queue, *pairs] for queue, pairs in queues.items()]

    def after(self) -> None:
        for message, delay in self.messages:
            self.broker.emit_after("enqueue", message, delay)


def _chunks(items: Sequence[tuple[uuid.UUID, int]]) -> list[Sequence[tuple[uuid.UUID, int]]]:
    return [items[start : start + ENQUEUE_BATCH] for start in range(0, len(items), ENQUEUE_BATCH)]


def enqueuer(broker: RedisBroker) -> Enqueue:
    """An :data:`~notifier.services.Enqueue` that puts ``deliver_notification`` messages on ``broker``:
    one :data:`ENQUEUE_MANY` call (one round trip) per queue and :data:`ENQUEUE_BATCH` messages."""
    script = broker.client.register_script(ENQUEUE_MANY)

    def enqueue(items: Sequence[tuple[uuid.UUID, int]]) -> None:
        for chunk in _chunks(items):
            batch = _Batch(broker, chunk)
            with batch.traced():
                for args in batch.before():
                    script(keys=[broker.namespace], args=args)
            batch.after()

    return enqueue


class AsyncEnqueuer:
    """An :data:`~notifier.services.AsyncEnqueue` for the API: enqueues from the event loop through
    ``redis.asyncio`` (no request waits for a thread), like :func:`enqueuer`."""

    def __init__(self, broker: RedisBroker, url: str) -> None:
        self.broker = broker
        self.client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        self.script = self.client.register_script(ENQUEUE_MANY)

    async def __call__(self, items: Sequence[tuple[uuid.UUID, int]]) -> None:
        for chunk in _chunks(items):
            batch = _Batch(self.broker, chunk)
            with batch.traced():
                for args in batch.before():
                    await self.script(keys=[self.broker.namespace], args=args)
            batch.after()

    async def aclose(self) -> None:
        await self.client.aclose()
