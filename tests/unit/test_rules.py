"""plan_firings and validate_rule, with the current time as a parameter."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from notifier.cron import CronSchedule
from notifier.domain import Channel, Firing, Misfire, NewRule, Rule, materialise, plan_firings, validate_rule
from notifier.domain.rules import check_renders
from notifier.errors import InvalidNotification

MINUTE = timedelta(minutes=1)


def plan(
    expression: str, zone: str, next_fire_at: datetime, now: datetime, **kw: object
) -> tuple[list[Firing], datetime | None]:
    options: dict[str, object] = {
        "lookahead": 2 * MINUTE,
        "misfire": Misfire.ONCE,
        "grace": timedelta(hours=1),
        "late_after": MINUTE,
        "ends_at": None,
        **kw,
    }
    return plan_firings(CronSchedule.parse(expression, zone), next_fire_at=next_fire_at, now=now, **options)  # type: ignore[arg-type]


def test_plans_what_falls_within_the_lookahead() -> None:
    now = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    firings, following = plan("* * * * *", "UTC", datetime(2030, 1, 1, 12, 1, tzinfo=UTC), now)
    assert [f.at for f in firings] == [datetime(2030, 1, 1, 12, 1, tzinfo=UTC), datetime(2030, 1, 1, 12, 2, tzinfo=UTC)]
    assert following == datetime(2030, 1, 1, 12, 3, tzinfo=UTC)


def test_a_firing_late_by_less_than_a_tick_is_not_missed() -> None:
    now = datetime(2030, 1, 1, 12, 0, 40, tzinfo=UTC)
    firings, _ = plan("0 12 * * *", "UTC", datetime(2030, 1, 1, 12, 0, tzinfo=UTC), now)
    assert firings == [Firing(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))]


@pytest.mark.parametrize(
    ("misfire", "grace", "expected"),
    [
        (Misfire.ONCE, timedelta(hours=1), [Firing(datetime(2030, 1, 1, 11, 55, tzinfo=UTC), missed=6)]),
        (Misfire.ONCE, timedelta(minutes=2), []),  # the latest missed firing is 3.5 minutes old
        (Misfire.SKIP, timedelta(hours=1), []),
    ],
)
def test_missed_firings(misfire: Misfire, grace: timedelta, expected: list[Firing]) -> None:
    now = datetime(2030, 1, 1, 11, 58, 30, tzinfo=UTC)
    firings, following = plan(
        "*/5 * * * *", "UTC", datetime(2030, 1, 1, 11, 30, tzinfo=UTC), now, misfire=misfire, grace=grace
    )
    assert firings == [*expected, Firing(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))]
    assert following == datetime(2030, 1, 1, 12, 5, tzinfo=UTC)


def test_ends_at_stops_the_schedule() -> None:
    now = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    firings, following = plan(
        "* * * * *",
        "UTC",
        datetime(2030, 1, 1, 12, 1, tzinfo=UTC),
        now,
        ends_at=datetime(2030, 1, 1, 12, 1, tzinfo=UTC),
    )
    assert [f.at for f in firings] == [datetime(2030, 1, 1, 12, 1, tzinfo=UTC)]
    assert following is None


def test_daily_rule_across_berlin_spring_forward_fires_once_per_day() -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: that day's firing is at 03:00 local."""
    rule_schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    at = rule_schedule.next_after(datetime(2026, 3, 27, 12, tzinfo=UTC))
    planned: list[datetime] = []
    now = datetime(2026, 3, 27, 12, tzinfo=UTC)
    while now < datetime(2026, 3, 31, tzinfo=UTC):
        firings, following = plan_firings(
            rule_schedule,
            next_fire_at=at,
            now=now,
            lookahead=2 * MINUTE,
            misfire=Misfire.ONCE,
            grace=timedelta(hours=1),
            late_after=MINUTE,
            ends_at=None,
        )
        planned += [f.at for f in firings]
        assert following is not None
        at = following
        now += MINUTE  # a tick every minute, four days of them
    assert planned == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_new_york_fall_back_fires_once() -> None:
    rule_schedule = CronSchedule.parse("30 1 * * *", "America/New_York")
    times = list(rule_schedule.between(datetime(2026, 10, 31, 12, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC)))
    assert times == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 2, 6, 30, tzinfo=UTC)]


