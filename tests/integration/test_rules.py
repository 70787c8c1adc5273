"""Rules and events through the API, and the scheduler tick, on a real PostgreSQL and Redis."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from notifier.services.rules import RuleScheduler
from notifier.settings import Settings
from notifier.store.delivery import Pool

Client = TestClient[Litestar]

DAILY = {
    "name": "stand-up",
    "schedule": "30 8 * * mon-fri",
    "timezone": "Europe/Berlin",
    "channel": "log",
    "recipients": ["team"],
    "subject": "Stand-up",
    "body": "Stand-up at {{ local_time }}",
}
SHIPPED = {
    "name": "tell the customer",
    "event": "order.shipped",
    "channel": "webhook",
    "recipients": ["{{ data.customer.hook }}"],
    "body": "Order {{ data.order.id }} shipped",
}


def fields(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["field"] for e in response.json()["errors"]]


def test_create_show_list_patch_delete(client: Client) -> None:
    created = client.post("/rules", json=DAILY)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert created.headers["location"] == f"/rules/{rule['id']}"
    assert rule["misfire"] == "once"
    assert rule["enabled"] is True
    next_fire = datetime.fromisoformat(rule["next_fire_at"])
    assert next_fire > datetime.now(UTC)
    assert next_fire.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "08:30"

    assert client.get(f"/rules/{rule['id']}").json() == rule
    assert [r["id"] for r in client.get("/rules").json()["items"]] == [rule["id"]]

    disabled = client.patch(f"/rules/{rule['id']}", json={"enabled": False}).json()
    assert disabled["enabled"] is False
    assert disabled["next_fire_at"] is None
    assert client.get("/rules", params={"enabled": "true"}).json()["items"] == []
    enabled = client.patch(f"/rules/{rule['id']}", json={"enabled": True, "name": "daily"}).json()
    assert enabled["name"] == "daily"
    assert enabled["next_fire_at"] is not None

    assert client.delete(f"/rules/{rule['id']}").status_code == 204
    assert client.get(f"/rules/{rule['id']}").status_code == 404
    assert client.delete(f"/rules/{rule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "0 0 * * * *"}, "schedule"),
        ({"schedule": "every day"}, "schedule"),
        ({"event": "x"}, "schedule"),
        ({"schedule": None}, "schedule"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"body": "Hello {{ name "}, "body"),
        ({"subject": "{% if %}"}, "subject"),
        ({"recipients": []}, "recipients"),
        ({"recipients": ["ops", "{{ broken "]}, "recipients[1]"),
        ({"channel": "email", "recipients": ["nobody"]}, "recipients[0]"),
        ({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, "ends_at"),
        ({"misfire": "twice"}, "misfire"),
        ({"cadence": "daily"}, "cadence"),
        ({"channel": "sms", "recipients": ["+14155552671"]}, "channel"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(client: Client, change: dict[str, Any], field: str) -> None:
    assert fields(client.post("/rules", json={**DAILY, **change})) == [field]


def test_template_errors_name_the_line(client: Client) -> None:
    response = client.post("/rules", json={**DAILY, "body": "line one\n{{ oops"})
    assert "line 2" in response.json()["errors"][0]["message"]


def test_preview_lists_fire_times_in_utc_and_local(client: Client) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "30 2 * * *", "timezone": "Europe/Berlin"}).json()
    preview = client.get(f"/rules/{rule['id']}/preview", params={"count": 3, "after": "2026-03-27T12:00:00Z"}).json()
    assert preview["timezone"] == "Europe/Berlin"
    # 02:30 does not exist on 29 March 2026 in Berlin: it fires once, at 03:00 local (01:00 UTC).
    assert [t["utc"] for t in preview["fire_times"]] == [
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
    ]
    assert preview["fire_times"][0]["local"] == "2026-03-28T02:30:00+01:00"
    assert len(client.get(f"/rules/{rule['id']}/preview", params={"count": 1000}).json()["fire_times"]) == 1000
    assert fields(client.get(f"/rules/{rule['id']}/preview", params={"count": 1001})) == ["count"]
    event_rule = client.post("/rules", json=SHIPPED).json()
    assert fields(client.get(f"/rules/{event_rule['id']}/preview")) == ["schedule"]


def test_event_fans_out_to_its_rules_once(client: Client) -> None:
    rule = client.post(
        "/rules", json={**SHIPPED, "recipients": ["{{ data.customer.hook }}", "https://audit.example/x"]}
    ).json()
    client.post("/rules", json={**SHIPPED, "event": "order.cancelled"})
    event = {
        "type": "order.shipped",
        "data": {"order": {"id": 42}, "customer": {"hook": "https://shop.example/hooks/ada"}},
        "idempotency_key": "order-42-shipped",
    }
    published = client.post("/events", json=event)
    assert published.status_code == 202, published.text
    body = published.json()
    made = body["notifications"]
    assert sorted(n["recipient"] for n in made) == ["https://audit.example/x", "https://shop.example/hooks/ada"]
    assert {n["body"] for n in made} == {"Order 42 shipped"}
    assert {n["rule_id"] for n in made} == {rule["id"]}
    assert {n["event_id"] for n in made} == {body["id"]}
    assert {n["status"] for n in made} == {"queued"}

    again = client.post("/events", json=event)
    assert again.headers["idempotent-replayed"] == "true"
    assert sorted(n["id"] for n in again.json()["notifications"]) == sorted(n["id"] for n in made)
    assert client.post("/events", json={**event, "data": {}}).status_code == 409

    shown = client.get(f"/events/{body['id']}").json()
    assert sorted(n["id"] for n in shown["notifications"]) == sorted(n["id"] for n in made)
    assert client.get(f"/events/{uuid.uuid4()}").status_code == 404


def test_a_missing_variable_fails_that_notification_with_a_reason(client: Client) -> None:
    client.post("/rules", json=SHIPPED)
    made = client.post("/events", json={"type": "order.shipped", "data": {"order": {"id": 7}}}).json()["notifications"]
    [failed] = made
    assert failed["status"] == "failed"
    assert "customer" in failed["last_error"]
    assert failed["recipient"] == "{{ data.customer.hook }}"  # as written: nothing half-rendered was sent


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"to": "r" * 3000, "text": "x"}, "recipient: must be at most 2048 characters"),
        ({"to": "ops", "text": ""}, "body: the template rendered an empty body"),
    ],
)
def test_a_rendered_value_the_api_would_refuse_fails_that_notification_alone(
    client: Client, data: dict[str, str], reason: str
) -> None:
    """What a rule renders meets the bounds of ``POST /notify``: beyond them, the notification
    fails with the reason, and the event and its other rules' notifications stand."""
    templated = {"name": "templated", "event": "x.y", "channel": "log", "recipients": ["{{ data.to }}"]}
    assert client.post("/rules", json={**templated, "body": "{{ data.text }}"}).status_code == 201
    assert client.post("/rules", json={**templated, "recipients": ["ops"], "body": "fixed"}).status_code == 201
    published = client.post("/events", json={"type": "x.y", "data": data})
    assert published.status_code == 202, published.text
    made = sorted(published.json()["notifications"], key=lambda n: n["status"])
    assert [n["status"] for n in made] == ["failed", "queued"]
    assert made[0]["last_error"] == reason


