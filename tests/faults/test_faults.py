"""Every accepted notification is delivered exactly once or fails with a reason — through worker
crashes, Redis and PostgreSQL outages, and misbehaving providers. Real processes, real peers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import psycopg
import redis

from notifier import settings as settings_module
from notifier.worker.broker import DELIVER_ACTOR, DELIVERY_QUEUE, build, dead_letter_stream
from tests.conftest import with_database
from tests.faults.conftest import FAULT_SETTINGS, CountingWebhookPeer, Figures, OwnRedis, Stack, StartStack, wait_until
from tests.peers import SmtpPeer, new_webhook_secret


def post_until_accepted(
    client: httpx.Client, payload: dict[str, Any], key: str, give_up: float
) -> tuple[str, float] | None:
    """POST with an idempotency key, retrying 503s as a careful client does; (id, accepted at)."""
    deadline = time.monotonic() + give_up
    while time.monotonic() < deadline:
        try:
            response = client.post("/notify", json=payload, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        assert response.status_code in (202, 503), f"{response.status_code}: {response.text}"
        if response.status_code == 202:
            return str(response.json()["id"]), time.time()
        time.sleep(0.2)
    return None


def statuses(database_url: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id::text, status FROM notifications WHERE id::text = ANY(%s)", (ids,)).fetchall()
    return dict(rows)


def settle(database_url: str, ids: list[str], timeout: float) -> dict[str, str]:
    def final() -> dict[str, str] | None:
        found = statuses(database_url, ids)
        done = len(found) == len(ids) and all(s in ("sent", "failed") for s in found.values())
        return found if done else None

    result: dict[str, str] = wait_until(final, timeout, f"{len(ids)} notifications to be sent or failed", 0.5)
    return result


def figures(name: str, accepted: dict[str, float], peer: CountingWebhookPeer, final: dict[str, str]) -> Figures:
    delivered = [i for i in accepted if peer.accepted.get(i)]
    delays = [peer.first_accepted[i] - accepted[i] for i in delivered]
    result = Figures(
        name=name,
        sent=len(accepted),
        delivered=len(delivered),
        failed=sum(1 for s in final.values() if s == "failed"),
        duplicated=peer.duplicates(),
        longest_delay=max(delays, default=0.0),
    )
    result.report()
    return result


def send_many(
    stack: Stack, peer: CountingWebhookPeer, count: int, *, threads: int = 8, first: int = 0
) -> dict[str, float]:
    accepted: dict[str, float] = {}
    client = httpx.Client(base_url=str(stack.client.base_url), headers=dict(stack.client.headers), timeout=10)

    def one(i: int) -> None:
        payload = {"channel": "webhook", "recipient": f"{peer.url}/n/{i}", "body": f"notification {i}"}
        result = post_until_accepted(client, payload, f"fault-{i}", give_up=60)
        assert result is not None, f"notification {i} was never accepted"
        accepted[result[0]] = result[1]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(first, first + count)))
    client.close()
    return accepted


def test_sigkill_a_worker_while_1000_notifications_are_delivered(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str
) -> None:
    counting_receiver.latency = 0.01
    stack = start_stack(NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, **FAULT_SETTINGS)
    sender = threading.Thread(target=lambda: accepted.update(send_many(stack, counting_receiver, 1000)))
    accepted: dict[str, float] = {}
    sender.start()
    wait_until(lambda: len(counting_receiver.accepted) >= 150, 60, "deliveries to be under way")
    stack.worker.kill()
    killed_at = time.time()
    stack.start_worker("--processes", "1", "--threads", "4")
    sender.join(timeout=120)
    final = settle(database_url, list(accepted), timeout=120)
    result = figures("sigkill-worker", accepted, counting_receiver, final)
    assert result.sent == 1000
    assert result.delivered == 1000
    assert result.failed == 0
    # A delivery the peer had accepted but the killed worker had not yet recorded is sent again
    # after its lease: at most one per worker thread. Receivers drop these by webhook-id.
    assert result.duplicated <= 4, result
    assert time.time() - killed_at < 120


def test_redis_stopped_for_20_seconds_during_a_stream_of_requests(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str, own_redis: OwnRedis
) -> None:
    stack = start_stack(
        NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, NOTIFIER_REDIS_URL=own_redis.url, **FAULT_SETTINGS
    )
    accepted: dict[str, float] = {}
    statuses_seen: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            payload = {"channel": "webhook", "recipient": f"{counting_receiver.url}/r/{i}", "body": f"n {i}"}
            response = stack.client.post("/notify", json=payload)
            statuses_seen.append(response.status_code)
            if response.status_code == 202:
                accepted[response.json()["id"]] = time.time()
            i += 1
            time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    streamer.start()
    time.sleep(5)
    own_redis.stop()
    outage_started = time.time()
    time.sleep(20)
    own_redis.start()
    time.sleep(5)
    stop.set()
    streamer.join(timeout=30)
    final = settle(database_url, list(accepted), timeout=120)
    result = figures("redis-down-20s", accepted, counting_receiver, final)
    assert set(statuses_seen) == {202}, "the API must accept while Redis is away"
    during = [t for t in accepted.values() if outage_started <= t <= outage_started + 20]
    assert during, "requests were accepted during the outage"
    assert result.delivered == result.sent
    assert result.failed == 0
    assert result.duplicated == 0


def test_retries_pending_when_redis_goes_away_are_not_lost(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str, own_redis: OwnRedis
) -> None:
    # Dramatiq drops the delayed messages a worker holds in memory when its Redis connection
    # fails, and a retry that cannot be enqueued at all is gone too; the relay must notice.
    requeue_after, backoff = 5, 3
    counting_receiver.refuse_first = 5
    stack = start_stack(
        NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret,
        NOTIFIER_REDIS_URL=own_redis.url,
        **{
            **FAULT_SETTINGS,
            "NOTIFIER_DELIVERY_REQUEUE_AFTER": str(requeue_after),
            "NOTIFIER_RETRY_MIN_BACKOFF": str(backoff),
            "NOTIFIER_RETRY_MAX_BACKOFF": str(backoff),
        },
    )
    accepted = {
        stack.notify(channel="webhook", recipient=f"{counting_receiver.url}/p/{i}", body=f"p {i}")["id"]: time.time()
        for i in range(5)
    }
    wait_until(lambda: counting_receiver.refused >= 5, 30, "every first attempt to be refused")
    wait_until(lambda: set(statuses(database_url, list(accepted)).values()) == {"retrying"}, 10, "retries")
    own_redis.stop()
    stopped_at = time.time()
    wait_until(lambda: "Consumer encountered a connection error" in stack.worker.log(), 30, "the worker to notice")
    own_redis.start()
    # Lost retries come back after the requeue delay plus the longest backoff, on a relay pass.
    final = settle(database_url, list(accepted), timeout=requeue_after + backoff + 30)
    result = figures("retries-pending-redis-restarted", accepted, counting_receiver, final)
    assert result.delivered == result.sent == 5
    assert result.failed == 0
    assert result.duplicated == 0
    assert min(counting_receiver.first_accepted.values()) > stopped_at


def test_postgres_connections_terminated_under_load(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str
) -> None:
    stack = start_stack(NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, **FAULT_SETTINGS)
    name = database_url.rsplit("/", 1)[1].split("?")[0]
    done = threading.Event()
    kills = 0

    def terminate() -> None:
        nonlocal kills
        with psycopg.connect(with_database(database_url, "postgres"), autocommit=True) as admin:
            while not done.wait(0.3):
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                kills += 1

    killer = threading.Thread(target=terminate)
    killer.start()
    accepted: dict[str, float] = {}
    try:
        # Keep the load on until the connections have been cut several times.
        while kills < 5 or len(accepted) < 300:
            accepted.update(send_many(stack, counting_receiver, 50, threads=2, first=len(accepted)))
    finally:
        done.set()
        killer.join(timeout=10)
    final = settle(database_url, list(accepted), timeout=120)
    result = figures(f"postgres-connections-terminated-x{kills}", accepted, counting_receiver, final)
    assert kills >= 5
    assert result.sent == len(accepted)  # each was accepted once, retrying 503s with its idempotency key
    assert result.delivered == result.sent
    assert result.failed == 0
    assert result.duplicated == 0


def test_misbehaving_providers(
    start_stack: StartStack, database_url: str, redis_namespace: str, redis_url: str
) -> None:
    secret = new_webhook_secret()
    hanging, limited, refusing = (CountingWebhookPeer(secret) for _ in range(3))
    smtp = SmtpPeer(refuse_first=2, refuse_code=451)
    for peer in (hanging, limited, refusing, smtp):
        peer.start()
    try:
        hanging.respond(503, delay=5)  # hangs past the 2 s timeout, then fails anyway
        limited.respond(429, headers={"Retry-After": "2"}, body="slow down")
        refusing.respond(400, body="unknown endpoint")
        stack = start_stack(NOTIFIER_WEBHOOK_SECRET=secret, NOTIFIER_SMTP_URL=smtp.url, **FAULT_SETTINGS)
        created = {
            "email": stack.notify(channel="email", recipient="ada@example.com", subject="s", body="b"),
            "hang": stack.notify(channel="webhook", recipient=f"{hanging.url}/h", body="b"),
            "429": stack.notify(channel="webhook", recipient=f"{limited.url}/l", body="b"),
            "400": stack.notify(channel="webhook", recipient=f"{refusing.url}/r", body="b"),
        }
        ids = {k: v["id"] for k, v in created.items()}
        settle(database_url, list(ids.values()), timeout=60)
        shown = {k: stack.client.get(f"/notifications/{i}").json() for k, i in ids.items()}

        def outcomes(key: str) -> list[str]:
            return [a["outcome"] for a in shown[key]["delivery_attempts"]]

        for key, peer_count in (
            ("email", len(smtp.messages)),
            ("hang", sum(hanging.accepted.values())),
            ("429", sum(limited.accepted.values())),
            ("400", sum(refusing.accepted.values())),
        ):
            n = shown[key]
            Figures(
                name=f"provider-{key}",
                sent=1,
                delivered=min(peer_count, 1),
                failed=int(n["status"] == "failed"),
                duplicated=max(peer_count - 1, 0),
                longest_delay=n["lateness"] or 0.0,
            ).report()
        assert outcomes("email") == ["transient_error", "transient_error", "sent"]
        assert len(smtp.messages) == 1
        assert outcomes("hang") == ["timeout", "sent"]
        assert sum(hanging.accepted.values()) == 1
        assert outcomes("429") == ["transient_error", "sent"]
        first, second = shown["429"]["delivery_attempts"]
        gap = (
            datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["finished_at"])
        ).total_seconds()
        assert gap >= 2.0, f"Retry-After: 2 was not honoured ({gap:.2f}s)"
        assert shown["400"]["status"] == "failed"
        assert outcomes("400") == ["permanent_error"]
        assert "400" in shown["400"]["last_error"]

        # The permanent failure is a dead letter: listed by the API, in the stream, in Dramatiq's DLQ.
        listed = stack.client.get("/dead-letters", params={"channel": "webhook"}).json()["items"]
        assert [n["id"] for n in listed] == [ids["400"]]
        settings = settings_module.load(stack.env)
        client = redis.Redis.from_url(redis_url)
        entries = client.xrange(dead_letter_stream(settings))
        assert [e[1][b"notification_id"].decode() for e in entries] == [ids["400"]]
        assert (
            client.hlen(f"{redis_namespace}:{DELIVERY_QUEUE}.XQ.msgs") == 1
            or client.zcard(f"{redis_namespace}:{DELIVERY_QUEUE}.XQ") == 1
        )

        # Replayed once the endpoint is fixed: new attempts on the same notification and webhook-id.
        replayed = stack.client.post(f"/notifications/{ids['400']}/retry")
        assert replayed.status_code == 202
        stack.wait_status(ids["400"], "sent")
        assert refusing.accepted == {ids["400"]: 1}
        assert stack.client.post(f"/notifications/{ids['400']}/retry").status_code == 409
    finally:
        for peer in (hanging, limited, refusing, smtp):
            peer.stop()


def test_the_same_message_pushed_into_redis_twice_is_delivered_once(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str
) -> None:
    import dramatiq

    stack = start_stack(
        NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, NOTIFIER_DELIVERY_SCHEDULE_HORIZON="1", **FAULT_SETTINGS
    )
    created = stack.notify(
        channel="webhook",
        recipient=f"{counting_receiver.url}/twice",
        body="once",
        send_at="2099-01-01T00:00:00Z",  # far ahead: nothing enqueues it but this test
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE notifications SET send_at = now(), status = 'queued' WHERE id = %s", (created["id"],))
    broker = build(settings_module.load(stack.env))
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=DELIVERY_QUEUE, actor_name=DELIVER_ACTOR, args=(created["id"],), kwargs={}, options={}
    )
    broker.enqueue(message)
    broker.enqueue(message)  # the very same message, id and all
    broker.close()
    stack.wait_status(created["id"], "sent")
    shown = stack.client.get(f"/notifications/{created['id']}").json()
    assert len(shown["delivery_attempts"]) == 1
    assert counting_receiver.accepted == {created["id"]: 1}
    Figures("same-message-twice", 1, 1, 0, 0, shown["lateness"]).report()


def test_sigterm_drains_in_flight_deliveries_and_leaves_the_rest_queued(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str
) -> None:
    counting_receiver.latency = 1.5  # each delivery takes a while: some are in flight at SIGTERM
    stack = start_stack(NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, **FAULT_SETTINGS)
    accepted = send_many(stack, counting_receiver, 20, threads=4)
    wait_until(lambda: counting_receiver.accepted, 30, "the first deliveries to be in flight")
    stopped_at = time.monotonic()
    assert stack.worker.stop() == 0  # SIGTERM; exits cleanly once its in-flight deliveries finish
    assert time.monotonic() - stopped_at < 30
    in_flight = set(counting_receiver.accepted)
    now_final = statuses(database_url, list(accepted))
    assert all(now_final[i] == "sent" for i in in_flight), "an in-flight delivery was cut off"
    assert "sending" not in now_final.values()
    assert any(s == "queued" for s in now_final.values()), "the rest stay queued"
    stack.start_worker("--processes", "1", "--threads", "4")
    final = settle(database_url, list(accepted), timeout=120)
    result = figures("sigterm-worker", accepted, counting_receiver, final)
    assert result.delivered == result.sent == 20
    assert result.duplicated == 0
