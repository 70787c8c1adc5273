"""The API in-process against a real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import psycopg
import pytest
import redis
from litestar import Litestar
from litestar.testing import TestClient

from notifier.settings import Settings
from tests.conftest import with_database
from tests.integration.conftest import make_app

Client = TestClient[Litestar]
DELIVERY_QUEUE = "notifier.deliver"

LOG = {"channel": "log", "recipient": "ops", "body": "disk almost full"}


def queued_ids(redis_url: str, namespace: str) -> list[str]:
    """Notification ids of the messages waiting in the delivery queue (ready or delayed)."""
    client = redis.Redis.from_url(redis_url)
    ids = []
    for queue in (DELIVERY_QUEUE, f"{DELIVERY_QUEUE}.DQ"):
        for raw in client.hvals(f"{namespace}:{queue}.msgs"):
            import json

            ids.append(json.loads(raw)["args"][0])
    return ids


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]


def test_notify_stores_then_enqueues(client: Client, redis_url: str, redis_namespace: str) -> None:
    response = client.post("/notify", json={**LOG, "subject": "disk", "metadata": {"host": "db1"}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["metadata"] == {"host": "db1"}
    assert response.headers["location"] == f"/notifications/{body['id']}"
    assert queued_ids(redis_url, redis_namespace) == [body["id"]]
    shown = client.get(f"/notifications/{body['id']}").json()
    assert shown["status"] == "queued"
    assert shown["delivery_attempts"] == []


def test_send_at_ahead_is_scheduled_and_waits_in_postgres(client: Client, redis_url: str, redis_namespace: str) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    near = client.post("/notify", json={**LOG, "send_at": soon}).json()
    assert near["status"] == "scheduled"
    assert queued_ids(redis_url, redis_namespace) == []  # the relay enqueues it when it falls due


def test_within_a_schedule_horizon_send_at_ahead_is_a_delayed_message(
    settings: Settings, redis_url: str, redis_namespace: str
) -> None:
    delivery = msgspec.structs.replace(settings.delivery, schedule_horizon=60.0)
    with TestClient(make_app(msgspec.structs.replace(settings, delivery=delivery))) as client:
        soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
        later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        near = client.post("/notify", json={**LOG, "send_at": soon}).json()
        far = client.post("/notify", json={**LOG, "send_at": later}).json()
    assert near["status"] == far["status"] == "scheduled"
    # Due within the horizon: a delayed message in Redis. Far ahead: it waits in PostgreSQL only.
    assert queued_ids(redis_url, redis_namespace) == [near["id"]]
    delayed = redis.Redis.from_url(redis_url).hkeys(f"{redis_namespace}:{DELIVERY_QUEUE}.DQ.msgs")
    assert len(delayed) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**LOG, "channel": "pigeon"}, "channel"),
        ({"channel": "email", "recipient": "nobody", "subject": "s", "body": "b"}, "recipient"),
        ({"channel": "sms", "recipient": "555-1234", "body": "b"}, "recipient"),
        ({"channel": "webhook", "recipient": "ftp://x", "body": "b"}, "recipient"),
        ({"channel": "email", "recipient": "a@example.com", "body": "b"}, "subject"),
        ({"channel": "log", "recipient": "ops"}, "body"),
        ({**LOG, "body": ""}, "body"),
        ({**LOG, "body": "x" * 70_000}, "body"),
        ({**LOG, "recipient": 42}, "recipient"),
        ({**LOG, "send_at": "tomorrow"}, "send_at"),
        ({**LOG, "send_at": "2030-01-01T09:00:00"}, "send_at"),
        ({**LOG, "metadata": ["not", "an", "object"]}, "metadata"),
        ({**LOG, "metadata": {"blob": "x" * 20_000}}, "metadata"),
        ({**LOG, "idempotency_key": "k" * 300}, "idempotency_key"),
        ({**LOG, "recipent": "typo"}, "recipent"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: Client, payload: dict[str, Any], field: str) -> None:
    body = problem(client.post("/notify", json=payload), 422)
    assert fields(body) == [field], body
    assert body["type"].startswith("urn:notifier:problem:")


def test_unconfigured_channel_is_refused(client: Client) -> None:
    body = problem(client.post("/notify", json={"channel": "sms", "recipient": "+14155552671", "body": "b"}), 422)
    assert fields(body) == ["channel"]
    assert body["detail"] == "channel: 'sms' is not configured on this server (set NOTIFIER_SMS_BASE_URL)"


def test_malformed_json_is_a_400(client: Client) -> None:
    body = problem(client.post("/notify", content=b"{nope", headers={"content-type": "application/json"}), 400)
    assert "malformed" in body["detail"].lower()


def test_oversized_body_is_a_413(client: Client, settings: Settings) -> None:
    payload = b'{"channel":"log","recipient":"ops","body":"' + b"x" * settings.api.max_body_size + b'"}'
    problem(client.post("/notify", content=payload, headers={"content-type": "application/json"}), 413)


def test_idempotency_key_answers_the_original(client: Client, redis_url: str, redis_namespace: str) -> None:
    first = client.post("/notify", json={**LOG, "idempotency_key": "order-1"})
    again = client.post("/notify", json=LOG, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert queued_ids(redis_url, redis_namespace) == [first.json()["id"]]

    conflict = problem(client.post("/notify", json={**LOG, "body": "other", "idempotency_key": "order-1"}), 409)
    assert "order-1" in conflict["detail"]
    mismatch = client.post("/notify", json={**LOG, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
    assert fields(problem(mismatch, 422)) == ["idempotency_key"]


def test_list_filters_and_pages_newest_first(client: Client) -> None:
    ids = [client.post("/notify", json={**LOG, "recipient": f"r{i % 2}"}).json()["id"] for i in range(7)]
    client.post(f"/notifications/{ids[0]}/cancel")

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/notifications", params=params).json()
        seen += [n["id"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    by_recipient = client.get("/notifications", params={"recipient": "r1"}).json()["items"]
    assert [n["id"] for n in by_recipient] == [ids[5], ids[3], ids[1]]
    cancelled = client.get("/notifications", params={"status": "cancelled"}).json()["items"]
    assert [n["id"] for n in cancelled] == [ids[0]]
    assert client.get("/notifications", params={"channel": "email"}).json()["items"] == []
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert client.get("/notifications", params={"created_after": future}).json()["items"] == []
    assert len(client.get("/notifications", params={"created_before": future}).json()["items"]) == 7


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1000}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"status": "lost"}, "status"),
    ],
)
def test_bad_list_parameters_name_the_parameter(client: Client, params: dict[str, Any], field: str) -> None:
    assert fields(problem(client.get("/notifications", params=params), 422)) == [field]


def test_cancel_before_sending_and_not_after(client: Client, pool: Any) -> None:
    created = client.post("/notify", json=LOG).json()
    cancelled = client.post(f"/notifications/{created['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert problem(client.post(f"/notifications/{created['id']}/cancel"), 409)["type"].endswith("invalid-transition")

    sending = client.post("/notify", json=LOG).json()
    with pool.connection() as conn:
        conn.execute("UPDATE notifications SET status = 'sending' WHERE id = %s", (sending["id"],))
    assert "sending" in problem(client.post(f"/notifications/{sending['id']}/cancel"), 409)["detail"]


def test_unknown_notification_is_a_404(client: Client) -> None:
    problem(client.get(f"/notifications/{uuid.uuid4()}"), 404)
    problem(client.post(f"/notifications/{uuid.uuid4()}/cancel"), 404)
    problem(client.get("/notifications/not-a-uuid"), 404)


def test_health_readiness_and_docs(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    assert client.get("/readyz").json() == {"status": "ok", "checks": {"postgresql": "ok", "redis": "ok"}}
    schema = client.get("/schema/openapi.json").json()
    assert "/notify" in schema["paths"]
    assert client.get("/schema").status_code == 200


def test_dashboard_shows_the_delivery_queue(client: Client) -> None:
    client.post("/notify", json=LOG)
    page = client.get("/dramatiq/")
    assert page.status_code == 200
    assert DELIVERY_QUEUE in page.text


def test_readiness_fails_when_redis_is_away(settings: Settings) -> None:
    away = type(settings.redis)(url="redis://127.0.0.1:1/0", namespace=settings.redis.namespace)
    import msgspec

    with TestClient(make_app(msgspec.structs.replace(settings, redis=away))) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["postgresql"] == "ok"
    assert response.json()["checks"]["redis"].startswith("unavailable")


def test_terminated_database_connections_are_never_a_500(client: Client, database_url: str) -> None:
    assert client.get("/notifications").status_code == 200  # the pool holds a live connection now
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(with_database(database_url, "postgres"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    # Whether the pool notices the dead connection first (202) or the request meets it (503)
    # is a race; a 500 is wrong either way.
    for _ in range(3):
        response = client.post("/notify", json=LOG)
        assert response.status_code in (202, 503), response.text
    assert client.post("/notify", json=LOG).status_code == 202


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_database_away_is_a_503(client: Client, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    async def away(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("notifier.store.notifications.insert", away)
    response = client.post("/notify", json=LOG)
    body = problem(response, 503)
    assert body["type"] == "urn:notifier:problem:service-unavailable"
    assert response.headers["retry-after"] == "5"


class TestApiKeys:
    @pytest.fixture
    def secured(self, settings: Settings) -> Any:
        import msgspec

        api = msgspec.structs.replace(settings.api, keys=["k-one", "k-two"])
        with TestClient(make_app(msgspec.structs.replace(settings, api=api))) as client:
            yield client

    def test_routes_need_a_key(self, secured: Client) -> None:
        for path in ("/notifications", "/dramatiq/", "/schema/openapi.json"):
            response = secured.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["status"] == 401
        assert secured.get("/notifications", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert secured.get("/notifications", headers={"Authorization": "Basic k-one"}).status_code == 401
        assert secured.get("/notifications", headers={"Authorization": "Bearer k-two"}).status_code == 200
        posted = secured.post("/notify", json=LOG, headers={"Authorization": "Bearer k-one"})
        assert posted.status_code == 202

    def test_health_and_readiness_are_open(self, secured: Client) -> None:
        assert secured.get("/healthz").status_code == 200
        assert secured.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**LOG, "body": "nul\u0000byte"}, "body"),
        ({**LOG, "recipient": "o\u0000ps"}, "recipient"),
        ({**LOG, "idempotency_key": "k\u0000"}, "idempotency_key"),
        ({**LOG, "metadata": {"a": "\u0000"}}, "metadata"),
        ({**LOG, "subject": "two\r\nlines"}, "subject"),
        ({"channel": "webhook", "recipient": "http://[::1", "body": "b"}, "recipient"),
        ({**LOG, "send_at": "0001-01-01T00:00:00+14:00"}, "send_at"),
        ({**LOG, "send_at": "9999-12-31T23:59:59-14:00"}, "send_at"),
    ],
)
def test_hostile_input_is_a_422_not_a_500(client: Client, payload: dict[str, Any], field: str) -> None:
    assert fields(problem(client.post("/notify", json=payload), 422)) == [field]


def test_hostile_list_parameters_are_a_422(client: Client) -> None:
    assert fields(problem(client.get("/notifications", params={"recipient": "a\u0000"}), 422)) == ["recipient"]
    edge = client.get("/notifications", params={"created_after": "0001-01-01T00:00:00+14:00"})
    assert fields(problem(edge, 422)) == ["created_after"]


def test_deeply_nested_json_is_a_400(client: Client) -> None:
    nested = b'{"channel":"log","recipient":"ops","body":"b","metadata":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    problem(client.post("/notify", content=nested, headers={"content-type": "application/json"}), 400)


def test_same_instant_in_another_offset_is_the_same_request(client: Client) -> None:
    first = client.post("/notify", json={**LOG, "send_at": "2031-01-01T09:00:00Z", "idempotency_key": "tz"})
    again = client.post("/notify", json={**LOG, "send_at": "2031-01-01T10:00:00+01:00", "idempotency_key": "tz"})
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]


def test_batch_answers_each_item_on_its_own(client: Client, redis_url: str, redis_namespace: str) -> None:
    client.post("/notify", json={**LOG, "idempotency_key": "old"})
    batch = [
        {**LOG, "body": "one"},
        {"channel": "sms", "recipient": "555", "body": "b"},
        {**LOG, "idempotency_key": "old"},
        {**LOG, "body": "other", "idempotency_key": "old"},
        {**LOG, "recipient": 42},
        {**LOG, "body": "twice", "idempotency_key": "dup"},
        {**LOG, "body": "twice", "idempotency_key": "dup"},
        {"channel": "log", "body": "no recipient"},
    ]
    response = client.post("/notify/batch", json={"notifications": batch})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 202, 409, 422, 202, 202, 422]
    assert results[0]["notification"]["body"] == "one"
    assert results[1]["error"]["errors"][0]["field"] in ("notifications[1].channel", "notifications[1].recipient")
    assert results[2]["idempotent_replayed"] is True
    assert results[4]["error"]["errors"] == [
        {"field": "notifications[4].recipient", "message": "Expected `str`, got `int`"}
    ]
    assert results[5]["notification"]["id"] == results[6]["notification"]["id"]
    assert results[6]["idempotent_replayed"] is True
    assert results[7]["error"]["errors"][0]["field"] == "notifications[7].recipient"
    created = {results[0]["notification"]["id"], results[5]["notification"]["id"]}
    assert set(queued_ids(redis_url, redis_namespace)) - {results[2]["notification"]["id"]} == created


def test_a_batch_items_body_field_is_named_as_any_other(client: Client) -> None:
    """The notification's own ``body`` field is not the item as a whole."""
    batch = [
        {**LOG, "body": ""},
        {**LOG, "body": 5},
        {"channel": "log", "recipient": "ops"},
    ]
    response = client.post("/notify/batch", json={"notifications": batch})
    assert response.status_code == 200, response.text
    assert [r["error"]["errors"] for r in response.json()["results"]] == [
        [{"field": "notifications[0].body", "message": "Expected `str` of length >= 1"}],
        [{"field": "notifications[1].body", "message": "Expected `str`, got `int`"}],
        [{"field": "notifications[2].body", "message": "is required"}],
    ]


def test_batch_size_is_bounded(client: Client) -> None:
    assert fields(problem(client.post("/notify/batch", json={"notifications": []}), 422)) == ["notifications"]
    many = {"notifications": [LOG] * 1001}
    assert fields(problem(client.post("/notify/batch", json=many), 422)) == ["notifications"]


def test_a_batch_of_1000_is_stored_and_enqueued(client: Client, redis_url: str, redis_namespace: str) -> None:
    response = client.post("/notify/batch", json={"notifications": [{**LOG, "body": f"n{i}"} for i in range(1000)]})
    results = response.json()["results"]
    assert {r["status"] for r in results} == {202}
    assert len(set(queued_ids(redis_url, redis_namespace))) == 1000
    assert len(client.get("/notifications", params={"limit": 200}).json()["items"]) == 200