def test_an_event_nobody_listens_to_creates_nothing(client: Client) -> None:
    response = client.post("/events", json={"type": "user.signed_up", "data": {}})
    assert response.status_code == 202
    assert response.json()["notifications"] == []
    assert fields(client.post("/events", json={"type": "bad type!", "data": {}})) == ["type"]


def _rule_row(pool: Pool, rule_id: str) -> dict[str, Any]:
    with pool.connection() as conn:
        row = conn.execute("SELECT * FROM rules WHERE id = %s", (rule_id,)).fetchone()
    assert row is not None
    return dict(row)


def _fired(pool: Pool, rule_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM notifications WHERE rule = %s ORDER BY send_at, recipient", (rule_id,)
            ).fetchall()
        ]


def _set_next(pool: Pool, rule_id: str, at: datetime) -> None:
    with pool.connection() as conn:
        conn.execute("UPDATE rules SET next_fire_at = %s WHERE id = %s", (at, rule_id))


def test_tick_fires_due_rules_once_per_recipient(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post(
        "/rules", json={**DAILY, "schedule": "*/5 * * * *", "timezone": "UTC", "recipients": ["a", "b"]}
    ).json()
    now = datetime(2030, 6, 3, 10, 3, 30, tzinfo=UTC)
    _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 5, tzinfo=UTC))
    ticker = RuleScheduler(settings, pool)
    assert ticker.fire_due(now) == 2  # 10:05 is within the two-minute lookahead; 10:10 is not
    fired = _fired(pool, rule["id"])
    assert [(n["recipient"], n["send_at"], n["status"]) for n in fired] == [
        ("a", datetime(2030, 6, 3, 10, 5, tzinfo=UTC), "scheduled"),
        ("b", datetime(2030, 6, 3, 10, 5, tzinfo=UTC), "scheduled"),
    ]
    assert fired[0]["body"] == "Stand-up at 2030-06-03T10:05:00+00:00"
    assert _rule_row(pool, rule["id"])["next_fire_at"] == datetime(2030, 6, 3, 10, 10, tzinfo=UTC)
    assert ticker.fire_due(now) == 0  # nothing new until 10:10 comes within the lookahead


