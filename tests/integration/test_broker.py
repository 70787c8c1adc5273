"""The enqueue script puts on Redis what ``RedisBroker.enqueue`` does: Dramatiq's own consumers
take the messages, delayed ones from the delay queue with their ``eta``, with what the middleware
stamped on them before they were enqueued. (``test_broker_contract.py`` compares the Redis
structures with Dramatiq's own, field by field.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import dramatiq
import msgspec
import pytest
from dramatiq.broker import Broker, Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.middleware import Middleware

from notifier.settings import Settings
from notifier.worker.broker import (
    DELIVER_ACTOR,
    DELIVERY_QUEUE,
    ENQUEUE_BATCH,
    MAINTENANCE_CHANCE,
    AsyncEnqueuer,
    build,
    enqueuer,
)


def consume(broker: RedisBroker, queue_name: str, count: int) -> list[dramatiq.Message[None]]:
    consumer = broker.consume(queue_name, prefetch=count, timeout=100)
    taken: list[dramatiq.Message[None]] = []
    deadline = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            taken.append(message._message)
            consumer.ack(message)
    consumer.close()
    return taken


def test_messages_enqueued_in_batches_are_consumed_as_dramatiq_enqueued_them(broker: RedisBroker) -> None:
    due = [(uuid.uuid4(), 0) for _ in range(ENQUEUE_BATCH + 3)]  # more than one script call
    delayed = [(uuid.uuid4(), 60_000), (uuid.uuid4(), 120_000)]
    before = int(time.time() * 1000)
    enqueuer(broker)([*due[:2], delayed[0], *due[2:], delayed[1]])

    taken = consume(broker, DELIVERY_QUEUE, len(due))
    assert [m.args for m in taken] == [(str(i),) for i, _ in due]  # in order
    assert {m.actor_name for m in taken} == {DELIVER_ACTOR}
    assert all(m.kwargs == {} and "eta" not in m.options and m.options["redis_message_id"] for m in taken)
    assert len({m.message_id for m in taken}) == len(due)

    waiting = consume(broker, dq_name(DELIVERY_QUEUE), 2)
    assert [m.args for m in waiting] == [(str(i),) for i, _ in delayed]
    for message, (_, delay) in zip(waiting, delayed, strict=True):
        assert message.queue_name == dq_name(DELIVERY_QUEUE)
        assert before + delay <= message.options["eta"] <= int(time.time() * 1000) + delay


def test_the_api_enqueuer_writes_what_the_sync_one_does(broker: RedisBroker, settings: Settings) -> None:
    ids = [uuid.uuid4() for _ in range(3)]

    async def run() -> None:
        enqueue = AsyncEnqueuer(broker, settings.redis.url)
        await enqueue([(i, 0) for i in ids])
        await enqueue.aclose()

    asyncio.run(run())
    taken = consume(broker, DELIVERY_QUEUE, 3)
    assert [m.args for m in taken] == [(str(i),) for i in ids]
    assert all(m.queue_name == DELIVERY_QUEUE and m.actor_name == DELIVER_ACTOR for m in taken)


class Stamp(Middleware):
    """Stamps every message it sees enqueued, as a trace-propagation middleware stamps its context."""

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[None], delay: int) -> None:
        message.options["stamp"] = f"stamped {message.args[0]}"


def stored(broker: RedisBroker, queue_name: str) -> list[dict[str, Any]]:
    """The messages of ``queue_name`` as Redis holds them, decoded, in queue order."""
    namespace = broker.namespace
    ids = broker.client.lrange(f"{namespace}:{queue_name}", 0, -1)
    data = broker.client.hmget(f"{namespace}:{queue_name}.msgs", ids)
    return [msgspec.json.decode(item) for item in data]


@pytest.mark.parametrize("side", ["worker", "api"])
def test_what_a_middleware_stamps_before_enqueue_is_stored_with_the_message(
    broker: RedisBroker, settings: Settings, side: str
) -> None:
    broker.add_middleware(Stamp())
    items = [(uuid.uuid4(), 0), (uuid.uuid4(), 60_000)]
    if side == "worker":
        enqueuer(broker)(items)
    else:

        async def run() -> None:
            enqueue = AsyncEnqueuer(broker, settings.redis.url)
            await enqueue(items)
            await enqueue.aclose()

        asyncio.run(run())

    [due] = stored(broker, DELIVERY_QUEUE)
    [delayed] = stored(broker, dq_name(DELIVERY_QUEUE))
    for message, (notification_id, _) in zip((due, delayed), items, strict=True):
        assert message["options"]["stamp"] == f"stamped {notification_id}"
    taken = consume(broker, DELIVERY_QUEUE, 1)
    assert taken[0].options["stamp"] == f"stamped {items[0][0]}"


def unfinished(broker: RedisBroker, queue_name: str) -> tuple[int, int]:
    """Messages of ``queue_name`` Redis still holds (their data), and those this worker has not acknowledged."""
    namespace = broker.namespace
    return (
        broker.client.hlen(f"{namespace}:{queue_name}.msgs"),
        broker.client.scard(f"{namespace}:__acks__.{broker.broker_id}.{queue_name}"),
    )


def take_and_acknowledge(broker: RedisBroker, count: int) -> Consumer:
    """A consumer of the delivery queue that has taken ``count`` messages and acknowledged them."""
    consumer = broker.consume(DELIVERY_QUEUE, prefetch=10, timeout=100)
    taken = []
    deadline = time.monotonic() + 10
    while len(taken) < count and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            taken.append(message)
    assert len(taken) == count
    for message in taken:
        consumer.ack(message)
    return consumer


def test_acknowledgements_go_out_together_before_the_next_fetch(broker: RedisBroker) -> None:
    enqueuer(broker)([(uuid.uuid4(), 0) for _ in range(5)])
    consumer = take_and_acknowledge(broker, 5)
    assert unfinished(broker, DELIVERY_QUEUE) == (5, 5)  # held, not yet sent
    assert next(consumer) is None  # the queue is empty: the acknowledgements go out before the fetch
    assert unfinished(broker, DELIVERY_QUEUE) == (0, 0)
    consumer.close()


def test_acknowledgements_still_held_go_out_when_the_consumer_closes(broker: RedisBroker) -> None:
    enqueuer(broker)([(uuid.uuid4(), 0) for _ in range(3)])
    consumer = take_and_acknowledge(broker, 3)
    assert unfinished(broker, DELIVERY_QUEUE) == (3, 3)
    consumer.close()
    assert unfinished(broker, DELIVERY_QUEUE) == (0, 0)


def test_the_broker_runs_maintenance_at_the_chance_the_bench_chose(settings: Settings) -> None:
    """One command in a hundred: ``python -m bench.maintenance`` and the README say why."""
    built = build(settings)
    assert built.maintenance_chance == MAINTENANCE_CHANCE == 10_000
    built.close()
