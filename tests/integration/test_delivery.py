"""The delivery path (Dispatcher) and the outbox relay, on a real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from psycopg_pool import ConnectionPool

from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel, NewNotification
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.services.delivery import Delivered, Dispatcher, NotDue
from notifier.services.relay import Relay
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from notifier.store import notifications as store
from notifier.store import outbox
from tests.accepting import accept


def relay_once(
    pool: ConnectionPool, settings: Settings, enqueue: Callable[[Sequence[tuple[uuid.UUID, int]]], None]
) -> int:
    return Relay(settings, pool, enqueue).relay_once()


def row(pool: ConnectionPool, notification_id: uuid.UUID) -> dict[str, object]:
    with pool.connection() as conn:
        found = conn.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,)).fetchone()
    assert found is not None
    return dict(found)


def attempts(pool: ConnectionPool, notification_id: uuid.UUID) -> list[dict[str, object]]:
    with pool.connection() as conn:
        return [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM delivery_attempts WHERE notification = %s ORDER BY number", (notification_id,)
            ).fetchall()
        ]


LOG = NewNotification(channel=Channel.LOG, recipient="ops", body="hello")


@pytest.fixture
def memory() -> MemoryChannel:
    return MemoryChannel()


@pytest.fixture
def dispatcher(settings: Settings, pool: ConnectionPool, memory: MemoryChannel) -> Dispatcher:
    return Dispatcher(settings, pool, {Channel.LOG: memory})


def test_delivery_records_the_attempt_and_the_outcome(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    assert dispatcher.deliver(n.id) == Delivered("sent")
    assert [m.id for m in memory.sent] == [n.id]
    stored = row(pool, n.id)
    assert stored["status"] == "sent"
    assert stored["attempts"] == 1
    assert stored["sent_at"] is not None
    [attempt] = attempts(pool, n.id)
    assert attempt["outcome"] == "sent"
    assert attempt["provider_message_id"] == "memory-1"
    assert attempt["finished_at"] is not None


def test_a_duplicated_message_sends_once(settings: Settings, dispatcher: Dispatcher, memory: MemoryChannel) -> None:
    n = accept(settings, LOG)
    assert dispatcher.deliver(n.id) == Delivered("sent")
    assert dispatcher.deliver(n.id) == Delivered("skipped")
    assert len(memory.sent) == 1


def test_concurrent_deliveries_of_one_notification_send_once(
    settings: Settings, dispatcher: Dispatcher, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    barrier = threading.Barrier(8)
    results: list[object] = []

    def race() -> None:
        barrier.wait()
        results.append(dispatcher.deliver(n.id))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results.count(Delivered("sent")) == 1
    assert results.count(Delivered("skipped")) == 7
    assert len(memory.sent) == 1


def test_many_threads_deliver_many_notifications_each_once(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    """Claims and outcomes are written in groups across threads; each message still gets its own answer."""
    ids = [accept(settings, LOG).id for _ in range(60)]
    messages = [*ids, *ids]  # every message delivered twice, as after a lost acknowledgement
    random.Random(5).shuffle(messages)
    results: dict[uuid.UUID, list[Delivered | NotDue]] = {i: [] for i in ids}
    lock = threading.Lock()

    def work(share: list[uuid.UUID]) -> None:
        for notification_id in share:
            result = dispatcher.deliver(notification_id)
            with lock:
                results[notification_id].append(result)

    threads = [threading.Thread(target=work, args=(messages[k::16],)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(
        sorted(r.kind for r in found if isinstance(r, Delivered)) == ["sent", "skipped"] for found in results.values()
    )
    assert sorted(m.id for m in memory.sent) == sorted(ids)
    with pool.connection() as conn:
        found = conn.execute(
            "SELECT n.status, a.number, a.outcome FROM notifications n"
            " JOIN delivery_attempts a ON a.notification = n.id WHERE n.id = ANY(%s)",
            (ids,),
        ).fetchall()
    assert [(r["status"], r["number"], r["outcome"]) for r in found] == [("sent", 1, "sent")] * len(ids)


def test_marking_enqueued_skips_the_rows_a_worker_holds(settings: Settings, pool: ConnectionPool) -> None:
    """The API marks in bulk; waiting on a row a worker's group holds could close a deadlock."""
    held, free, sent = (accept(settings, LOG).id for _ in range(3))
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET enqueued_at = NULL")
        conn.execute("UPDATE notifications SET status = 'sent' WHERE id = %s", (sent,))

    async def mark() -> None:
        await store.connect(settings.database.url, pool_size=2)
        try:
            await asyncio.wait_for(store.mark_enqueued([held, free, sent], now=datetime.now(UTC)), timeout=10)
        finally:
            await store.disconnect()

    with pool.connection() as worker, worker.transaction():
        worker.execute("SELECT id FROM notifications WHERE id = %s FOR NO KEY UPDATE", (held,))
        asyncio.run(mark())
    assert row(pool, free)["enqueued_at"] is not None
    assert row(pool, held)["enqueued_at"] is None  # the relay enqueues it again if it is still waiting
    assert row(pool, sent)["enqueued_at"] is None  # taken by a worker already: nothing to mark