def test_two_ticks_at_once_fire_each_firing_once(client: Client, settings: Settings, pool: Pool) -> None:
    rules = [
        client.post("/rules", json={**DAILY, "name": f"r{i}", "schedule": "* * * * *", "timezone": "UTC"}).json()
        for i in range(20)
    ]
    now = datetime(2030, 6, 3, 10, 0, 30, tzinfo=UTC)
    for rule in rules:
        _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    barrier = threading.Barrier(2)
    results: list[int] = []

    def tick() -> None:
        barrier.wait()
        results.append(RuleScheduler(settings, pool).fire_due(now))

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(results) == 20 * 2  # 10:01 and 10:02, once each, whichever tick made them
    # A firing planned again (the rule's cursor reset, as a crash between insert and update
    # would leave it) still creates nothing new: the idempotency keys are unique.
    for rule in rules:
        _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    assert RuleScheduler(settings, pool).fire_due(now) == 0
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM notifications").fetchone()["n"] == 40  # type: ignore[index]


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [("once", [(datetime(2030, 6, 3, 9, 55, tzinfo=UTC), 1)]), ("skip", [])],
)
def test_missed_firings_follow_the_misfire_policy(
    client: Client, settings: Settings, pool: Pool, misfire: str, expected: list[tuple[datetime, int]]
) -> None:
    rule = client.post(
        "/rules", json={**DAILY, "schedule": "*/5 * * * *", "timezone": "UTC", "misfire": misfire}
    ).json()
    _set_next(pool, rule["id"], datetime(2030, 6, 3, 9, 30, tzinfo=UTC))  # down since 09:30
    now = datetime(2030, 6, 3, 9, 58, 30, tzinfo=UTC)
    RuleScheduler(settings, pool).fire_due(now)
    fired = [(n["send_at"], n["metadata"]["rule"]["name"] == DAILY["name"]) for n in _fired(pool, rule["id"])]
    past = [at for at, _ in fired if at < now]
    assert past == [at for at, _ in expected]
    assert [at for at, _ in fired if at > now] == [datetime(2030, 6, 3, 10, 0, tzinfo=UTC)]


def test_missed_firings_beyond_the_grace_window_are_dropped(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "0 * * * *", "timezone": "UTC"}).json()
    _set_next(pool, rule["id"], datetime(2030, 6, 1, 0, 0, tzinfo=UTC))
    now = datetime(2030, 6, 3, 12, 30, tzinfo=UTC)  # the last missed firing, 12:00, is within the hour
    RuleScheduler(settings, pool).fire_due(now)
    assert [n["send_at"] for n in _fired(pool, rule["id"])] == [datetime(2030, 6, 3, 12, 0, tzinfo=UTC)]
    late = client.post("/rules", json={**DAILY, "schedule": "0 0 1 * *", "timezone": "UTC"}).json()
    _set_next(pool, late["id"], datetime(2030, 6, 1, 0, 0, tzinfo=UTC))
    RuleScheduler(settings, pool).fire_due(now)
    assert _fired(pool, late["id"]) == []  # two days late: outside the grace window
    assert _rule_row(pool, late["id"])["next_fire_at"] == datetime(2030, 7, 1, 0, 0, tzinfo=UTC)


