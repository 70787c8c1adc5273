"""The actors on Dramatiq's ``StubBroker``, run by a ``dramatiq.Worker``, over a real PostgreSQL and
Redis: how an attempt's outcome becomes Dramatiq's (a retry after the channel's backoff, a resend
of an early message, a dead letter), and that importing the worker's modules does nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry

from notifier import settings as settings_module
from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel, NewNotification
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.observability import metrics
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from notifier.worker import app
from notifier.worker.actors import DeadLetterStream
from notifier.worker.broker import DELIVERY_QUEUE, build, dead_letter_stream
from tests.accepting import accept
from tests.conftest import notifier_env

MIN_BACKOFF = 0.2
MAX_BACKOFF = 0.4
MAX_ATTEMPTS = 3
LOG = NewNotification(channel=Channel.LOG, recipient="ops", body="hello")


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_namespace: str) -> Settings:
    return settings_module.load(
        notifier_env(
            database_url,
            redis_url,
            redis_namespace,
            NOTIFIER_RETRY_MIN_BACKOFF=str(MIN_BACKOFF),
            NOTIFIER_RETRY_MAX_BACKOFF=str(MAX_BACKOFF),
            NOTIFIER_RETRY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        )
    )


@pytest.fixture
def pool(database_url: str) -> Iterator[delivery_store.Pool]:
    opened = delivery_store.open_pool(database_url, size=2)
    yield opened
    opened.close()


@pytest.fixture
def memory() -> MemoryChannel:
    return MemoryChannel()


class Enqueued(dramatiq.Middleware):
    """Every message the broker is asked to enqueue, with its delay: what the actors asked of Dramatiq."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[dramatiq.Message[Any], int | None]] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        with self.lock:
            self.messages.append((message, delay))

    def retries(self) -> list[tuple[int, int]]:
        """``(retries so far, delay)`` of each message the Retries middleware enqueued again.

        (A delayed message is enqueued a second time, without a delay, as it falls due.)
        """
        with self.lock:
            return [(m.options["retries"], delay) for m, delay in self.messages if delay and m.options.get("retries")]

    def delayed_resends(self) -> list[int]:
        """The delays of the messages the actor itself enqueued again (not retries)."""
        with self.lock:
            return [delay for m, delay in self.messages if delay and not m.options.get("retries")]


@dataclass
class Worker:
    broker: StubBroker
    actors: app.Actors
    enqueued: Enqueued
    dead_letters: DeadLetterStream

    def deliver(self, notification_id: uuid.UUID) -> None:
        """Send one ``deliver_notification`` message and wait until it and all it led to are processed."""
        self.actors.deliver_notification.send(str(notification_id))
        self.broker.join(DELIVERY_QUEUE, timeout=15_000, fail_fast=False)

    def stream(self) -> list[dict[str, str]]:
        entries = self.dead_letters.client.xrange(self.dead_letters.name)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


@pytest.fixture
def worker(settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel) -> Iterator[Worker]:
    """The actors as ``notifier worker`` declares them, on a StubBroker with the real broker's middleware."""
    real = build(settings)
    broker = StubBroker(middleware=real.middleware)
    real.close()
    broker.emit_after("process_boot")
    enqueued = Enqueued()
    broker.add_middleware(enqueued)
    client = redis.Redis.from_url(settings.redis.url)
    dead_letters = DeadLetterStream(client, dead_letter_stream(settings))
    resources = app.Resources(settings, open_pool=lambda: pool, open_channels=lambda: {Channel.LOG: memory})
    actors = app.declare(broker, resources, dead_letters)
    running = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    running.start()
    try:
        yield Worker(broker, actors, enqueued, dead_letters)
    finally:
        running.stop()
        broker.close()
        client.close()


def row(pool: delivery_store.Pool, notification_id: uuid.UUID) -> dict[str, Any]:
    with pool.connection() as conn:
        found = conn.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,)).fetchone()
    assert found is not None
    return dict(found)


def outcomes(pool: delivery_store.Pool, notification_id: uuid.UUID) -> list[str]:
    with pool.connection() as conn:
        found = conn.execute(
            "SELECT outcome FROM delivery_attempts WHERE notification = %s ORDER BY number", (notification_id,)
        ).fetchall()
    return [r["outcome"] for r in found]


