"""Contract tests of what ``notifier/worker/broker.py`` imitates of Dramatiq's Redis broker.

The fast enqueue (``ENQUEUE_MANY``) writes what ``RedisBroker.enqueue`` writes, and the batched
acknowledgement (``ACK_MANY``) removes what Dramatiq's ``ack`` removes, both through Dramatiq's
Redis key layout and message format, and ``_Consumer`` subclasses the private ``_RedisConsumer``.
These tests hold that against Dramatiq's own code on real Redis — a stock ``RedisBroker`` writes
the reference, a stock ``dramatiq.Worker`` consumes — so that a Dramatiq release that changes any
of it fails here, not in production. README: "Upgrading Dramatiq".
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.encoder import JSONEncoder
from dramatiq.middleware import Middleware
from packaging.requirements import Requirement
from packaging.version import Version

from notifier.worker.broker import ACK_BATCH, DELIVER_ACTOR, DELIVERY_QUEUE, _Consumer, enqueuer
from tests.conftest import _delete_namespace
from tests.e2e.conftest import wait_until

DELAYED = dq_name(DELIVERY_QUEUE)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_dramatiq_is_pinned_to_the_minor_version_these_tests_ran_on() -> None:
    [requirement] = [
        parsed
        for line in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
        if (parsed := Requirement(line)).name == "dramatiq"
    ]
    installed = Version(importlib.metadata.version("dramatiq"))
    upper = [spec for spec in requirement.specifier if spec.operator == "<"]
    assert installed in requirement.specifier
    assert upper, f"{requirement}: no upper bound; the fast path imitates one minor version of Dramatiq"
    assert [Version(spec.version) for spec in upper] == [Version(f"{installed.major}.{installed.minor + 1}")]


class Stamp(Middleware):
    """Stamps an option on every message enqueued, as a trace-propagation middleware does."""

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[None], delay: int) -> None:
        message.options["stamp"] = "stamped"


@pytest.fixture
def stock(redis_url: str, redis_namespace: str) -> Iterator[RedisBroker]:
    """Dramatiq's own Redis broker with its default middleware, in a namespace of its own."""
    namespace = f"{redis_namespace}stock"
    broker = RedisBroker(client=redis.Redis.from_url(redis_url), namespace=namespace)
    broker.declare_queue(DELIVERY_QUEUE)
    yield broker
    broker.close()
    _delete_namespace(redis_url, namespace)


class Runs:
    """An actor's calls: the notification ids it was given and when."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}

    def declare(self, broker: RedisBroker) -> dramatiq.Actor[[str], None]:
        def deliver(notification_id: str) -> None:
            with self.lock:
                self.at[notification_id] = time.time()

        return dramatiq.actor(deliver, broker=broker, actor_name=DELIVER_ACTOR, queue_name=DELIVERY_QUEUE)

    def done(self, ids: list[uuid.UUID]) -> bool:
        with self.lock:
            return all(str(i) in self.at for i in ids)


def leftovers(client: redis.Redis, namespace: str) -> dict[str, int]:
    """The message data (``*.msgs``) and unacknowledged ids (``__acks__.*``) Redis still holds."""
    found: dict[str, int] = {}
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        name = key.decode()
        if name.endswith(".msgs") and not name.endswith(".XQ.msgs"):
            found[name] = client.hlen(key)
        elif name.startswith(f"{namespace}:__acks__."):
            found[name] = client.scard(key)
    return {name: count for name, count in found.items() if count}


def layout(client: redis.Redis, namespace: str) -> dict[str, str]:
    """Every key under ``namespace`` (without it) and its Redis type."""
    return {
        key.decode().removeprefix(f"{namespace}:"): client.type(key).decode()
        for key in client.scan_iter(match=f"{namespace}:*", count=1000)
    }


def messages(client: redis.Redis, namespace: str, queue_name: str) -> list[tuple[bytes, bytes]]:
    """``(redis message id, stored data)`` of a queue's messages, in queue order."""
    ids = client.lrange(f"{namespace}:{queue_name}", 0, -1)
    data = client.hmget(f"{namespace}:{queue_name}.msgs", ids)
    assert client.hlen(f"{namespace}:{queue_name}.msgs") == len(ids)
    return list(zip(ids, data, strict=True))