def test_a_rule_stops_at_ends_at(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post(
        "/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC", "ends_at": "2030-06-03T10:01:00Z"}
    ).json()
    _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 0, tzinfo=UTC))
    RuleScheduler(settings, pool).fire_due(datetime(2030, 6, 3, 9, 59, 30, tzinfo=UTC))
    assert [n["send_at"].minute for n in _fired(pool, rule["id"])] == [0, 1]
    assert _rule_row(pool, rule["id"])["next_fire_at"] is None


def test_deleting_a_rule_keeps_its_notifications(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC"}).json()
    _set_next(pool, rule["id"], datetime.now(UTC) + timedelta(seconds=30))
    assert RuleScheduler(settings, pool).fire_due() >= 1
    client.delete(f"/rules/{rule['id']}")
    with pool.connection() as conn:
        rows = conn.execute("SELECT rule FROM notifications").fetchall()
    assert rows
    assert all(r["rule"] is None for r in rows)


def test_a_rule_that_cannot_fire_does_not_hold_up_the_others(
    client: Client, settings: Settings, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("notifier.services.rules.RULES_PER_TICK", 2)  # several batches
    good = [
        client.post("/rules", json={**DAILY, "name": f"good {i}", "schedule": "* * * * *", "timezone": "UTC"}).json()
        for i in range(5)
    ]
    bad = client.post("/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC"}).json()
    now = datetime(2030, 6, 3, 10, 0, 30, tzinfo=UTC)
    for rule in [*good, bad]:
        _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    with pool.connection() as conn:  # a cron expression that no longer parses, as a broken row would
        conn.execute("UPDATE rules SET schedule = 'not cron' WHERE id = %s", (bad["id"],))
    assert RuleScheduler(settings, pool).fire_due(now) == 5 * 2
    assert all(_rule_row(pool, r["id"])["next_fire_at"] == datetime(2030, 6, 3, 10, 3, tzinfo=UTC) for r in good)
    assert _rule_row(pool, bad["id"])["next_fire_at"] == datetime(2030, 6, 3, 10, 1, tzinfo=UTC)


def test_a_runtime_template_error_fails_only_that_notification(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post(
        "/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC", "body": "{{ 1 // missed }}"}
    ).json()
    _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    RuleScheduler(settings, pool).fire_due(datetime(2030, 6, 3, 10, 0, 30, tzinfo=UTC))
    fired = _fired(pool, rule["id"])
    assert {n["status"] for n in fired} == {"failed"}
    assert all("ZeroDivisionError" in n["last_error"] for n in fired)


def test_changing_a_rule_cancels_what_it_planned_and_plans_afresh(
    client: Client, settings: Settings, pool: Pool
) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC"}).json()
    _set_next(pool, rule["id"], datetime.now(UTC) + timedelta(seconds=30))
    RuleScheduler(settings, pool).fire_due()
    planned = _fired(pool, rule["id"])
    assert planned
    client.patch(f"/rules/{rule['id']}", json={"body": "new words"})
    assert {n["status"] for n in _fired(pool, rule["id"])} == {"cancelled"}
    RuleScheduler(settings, pool).fire_due()
    fresh = [n for n in _fired(pool, rule["id"]) if n["status"] == "scheduled"]
    assert fresh
    assert {n["body"] for n in fresh} == {"new words"}
    client.patch(f"/rules/{rule['id']}", json={"enabled": False})
    assert {n["status"] for n in _fired(pool, rule["id"])} == {"cancelled"}


def test_extending_an_ended_rule_brings_it_back(client: Client) -> None:
    ended = client.post("/rules", json={**DAILY, "ends_at": "2020-01-01T00:00:00Z"}).json()
    assert ended["next_fire_at"] is None
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    assert client.patch(f"/rules/{ended['id']}", json={"ends_at": later}).json()["next_fire_at"] is not None


def test_event_rules_respect_their_window(client: Client) -> None:
    client.post("/rules", json={**SHIPPED, "ends_at": "2021-01-01T00:00:00Z"})
    client.post("/rules", json={**SHIPPED, "starts_at": "2031-01-01T00:00:00Z"})
    event = {"type": "order.shipped", "data": {"order": {"id": 1}, "customer": {"hook": "https://x.example/h"}}}
    assert client.post("/events", json=event).json()["notifications"] == []


@pytest.mark.parametrize(
    ("method", "path_suffix", "payload", "field"),
    [
        ("post", "", {**DAILY, "starts_at": "9999-12-31T23:59:00Z"}, "starts_at"),
        ("post", "", {**DAILY, "ends_at": "0001-01-01T00:00:00Z"}, "ends_at"),
    ],
)
def test_dates_beyond_the_calendar_are_refused(
    client: Client, method: str, path_suffix: str, payload: dict[str, Any], field: str
) -> None:
    assert fields(getattr(client, method)(f"/rules{path_suffix}", json=payload)) == [field]


def test_preview_past_the_supported_dates_is_refused(client: Client) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "0 0 29 2 *"}).json()
    assert fields(client.get(f"/rules/{rule['id']}/preview", params={"after": "9999-12-31T23:59:59Z"})) == ["after"]
    late = client.get(f"/rules/{rule['id']}/preview", params={"after": "8990-01-01T00:00:00Z", "count": 1000})
    assert late.status_code == 200
    times = late.json()["fire_times"]
    assert times
    assert all(t["local"][5:10] == "02-29" for t in times)