def test_transient_failure_retries_then_sends(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(TransientDeliveryError("SMTP 451 try later"))
    with pytest.raises(TransientDeliveryError):
        dispatcher.deliver(n.id)
    stored = row(pool, n.id)
    assert (stored["status"], stored["last_error"]) == ("retrying", "SMTP 451 try later")
    assert dispatcher.deliver(n.id) == Delivered("sent")
    assert [(a["number"], a["outcome"]) for a in attempts(pool, n.id)] == [(1, "transient_error"), (2, "sent")]


def test_the_last_attempt_fails_the_notification(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(*[TransientDeliveryError(f"down {i}") for i in range(settings.retry.max_attempts)])
    for _ in range(settings.retry.max_attempts - 1):
        with pytest.raises(TransientDeliveryError):
            dispatcher.deliver(n.id)
    assert dispatcher.deliver(n.id) == Delivered("failed")
    stored = row(pool, n.id)
    assert stored["status"] == "failed"
    assert stored["last_error"] == f"down {settings.retry.max_attempts - 1}"
    assert len(attempts(pool, n.id)) == settings.retry.max_attempts
    assert memory.sent == []


def test_permanent_failure_fails_at_once(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    memory.fail_next(PermanentDeliveryError("HTTP 400: unknown recipient"))
    assert dispatcher.deliver(n.id) == Delivered("failed")
    stored = row(pool, n.id)
    assert (stored["status"], stored["last_error"]) == ("failed", "HTTP 400: unknown recipient")
    assert [a["outcome"] for a in attempts(pool, n.id)] == ["permanent_error"]


def test_cancelled_and_unknown_notifications_are_not_sent(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET status = 'cancelled' WHERE id = %s", (n.id,))
    assert dispatcher.deliver(n.id) == Delivered("skipped")
    assert dispatcher.deliver(uuid.uuid4()) == Delivered("skipped")
    assert memory.sent == []


def test_an_early_message_is_put_off_until_due(
    settings: Settings, dispatcher: Dispatcher, memory: MemoryChannel
) -> None:
    n = accept(
        settings,
        NewNotification(
            channel=Channel.LOG, recipient="ops", body="x", send_at=datetime.now(UTC) + timedelta(seconds=30)
        ),
    )
    result = dispatcher.deliver(n.id)
    assert isinstance(result, NotDue)
    assert 25_000 < result.delay_ms <= 30_000
    assert memory.sent == []


def test_relay_enqueues_what_redis_missed(settings: Settings, pool: ConnectionPool) -> None:
    def redis_away(items: Sequence[tuple[uuid.UUID, int]]) -> None:
        raise ConnectionError("Redis is away")

    n = accept(settings, LOG, enqueue=redis_away)
    assert row(pool, n.id)["enqueued_at"] is None  # accepted and committed all the same

    enqueued: list[tuple[uuid.UUID, int]] = []

    # Within the grace period the API's own enqueue may still be under way: the relay waits.
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET created_at = now() WHERE id = %s", (n.id,))
    assert relay_once(pool, settings, enqueued.extend) == 0
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET created_at = created_at - interval '5 seconds' WHERE id = %s", (n.id,))
    assert relay_once(pool, settings, enqueued.extend) == 1
    assert enqueued == [(n.id, 0)]
    assert row(pool, n.id)["enqueued_at"] is not None
    assert relay_once(pool, settings, enqueued.extend) == 0  # and only once


def test_relay_requeues_a_message_redis_lost(settings: Settings, pool: ConnectionPool) -> None:
    n = accept(settings, LOG)
    with pool.connection() as conn:
        conn.execute(
            "UPDATE notifications SET created_at = now() - interval '1 hour', enqueued_at = now() - interval '1 hour'"
            " WHERE id = %s",
            (n.id,),
        )
    enqueued: list[tuple[uuid.UUID, int]] = []

    assert relay_once(pool, settings, enqueued.extend) == 1
    assert enqueued == [(n.id, 0)]


def test_a_lapsed_lease_is_delivered_again(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    n = accept(settings, LOG)
    assert n.id in delivery_store.claim_many(pool, [n.id], lease=settings.delivery.lease)  # a worker that then died
    assert dispatcher.deliver(n.id) == Delivered("skipped")  # the lease still holds

    with pool.connection() as conn:
        conn.execute(
            "UPDATE notifications SET updated_at = now() - %s * interval '1 second' WHERE id = %s",
            (settings.delivery.lease + 1, n.id),
        )
    enqueued: list[tuple[uuid.UUID, int]] = []
    assert relay_once(pool, settings, enqueued.extend) == 1
    assert enqueued == [(n.id, 0)]
    assert dispatcher.deliver(n.id) == Delivered("sent")
    assert [(a["number"], a["outcome"]) for a in attempts(pool, n.id)] == [(1, "abandoned"), (2, "sent")]
    assert len(memory.sent) == 1


def test_a_message_that_loses_the_claim_to_a_retry_is_dropped(
    settings: Settings, dispatcher: Dispatcher, pool: ConnectionPool, memory: MemoryChannel
) -> None:
    soon = datetime.now(UTC) + timedelta(milliseconds=10)
    n = accept(settings, NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=soon))
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET status = 'sending', updated_at = now() WHERE id = %s", (n.id,))
    # Another worker holds it; by the time this one looks, that worker has moved it to retrying.
    # This message must not start a second chain of attempts that skips the retry's backoff.
    assert dispatcher.deliver(n.id) == Delivered("skipped")
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET status = 'retrying' WHERE id = %s", (n.id,))
    assert dispatcher._unclaimed(n.id) == Delivered("skipped")
    assert memory.sent == []


def test_a_far_future_notification_waits_in_postgres_and_can_be_cancelled(
    settings: Settings, pool: ConnectionPool
) -> None:
    year_ahead = NewNotification(
        channel=Channel.LOG, recipient="ops", body="renewal", send_at=datetime.now(UTC) + timedelta(days=365)
    )
    enqueued: list[tuple[uuid.UUID, int]] = []
    n = accept(settings, year_ahead, enqueue=enqueued.extend)
    assert enqueued == []  # not in Redis
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET created_at = created_at - interval '1 minute' WHERE id = %s", (n.id,))
    assert relay_once(pool, settings, enqueued.extend) == 0  # nor promoted: it is not due
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET status = 'cancelled' WHERE id = %s", (n.id,))
        conn.execute("UPDATE notifications SET send_at = now() - interval '1 second' WHERE id = %s", (n.id,))
    assert relay_once(pool, settings, enqueued.extend) == 0  # cancelled: never promoted


def test_a_scheduled_notification_is_enqueued_by_the_relay_as_it_falls_due(
    settings: Settings, pool: ConnectionPool
) -> None:
    enqueued: list[tuple[uuid.UUID, int]] = []
    soon = NewNotification(
        channel=Channel.LOG, recipient="ops", body="x", send_at=datetime.now(UTC) + timedelta(hours=1)
    )
    n = accept(settings, soon, enqueue=enqueued.extend)
    assert enqueued == []  # the API leaves it to the relay
    assert relay_once(pool, settings, enqueued.extend) == 0
    upcoming = outbox.next_due(pool, horizon=timedelta(0))
    assert upcoming is not None
    assert 3500 < upcoming <= 3600
    with pool.connection() as conn:  # it falls due (seconds after it was accepted: no grace to wait out)
        conn.execute("UPDATE notifications SET send_at = now() WHERE id = %s", (n.id,))
    assert relay_once(pool, settings, enqueued.extend) == 1
    assert enqueued == [(n.id, 0)]  # straight onto the delivery queue, no Dramatiq delay
    assert outbox.next_due(pool, horizon=timedelta(0)) is None


def test_the_relay_wakes_when_the_next_notification_falls_due(settings: Settings, pool: ConnectionPool) -> None:
    slow = msgspec.structs.replace(settings, delivery=msgspec.structs.replace(settings.delivery, outbox_interval=30.0))
    due_at = datetime.now(UTC) + timedelta(seconds=1)
    n = accept(slow, NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=due_at))
    enqueued: dict[uuid.UUID, datetime] = {}
    relay = Relay(slow, pool, lambda items: enqueued.update((i, datetime.now(UTC)) for i, _ in items))
    stop = threading.Event()
    runner = threading.Thread(target=relay.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while n.id not in enqueued and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert n.id in enqueued, "the relay slept through the due time"
    lateness = (enqueued[n.id] - due_at).total_seconds()
    assert 0 <= lateness < 0.5, lateness  # not the 30 s interval


def test_a_notification_due_while_everything_was_down_goes_out_when_back(
    settings: Settings, pool: ConnectionPool
) -> None:
    n = accept(
        settings,
        NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=datetime.now(UTC) + timedelta(days=1)),
        enqueue=lambda items: None,
    )
    with pool.connection() as conn:  # its day came and went while nothing ran
        conn.execute(
            "UPDATE notifications SET send_at = now() - interval '3 hours', created_at = now() - interval '1 day'"
            " WHERE id = %s",
            (n.id,),
        )
    enqueued: list[tuple[uuid.UUID, int]] = []
    assert relay_once(pool, settings, enqueued.extend) == 1
    assert enqueued == [(n.id, 0)]  # at once, no delay