RULE = NewRule(name="r", channel=Channel.WEBHOOK, recipients=["https://x.example/h"], body="b", schedule="@daily")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": None}, "schedule"),
        ({"event": "order.shipped"}, "schedule"),
        ({"recipients": ["ftp://x"]}, "recipients[0]"),
        ({"recipients": ["https://ok.example", "{{ x"]}, "recipients[1]"),
        ({"name": "  "}, "name"),
        ({"body": "{% for %}"}, "body"),
        ({"timezone": "Nowhere/City"}, "timezone"),
    ],
)
def test_validate_rule_names_the_field(changes: dict[str, object], field: str) -> None:
    import msgspec

    with pytest.raises(InvalidNotification) as caught:
        validate_rule(msgspec.structs.replace(RULE, **changes))
    assert caught.value.field == field


def test_templated_recipients_are_kept_as_written() -> None:
    import msgspec

    rule = validate_rule(msgspec.structs.replace(RULE, recipients=["{{ data.hook }}", "HTTPS://X.example/h"]))
    assert rule.recipients[0] == "{{ data.hook }}"


def test_a_year_long_outage_is_skipped_not_stepped_through() -> None:
    now = datetime(2031, 1, 1, 12, 0, 30, tzinfo=UTC)
    firings, following = plan("* * * * *", "UTC", datetime(2030, 1, 1, tzinfo=UTC), now, grace=timedelta(minutes=10))
    # Only the firings inside the grace window count; the year before it is dropped wholesale.
    assert firings[0] == Firing(datetime(2031, 1, 1, 11, 59, tzinfo=UTC), missed=9)
    assert following == datetime(2031, 1, 1, 12, 3, tzinfo=UTC)


def _rule(**kw: object) -> Rule:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    fields: dict[str, object] = {
        "id": uuid.uuid4(), "name": "r", "schedule": "@daily", "event": None, "timezone": "UTC", "starts_at": None,
        "ends_at": None, "channel": Channel.LOG, "recipients": ["a", "b"], "subject": None, "body": "b",
        "metadata": {}, "enabled": True, "misfire": Misfire.ONCE, "next_fire_at": now, "created_at": now,
        "updated_at": now, **kw,
    }  # fmt: skip
    return Rule(**fields)  # type: ignore[arg-type]


def test_a_blank_render_fails_every_notification_of_the_firing() -> None:
    made = materialise(_rule(body="{% if missed %}late{% endif %}  "), context={"missed": 0}, key="k", send_at=None)
    assert [m.failure for m in made] == ["body: the template rendered an empty body"] * 2


def test_after_one_render_over_budget_the_firing_renders_no_more() -> None:
    slow = "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"
    rule = _rule(recipients=[slow, slow, slow, "c"])
    started = time.perf_counter()
    made = materialise(rule, context={}, key="k", send_at=None, budget=0.05)
    assert time.perf_counter() - started < 0.5
    assert all(m.failure and "budget of 50 ms" in m.failure for m in made)


def test_save_time_renders_refuse_what_is_over_budget_or_blank() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    check_renders(RULE, now=now, budget=0.05)
    with pytest.raises(InvalidNotification) as caught:
        check_renders(msgspec.structs.replace(RULE, subject="{{ 'x'.ljust(10**8) }}"), now=now, budget=0.05)
    assert caught.value.field == "subject"
    event_rule = msgspec.structs.replace(RULE, schedule=None, event="order.shipped", body="{{ data.a.b }}")
    check_renders(event_rule, now=now, budget=0.05)  # sample data: every key exists
    with pytest.raises(InvalidNotification, match="empty body"):
        check_renders(msgspec.structs.replace(event_rule, body="{{ data.a|default('') }}"), now=now, budget=0.05)