def test_event_idempotency_header_is_bounded(client: Client) -> None:
    response = client.post("/events", json={"type": "x.y", "data": {}}, headers={"Idempotency-Key": "k" * 300})
    assert fields(response) == ["Idempotency-Key"]  # as POST /notify names the header it refuses


SLOW = (
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(20) %}{% endfor %}{% endfor %}{% endfor %}"
)
BLANK = "{% if missed > 99 %}catch-up{% endif %}"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"body": SLOW}, "body", "budget"),
        ({"subject": "{{ 'x'.ljust(50000000) }}"}, "subject", "ljust"),
        ({"recipients": ["ops", "{{ '%*s'|format(30000000, 'x') }}"]}, "recipients[1]", "width"),
        ({"body": BLANK}, "body", "empty body"),
        ({"body": "{{ '   ' }}"}, "body", "empty body"),
        ({"event": "order.shipped", "schedule": None, "body": "{% if data.urgent %}now{% endif %}"}, "body", "empty"),
    ],
)
def test_templates_over_budget_or_blank_are_refused_at_save(
    client: Client, change: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/rules", json={**DAILY, **change})
    assert fields(response) == [field]
    assert words in response.json()["errors"][0]["message"]
    rule = client.post("/rules", json=DAILY).json()
    patched = client.patch(f"/rules/{rule['id']}", json=change)
    assert fields(patched) == [field]


def test_event_rules_are_test_rendered_on_sample_data(client: Client) -> None:
    ok = client.post("/rules", json={**SHIPPED, "body": "Order {{ data.order.id }} for {{ data.customer.name }}"})
    assert ok.status_code == 201, ok.text  # missing keys are the event's business, not the rule's


def _slow_rule(client: Client, pool: Pool, at: datetime, name: str = "slow") -> dict[str, Any]:
    rule = client.post("/rules", json={**DAILY, "name": name, "schedule": "* * * * *", "timezone": "UTC"}).json()
    with pool.connection() as conn:  # saved before templates were test-rendered at save
        conn.execute("UPDATE rules SET body = %s WHERE id = %s", (SLOW, rule["id"]))
    _set_next(pool, rule["id"], at)
    return rule


def _tick(settings: Settings, pool: Pool, now: datetime, bound: float = 10.0) -> int:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(RuleScheduler(settings, pool).fire_due(now)), daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"the tick did not finish within {bound} s"
    return result[0]


def test_a_rule_over_budget_fails_its_firing_and_the_tick_goes_on(
    client: Client, settings: Settings, pool: Pool
) -> None:
    now = datetime(2030, 6, 3, 10, 0, 30, tzinfo=UTC)
    first = datetime(2030, 6, 3, 10, 1, tzinfo=UTC)
    slow = _slow_rule(client, pool, first)
    good = client.post("/rules", json={**DAILY, "name": "good", "schedule": "* * * * *", "timezone": "UTC"}).json()
    _set_next(pool, good["id"], first)
    assert _tick(settings, pool, now) == 4  # two firings (10:01, 10:02) of each rule
    assert {n["status"] for n in _fired(pool, good["id"])} == {"scheduled"}
    failed = _fired(pool, slow["id"])
    assert {n["status"] for n in failed} == {"failed"}
    assert all("budget of 50 ms" in n["last_error"] for n in failed)
    shown = client.get(f"/rules/{slow['id']}").json()
    assert shown["enabled"] is True
    assert shown["failures"] == 1
    assert shown["disabled_reason"] is None


def test_a_rule_that_fails_repeatedly_is_disabled_with_the_reason(
    client: Client, settings: Settings, pool: Pool
) -> None:
    slow = _slow_rule(client, pool, datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    for minute in range(5):
        _tick(settings, pool, datetime(2030, 6, 3, 10, 2 * minute, 30, tzinfo=UTC))
    shown = client.get(f"/rules/{slow['id']}").json()
    assert shown["enabled"] is False
    assert shown["next_fire_at"] is None
    assert "5 consecutive failed firings" in shown["disabled_reason"]
    assert "budget of 50 ms" in shown["disabled_reason"]
    assert client.patch(f"/rules/{slow['id']}", json={"enabled": True}).status_code == 422  # still over budget
    fixed = client.patch(f"/rules/{slow['id']}", json={"enabled": True, "body": "fine now"}).json()
    assert fixed["enabled"] is True
    assert fixed["disabled_reason"] is None
    assert fixed["failures"] == 0


@pytest.mark.parametrize("method", ["delete", "patch"])
def test_a_slow_firing_never_holds_up_a_change_of_its_rule(
    client: Client, settings: Settings, pool: Pool, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from notifier import templates
    from notifier.settings import TemplateSettings

    slow = _slow_rule(client, pool, datetime.now(UTC) + timedelta(seconds=30))
    rendering = threading.Event()
    render = templates.render

    def observed(*args: Any, **kwargs: Any) -> str:
        rendering.set()
        return render(*args, **kwargs)

    monkeypatch.setattr(templates, "render", observed)
    patient = msgspec.structs.replace(settings, template=TemplateSettings(render_budget=1.5))
    tick = threading.Thread(target=lambda: RuleScheduler(patient, pool).fire_due(), daemon=True)
    tick.start()
    assert rendering.wait(10), "the tick never rendered"
    started = time.perf_counter()
    if method == "delete":
        assert client.delete(f"/rules/{slow['id']}").status_code == 204
    else:
        assert client.patch(f"/rules/{slow['id']}", json={"body": "changed"}).status_code == 200
    assert time.perf_counter() - started < 1.0
    tick.join(15)
    assert not tick.is_alive()
    assert all(n["status"] != "scheduled" for n in _fired(pool, slow["id"]))  # the stale render was not written


def test_a_blank_render_at_firing_fails_that_notification(client: Client, settings: Settings, pool: Pool) -> None:
    rule = client.post("/rules", json={**DAILY, "schedule": "* * * * *", "timezone": "UTC"}).json()
    with pool.connection() as conn:  # saved before bodies were test-rendered at save
        conn.execute("UPDATE rules SET body = %s WHERE id = %s", (BLANK, rule["id"]))
    _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 1, tzinfo=UTC))
    RuleScheduler(settings, pool).fire_due(datetime(2030, 6, 3, 10, 0, 30, tzinfo=UTC))
    fired = _fired(pool, rule["id"])
    assert fired
    assert {(n["status"], n["last_error"]) for n in fired} == {("failed", "body: the template rendered an empty body")}


def test_one_bad_recipient_never_disables_its_rule(client: Client, settings: Settings, pool: Pool) -> None:
    bad = {"channel": "webhook", "recipients": ["https://audit.example/x", "{{ rule.name }}"]}  # not a URL
    rule = client.post("/rules", json={**DAILY, **bad, "schedule": "* * * * *", "timezone": "UTC"}).json()
    for minute in range(6):
        _set_next(pool, rule["id"], datetime(2030, 6, 3, 10, 2 * minute + 1, tzinfo=UTC))
        RuleScheduler(settings, pool).fire_due(datetime(2030, 6, 3, 10, 2 * minute, 30, tzinfo=UTC))
    shown = client.get(f"/rules/{rule['id']}").json()
    assert shown["enabled"] is True
    assert shown["failures"] == 0
    statuses = [n["status"] for n in _fired(pool, rule["id"])]
    assert statuses.count("scheduled") == statuses.count("failed") > 0


def test_the_rule_schema_shows_why_a_rule_was_disabled(client: Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    rule = schema["components"]["schemas"]["Rule"]["properties"]
    assert {"failures", "disabled_reason"} <= set(rule)