def normalised(redis_id: bytes, data: bytes, span: tuple[int, int], delay: int | None) -> str:
    """A stored message, decoded, checked and rid of what differs between two enqueues (ids, times)."""
    fields: dict[str, Any] = json.loads(data)
    assert JSONEncoder().encode(fields) == data, "not byte for byte what Dramatiq's JSON encoder writes"
    before, after = span
    assert before <= fields["message_timestamp"] <= after
    uuid.UUID(fields["message_id"])
    assert fields["options"]["redis_message_id"] == redis_id.decode()
    fields.update(message_id="<id>", message_timestamp="<time>", args=["<notification>"])
    fields["options"]["redis_message_id"] = "<redis id>"
    if delay is not None:
        assert before + delay <= fields["options"]["eta"] <= after + delay
        fields["options"]["eta"] = "<eta>"
    return json.dumps(fields)  # keeps the order of the keys, which the comparison checks too


def test_the_fast_enqueue_writes_the_redis_structures_redis_broker_enqueue_writes(
    broker: RedisBroker, stock: RedisBroker
) -> None:
    for each in (broker, stock):
        each.add_middleware(Stamp())
    reference = Runs().declare(stock)
    before = int(time.time() * 1000)
    reference.send(str(uuid.uuid4()))
    reference.send_with_options(args=(str(uuid.uuid4()),), delay=60_000)
    enqueuer(broker)([(uuid.uuid4(), 0), (uuid.uuid4(), 60_000)])
    span = (before, int(time.time() * 1000))

    client = broker.client
    assert layout(client, broker.namespace) == layout(client, stock.namespace)
    assert layout(client, stock.namespace) == {
        "__heartbeats__": "zset",
        DELIVERY_QUEUE: "list",
        f"{DELIVERY_QUEUE}.msgs": "hash",
        DELAYED: "list",
        f"{DELAYED}.msgs": "hash",
    }
    for each in (broker, stock):
        [(member, score)] = client.zrange(f"{each.namespace}:__heartbeats__", 0, -1, withscores=True)
        assert member.decode() == each.broker_id
        assert span[0] <= score <= span[1]
    for queue_name, delay in ((DELIVERY_QUEUE, None), (DELAYED, 60_000)):
        [fast] = messages(client, broker.namespace, queue_name)
        [reference_message] = messages(client, stock.namespace, queue_name)
        assert normalised(*fast, span, delay) == normalised(*reference_message, span, delay)


def test_a_stock_worker_runs_and_acknowledges_what_the_fast_enqueue_wrote(
    broker: RedisBroker, stock: RedisBroker, redis_namespace: str
) -> None:
    consumer = RedisBroker(client=stock.client, namespace=redis_namespace)
    runs = Runs()
    runs.declare(consumer)
    due = [uuid.uuid4() for _ in range(3)]
    delayed = uuid.uuid4()
    enqueued_at = time.time()
    enqueuer(broker)([*((i, 0) for i in due), (delayed, 300)])

    worker = dramatiq.Worker(consumer, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: runs.done([*due, delayed]), 10, "the stock worker to run every message")
        assert runs.at[str(delayed)] >= enqueued_at + 0.3  # released at its eta, not before
        wait_until(lambda: not leftovers(consumer.client, redis_namespace), 5, "every message acknowledged")
    finally:
        worker.stop()
        consumer.close()
    assert leftovers(consumer.client, redis_namespace) == {}


def test_a_drain_with_batched_acknowledgements_leaves_no_message_and_no_unacknowledged_id(
    broker: RedisBroker,
) -> None:
    assert broker.consumer_class is _Consumer
    runs = Runs()
    runs.declare(broker)
    due = [uuid.uuid4() for _ in range(ACK_BATCH + 50)]  # a full batch of acknowledgements and a partial one
    delayed = [uuid.uuid4() for _ in range(5)]  # acknowledged on the delay queue once released
    enqueuer(broker)([*((i, 0) for i in due), *((i, 200) for i in delayed)])

    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: runs.done([*due, *delayed]), 20, "the worker to run every message")
        # While the worker runs: the held acknowledgements go out without waiting for its shutdown.
        wait_until(lambda: not leftovers(broker.client, broker.namespace), 5, "every message acknowledged")
    finally:
        worker.stop()
    assert leftovers(broker.client, broker.namespace) == {}