def test_a_transient_failure_is_retried_by_dramatiq_after_the_channels_backoff(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(TransientDeliveryError("provider busy"))
    worker.deliver(n.id)
    [(retries, delay)] = worker.enqueued.retries()
    assert retries == 1
    assert MIN_BACKOFF * 1000 / 2 <= delay <= MIN_BACKOFF * 1000  # the first backoff, jittered
    assert [m.id for m in memory.sent] == [n.id]
    assert outcomes(pool, n.id) == ["transient_error", "sent"]
    assert row(pool, n.id)["status"] == "sent"
    assert worker.broker.dead_letters == []
    assert worker.stream() == []


def test_a_providers_retry_after_is_the_delay_of_the_retry(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(TransientDeliveryError("slow down", retry_after=0.3))
    worker.deliver(n.id)
    assert worker.enqueued.retries() == [(1, 300)]
    assert row(pool, n.id)["status"] == "sent"


def test_a_permanent_failure_fails_the_notification_at_once_and_dead_letters_it(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(PermanentDeliveryError("no such recipient"))
    worker.deliver(n.id)
    assert worker.enqueued.retries() == []
    stored = row(pool, n.id)
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("failed", 1, "no such recipient")
    assert [m.args for m in worker.broker.dead_letters] == [(str(n.id),)]
    [entry] = worker.stream()
    assert entry.items() >= {"notification_id": str(n.id), "channel": "log", "attempts": "1"}.items()
    assert entry["error"] == "no such recipient"
    assert memory.sent == []


def test_the_last_retrys_failure_fails_the_notification_and_dead_letters_it(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(*[TransientDeliveryError("provider busy") for _ in range(MAX_ATTEMPTS)])
    worker.deliver(n.id)
    assert [retries for retries, _ in worker.enqueued.retries()] == list(range(1, MAX_ATTEMPTS))
    stored = row(pool, n.id)
    assert (stored["status"], stored["attempts"], stored["last_error"]) == ("failed", MAX_ATTEMPTS, "provider busy")
    assert outcomes(pool, n.id) == ["transient_error"] * MAX_ATTEMPTS
    assert [m.args for m in worker.broker.dead_letters] == [(str(n.id),)]
    [entry] = worker.stream()
    expected = {"notification_id": str(n.id), "attempts": str(MAX_ATTEMPTS), "error": "provider busy"}
    assert entry.items() >= expected.items()
    assert memory.sent == []


def terminate_connections(database_url: str) -> None:
    """Close every other session on this test's database from the server's side, as a restart would."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the sessions did not end"
            time.sleep(0.02)


def test_a_failure_outside_the_channel_is_retried_by_dramatiq(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel, database_url: str
) -> None:
    n = accept(settings, LOG)
    terminate_connections(database_url)  # the pool's connection is dead: the claim fails
    worker.deliver(n.id)
    [(retries, delay)] = worker.enqueued.retries()
    assert retries == 1
    assert delay <= MAX_BACKOFF * 1000  # the Retries middleware's backoff, from NOTIFIER_RETRY_*
    assert [m.id for m in memory.sent] == [n.id]
    stored = row(pool, n.id)
    assert (stored["status"], stored["attempts"]) == ("sent", 1)  # the failed claim took no attempt
    assert worker.broker.dead_letters == []


def test_a_message_that_comes_before_its_notification_is_due_is_sent_again_when_it_is(
    worker: Worker, settings: Settings, pool: delivery_store.Pool, memory: MemoryChannel
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=0.6)
    n = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="later", send_at=send_at))
    worker.deliver(n.id)  # early, as after clock skew or a short delay
    [delay] = worker.enqueued.delayed_resends()
    assert 0 < delay <= 601
    assert worker.enqueued.retries() == []
    assert [m.id for m in memory.sent] == [n.id]
    stored = row(pool, n.id)
    assert (stored["status"], stored["attempts"]) == ("sent", 1)
    assert stored["sent_at"] >= send_at


WORKER_MODULES = ("notifier.worker.actors", "notifier.worker.schedules", "notifier.worker.app")

# Network I/O only: croniter runs `file` on the interpreter at import (platform.architecture()).
IMPORT_AND_REPORT = """
import json, logging, sys

io = []
sys.addaudithook(lambda event, args: io.append(event) if event.startswith("socket.") else None)
root_handlers = len(logging.getLogger().handlers)
import dramatiq.broker
for module in sys.argv[1:]:
    __import__(module)
print(json.dumps({
    "io": io,
    "global_broker": dramatiq.broker.global_broker is not None,
    "logging_configured": len(logging.getLogger().handlers) != root_handlers,
}))
"""


def test_importing_the_worker_modules_needs_no_settings_and_does_no_io(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AND_REPORT, *WORKER_MODULES],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"io": [], "global_broker": False, "logging_configured": False}


def test_a_message_dramatiq_gives_up_on_counts_as_abandoned(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL away past every infrastructure retry: no attempt was made, and the metric says so."""
    # Dramatiq's middleware sets these at boot. Set and deleted here, each is recorded as absent, and
    # deleted again after the test (a delenv alone records nothing when the variable is absent).
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    real = build(settings)
    broker = StubBroker(middleware=real.middleware)
    real.close()
    app.instrument(broker)  # outside multiprocess mode: counting at once
    broker.emit_after("process_boot")

    def unreachable() -> delivery_store.Pool:
        raise psycopg.OperationalError("connection refused")

    client = redis.Redis.from_url(settings.redis.url)
    resources = app.Resources(settings, open_pool=unreachable, open_channels=lambda: {})
    actors = app.declare(broker, resources, DeadLetterStream(client, dead_letter_stream(settings)))
    registry = CollectorRegistry()
    metrics.install("worker", registry)
    running = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    running.start()
    try:
        actors.deliver_notification.send_with_options(args=(str(uuid.uuid4()),), max_retries=1, min_backoff=10)
        broker.join(DELIVERY_QUEUE, timeout=15_000, fail_fast=False)
    finally:
        running.stop()
        broker.close()
        client.close()
        metrics.disable()
    assert len(broker.dead_letters) == 1
    assert (
        registry.get_sample_value(
            "notifier_deliveries_total", {"channel": metrics.UNKNOWN_CHANNEL, "outcome": "abandoned"}
        )
        == 1
    )  # once, for the give-up: not for the retry before it
