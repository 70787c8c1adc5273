"""Cron schedules: what is accepted, and the exact UTC instants they fire at, DST changes included."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from notifier.cron import ALIASES, CronSchedule
from notifier.errors import InvalidNotification

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def firings(expression: str, after: datetime, count: int, zone: str = "UTC") -> list[datetime]:
    return CronSchedule.parse(expression, zone).preview(after, count)


# Validation


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "*/15 9-17 * * mon-fri",
        "0 0 1,15 * *",
        "0 9 * JAN,jul SUN",
        "30 4 1-7 */2 1",
        "0 22-2 * * *",
        "10/20 * * * *",
        "0 9 * * 7",
        "0 0 L * *",
        "0 0 1,l * *",
        "0 12 29 2 *",
        "  0 9 * * *\t",
    ],
)
def test_accepts_five_field_expressions(expression: str) -> None:
    schedule = CronSchedule.parse(expression, BERLIN)
    assert schedule.expression == expression
    assert schedule.timezone == BERLIN


@pytest.mark.parametrize(
    ("alias", "same_as"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_an_alias_fires_like_its_five_fields(alias: str, same_as: str) -> None:
    after = utc(2026, 1, 7, 12, 30)
    assert firings(alias, after, 3, NEW_YORK) == firings(same_as, after, 3, NEW_YORK)
    assert CronSchedule.parse(alias).expression == alias


def test_every_alias_is_accepted() -> None:
    assert set(ALIASES) == {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
    for alias in ALIASES:
        CronSchedule.parse(alias)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "must not be blank"),
        ("   ", "must not be blank"),
        ("garbage", "has 1 fields"),
        ("* * * *", "has 4 fields"),
        ("* * * * * *", "has 6 fields (a seconds or year field is not supported)"),
        ("0 0 0 1 1 *", "has 6 fields (a seconds or year field"),
        ("0 0 1 1 * 2026 5", "has 7 fields"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * 0 *", "month 0 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0-99 * * *", "hour 99 is out of range 0-23"),
        ("0 0 * * funday", "day-of-week 'funday' is not a number or a name (sun-sat)"),
        ("0 0 * foo *", "month 'foo' is not a number or a name (jan-dec)"),
        ("0 0 * * monday", "day-of-week 'monday' is not a number"),
        ("a * * * *", "minute 'a' is not a number"),
        ("-1 * * * *", "minute '-1' is not a value, a range"),
        ("1.5 * * * *", "minute '1.5' is not a value, a range"),
        ("*-5 * * * *", "minute '*-5' is not a value, a range"),
        ("\uff10 0 * * *", "minute '\uff10' is not a value, a range"),
        ("*/0 * * * *", "a step must be at least 1"),
        ("1,,2 * * * *", "has an empty list item"),
        ("1, * * * *", "has an empty list item"),
        ("@reboot", "unknown alias '@reboot'"),
        ("@every 5m", "unknown alias"),
        ("H * * * *", "croniter extension"),
        ("R * * * *", "croniter extension"),
        ("H/15 * * * *", "croniter extension"),
        ("0 0 ? * mon", "croniter extension"),
        ("0 0 15W * *", "croniter extension"),
        ("0 0 * * mon#2", "croniter extension"),
        ("0 0 * * L5", "croniter extension"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 " * 600, "at most 1024 characters"),
    ],
)
def test_refuses_bad_expressions_on_the_schedule_field(expression: str, reason: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        CronSchedule.parse(expression)
    assert caught.value.field == "schedule"
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus", "", "America", "../etc/passwd", "/etc/localtime", "Europe/Berlin\x00", "localtime", "right/UTC"],
)
def test_refuses_unknown_zones_on_the_timezone_field(zone: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        CronSchedule.parse("0 9 * * *", zone)
    assert caught.value.field == "timezone"


def test_the_expression_is_checked_before_the_zone() -> None:
    with pytest.raises(InvalidNotification) as caught:
        CronSchedule.parse("61 * * * *", "Mars/Olympus")
    assert caught.value.field == "schedule"


def test_constructing_directly_validates_too() -> None:
    with pytest.raises(InvalidNotification):
        CronSchedule("61 * * * *", "UTC")
    assert CronSchedule("0 9 * * *") == CronSchedule.parse("0 9 * * *", "UTC")


def test_a_schedule_is_an_immutable_value() -> None:
    schedule = CronSchedule.parse("0 9 * * *", BERLIN)
    assert schedule == CronSchedule.parse("0 9 * * *", BERLIN)
    assert schedule != CronSchedule.parse("0 9 * * *", NEW_YORK)
    assert schedule != CronSchedule.parse("0 9 * * 1", BERLIN)
    assert len({schedule, CronSchedule.parse("0 9 * * *", BERLIN)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.expression = "0 10 * * *"  # type: ignore[misc]


# Firings in UTC


def test_daily_fires_strictly_after() -> None:
    assert firings("0 9 * * *", utc(2026, 1, 1, 8, 59), 2) == [utc(2026, 1, 1, 9), utc(2026, 1, 2, 9)]
    assert firings("0 9 * * *", utc(2026, 1, 1, 9), 1) == [utc(2026, 1, 2, 9)]
    assert firings("0 9 * * *", utc(2026, 1, 1, 9) + timedelta(seconds=30), 1) == [utc(2026, 1, 2, 9)]
    assert firings("0 9 * * *", utc(2026, 1, 1, 9) - timedelta(microseconds=1), 1) == [utc(2026, 1, 1, 9)]


def test_weekdays_skip_the_weekend() -> None:
    friday_noon = utc(2026, 1, 9, 12)
    assert firings("0 9 * * mon-fri", friday_noon, 6) == [
        utc(2026, 1, 12, 9),
        utc(2026, 1, 13, 9),
        utc(2026, 1, 14, 9),
        utc(2026, 1, 15, 9),
        utc(2026, 1, 16, 9),
        utc(2026, 1, 19, 9),
    ]


def test_monthly() -> None:
    assert firings("0 8 1 * *", utc(2026, 1, 1, 8), 3) == [utc(2026, 2, 1, 8), utc(2026, 3, 1, 8), utc(2026, 4, 1, 8)]


def test_the_31st_skips_short_months() -> None:
    assert firings("0 0 31 * *", utc(2026, 1, 1), 7) == [
        utc(2026, 1, 31),
        utc(2026, 3, 31),
        utc(2026, 5, 31),
        utc(2026, 7, 31),
        utc(2026, 8, 31),
        utc(2026, 10, 31),
        utc(2026, 12, 31),
    ]


def test_l_is_the_last_day_of_each_month() -> None:
    assert firings("0 0 L * *", utc(2028, 1, 1), 5) == [
        utc(2028, 1, 31),
        utc(2028, 2, 29),
        utc(2028, 3, 31),
        utc(2028, 4, 30),
        utc(2028, 5, 31),
    ]
    assert firings("0 0 l * *", utc(2026, 2, 1), 1) == [utc(2026, 2, 28)]


def test_leap_day_fires_only_in_leap_years() -> None:
    assert firings("0 12 29 2 *", utc(2026, 1, 1), 2) == [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)]
    assert firings("0 12 29 2 *", utc(2096, 3, 1), 1) == [utc(2104, 2, 29, 12)]


@pytest.mark.parametrize("expression", ["0 9 * * sun", "0 9 * * SUN", "0 9 * * 0", "0 9 * * 7", "0 9 * * 7-7"])
def test_every_spelling_of_sunday_fires_on_sundays(expression: str) -> None:
    assert firings(expression, utc(2026, 1, 5), 3) == [utc(2026, 1, 11, 9), utc(2026, 1, 18, 9), utc(2026, 1, 25, 9)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("5-5 * * * *", [utc(2026, 1, 5, 0, 5), utc(2026, 1, 5, 1, 5)]),
        ("0 9 * * sun-sun", [utc(2026, 1, 11, 9), utc(2026, 1, 18, 9)]),
        ("0 0 1-1 * *", [utc(2026, 2, 1), utc(2026, 3, 1)]),
        ("0 0 1 jan-jan *", [utc(2027, 1, 1), utc(2028, 1, 1)]),
    ],
)
def test_a_one_value_range_is_that_value(expression: str, expected: list[datetime]) -> None:
    """croniter alone reads ``5-5`` as the whole field (every minute)."""
    assert firings(expression, utc(2026, 1, 5), 2) == expected


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 9 * * 0-7", [0, 1, 2, 3, 4, 5, 6, 0]),
        ("0 9 * * sat-sun", [5, 6, 5, 6, 5, 6, 5, 6]),
        ("0 9 * * fri-mon", [0, 4, 5, 6, 0, 4, 5, 6]),
        ("0 9 * * 5-7", [4, 5, 6, 4, 5, 6, 4, 5]),
    ],
)
def test_day_of_week_ranges(expression: str, weekdays: list[int]) -> None:
    """Python weekdays: Monday is 0, Sunday 6. 2026-01-05 is a Monday."""
    assert [t.weekday() for t in firings(expression, utc(2026, 1, 5), 8)] == weekdays


def test_a_backwards_range_wraps_around() -> None:
    hours = [t.hour for t in firings("0 22-2 * * *", utc(2026, 1, 5, 3), 6)]
    assert hours == [22, 23, 0, 1, 2, 22]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    """The 13th of January 2026 is a Tuesday; every Friday fires as well."""
    assert firings("0 9 13 * fri", utc(2026, 1, 1), 5) == [
        utc(2026, 1, 2, 9),
        utc(2026, 1, 9, 9),
        utc(2026, 1, 13, 9),
        utc(2026, 1, 16, 9),
        utc(2026, 1, 23, 9),
    ]


def test_next_after_takes_any_aware_datetime_and_returns_utc() -> None:
    schedule = CronSchedule.parse("0 9 * * *")
    tokyo_nine = datetime(2026, 1, 5, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 00:00 UTC
    result = schedule.next_after(tokyo_nine)
    assert result == utc(2026, 1, 5, 9)
    assert result.tzinfo is UTC
    fixed = datetime(2026, 1, 5, 4, 0, tzinfo=timezone(timedelta(hours=-5)))  # 09:00 UTC
    assert schedule.next_after(fixed) == utc(2026, 1, 6, 9)
    assert schedule.next_after(fixed).tzinfo is UTC


def test_the_rule_zone_not_the_input_zone_decides() -> None:
    schedule = CronSchedule.parse("0 9 * * *", "Asia/Tokyo")
    assert schedule.next_after(utc(2026, 1, 5)) == utc(2026, 1, 6, 0)
    assert schedule.next_after(datetime(2026, 1, 5, 8, 59, tzinfo=ZoneInfo("Asia/Tokyo"))) == utc(2026, 1, 5, 0)


def test_naive_datetimes_are_refused() -> None:
    schedule = CronSchedule.parse("0 9 * * *")
    naive = datetime(2026, 1, 5, 9)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.between(naive, utc(2026, 1, 6))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.between(utc(2026, 1, 5), naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.preview(naive, 1)


# between and preview


def test_between_excludes_start_and_includes_end() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    assert list(hourly.between(utc(2026, 1, 5, 10), utc(2026, 1, 5, 13))) == [
        utc(2026, 1, 5, 11),
        utc(2026, 1, 5, 12),
        utc(2026, 1, 5, 13),
    ]
    assert list(hourly.between(utc(2026, 1, 5, 10), utc(2026, 1, 5, 10, 59))) == []
    assert list(hourly.between(utc(2026, 1, 5, 10), utc(2026, 1, 5, 10))) == []
    assert list(hourly.between(utc(2026, 1, 5, 13), utc(2026, 1, 5, 10))) == []


def test_between_accepts_other_zones_for_its_bounds() -> None:
    berlin = ZoneInfo(BERLIN)
    hourly = CronSchedule.parse("0 * * * *")
    start = datetime(2026, 1, 5, 11, tzinfo=berlin)  # 10:00 UTC
    end = datetime(2026, 1, 5, 14, tzinfo=berlin)  # 13:00 UTC
    assert list(hourly.between(start, end)) == [utc(2026, 1, 5, 11), utc(2026, 1, 5, 12), utc(2026, 1, 5, 13)]


def test_between_is_ascending_aware_utc() -> None:
    result = list(CronSchedule.parse("*/7 * * * *", NEW_YORK).between(utc(2026, 3, 7), utc(2026, 3, 10)))
    assert result == sorted(set(result))
    assert all(t.tzinfo is UTC for t in result)
    assert len(result) > 500


def test_preview_returns_count_firings() -> None:
    schedule = CronSchedule.parse("*/5 * * * *", BERLIN)
    after = utc(2026, 6, 1, 12, 3)
    five = schedule.preview(after, 5)
    assert five == [utc(2026, 6, 1, 12, minute) for minute in (5, 10, 15, 20, 25)]
    assert schedule.preview(after, 0) == []
    assert schedule.preview(after, 1) == [schedule.next_after(after)]
    assert list(schedule.between(after, five[-1])) == five


def test_preview_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="count"):
        CronSchedule.parse("@daily").preview(utc(2026, 1, 1), -1)


# Daylight saving time. New York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC),
# 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC). Berlin: 2026-03-29 02:00 CET -> 03:00 CEST
# (01:00 UTC), 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC).


@pytest.mark.parametrize(
    ("zone", "expression", "after", "expected"),
    [
        pytest.param(
            NEW_YORK,
            "30 2 * * *",
            utc(2026, 3, 6, 12),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
            id="new-york-daily-02:30-spring-fires-at-the-gap-end",
        ),
        pytest.param(
            NEW_YORK,
            "30 1 * * *",
            utc(2026, 3, 6, 12),
            [utc(2026, 3, 7, 6, 30), utc(2026, 3, 8, 6, 30), utc(2026, 3, 9, 5, 30)],
            id="new-york-daily-01:30-spring",
        ),
        pytest.param(
            NEW_YORK,
            "30 1 * * *",
            utc(2026, 10, 30, 12),
            [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
            id="new-york-daily-01:30-fall-fires-once-at-the-first",
        ),
        pytest.param(
            NEW_YORK,
            "30 2 * * *",
            utc(2026, 10, 30, 12),
            [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)],
            id="new-york-daily-02:30-fall",
        ),
        pytest.param(
            NEW_YORK,
            "0 * * * *",
            utc(2026, 3, 8, 4, 30),
            [utc(2026, 3, 8, 5), utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)],
            id="new-york-hourly-spring",
        ),
        pytest.param(
            NEW_YORK,
            "0 * * * *",
            utc(2026, 11, 1, 3, 30),
            [utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)],
            id="new-york-hourly-fall-skips-the-repeated-hour",
        ),
        pytest.param(
            NEW_YORK,
            "*/30 * * * *",
            utc(2026, 3, 8, 6, 15),
            [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8)],
            id="new-york-half-hourly-spring",
        ),
        pytest.param(
            NEW_YORK,
            "*/30 * * * *",
            utc(2026, 11, 1, 4, 45),
            [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7), utc(2026, 11, 1, 7, 30)],
            id="new-york-half-hourly-fall",
        ),
        pytest.param(
            BERLIN,
            "30 2 * * *",
            utc(2026, 3, 27, 12),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
            id="berlin-daily-02:30-spring-fires-at-the-gap-end",
        ),
        pytest.param(
            BERLIN,
            "30 2 * * *",
            utc(2026, 10, 23, 12),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
            id="berlin-daily-02:30-fall-fires-once-at-the-first",
        ),
        pytest.param(
            BERLIN,
            "30 1 * * *",
            utc(2026, 10, 23, 12),
            [utc(2026, 10, 23, 23, 30), utc(2026, 10, 24, 23, 30), utc(2026, 10, 26, 0, 30)],
            id="berlin-daily-01:30-fall",
        ),
        pytest.param(
            BERLIN,
            "0 * * * *",
            utc(2026, 3, 28, 23, 30),
            [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)],
            id="berlin-hourly-spring",
        ),
        pytest.param(
            BERLIN,
            "0 * * * *",
            utc(2026, 10, 24, 22, 30),
            [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)],
            id="berlin-hourly-fall-skips-the-repeated-hour",
        ),
        pytest.param(
            BERLIN,
            "*/30 * * * *",
            utc(2026, 3, 28, 23, 45),
            [utc(2026, 3, 29, 0), utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30)],
            id="berlin-half-hourly-spring",
        ),
        pytest.param(
            BERLIN,
            "*/30 * * * *",
            utc(2026, 10, 24, 23, 45),
            [utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2), utc(2026, 10, 25, 2, 30)],
            id="berlin-half-hourly-fall",
        ),
    ],
)
def test_daylight_saving_changes(zone: str, expression: str, after: datetime, expected: list[datetime]) -> None:
    assert firings(expression, after, len(expected), zone) == expected


@pytest.mark.parametrize(
    ("zone", "day", "expected"),
    [
        (NEW_YORK, datetime(2026, 3, 8), 46),
        (NEW_YORK, datetime(2026, 11, 1), 48),
        (NEW_YORK, datetime(2026, 11, 2), 48),
        (BERLIN, datetime(2026, 3, 29), 46),
        (BERLIN, datetime(2026, 10, 25), 48),
    ],
)
def test_half_hourly_firings_on_a_local_day(zone: str, day: datetime, expected: int) -> None:
    """23 hours fire 46 times; 25 fire 48, since the repeated hour fires once."""
    start = (day - timedelta(minutes=1)).replace(tzinfo=ZoneInfo(zone))
    end = (day + timedelta(days=1, minutes=-1)).replace(tzinfo=ZoneInfo(zone))
    result = list(CronSchedule.parse("*/30 * * * *", zone).between(start, end))
    assert len(result) == expected
    assert len(set(result)) == expected


def test_a_daily_rule_fires_every_day_of_a_month_with_a_gap() -> None:
    zone = ZoneInfo(NEW_YORK)
    march = CronSchedule.parse("30 2 * * *", NEW_YORK).between(
        datetime(2026, 3, 1, tzinfo=zone), datetime(2026, 4, 1, tzinfo=zone)
    )
    assert [t.astimezone(zone).day for t in march] == list(range(1, 32))


def test_from_inside_the_repeated_hour_the_first_occurrence_has_already_fired() -> None:
    second_one_ten = utc(2026, 11, 1, 6, 10)  # 01:10 EST, the second time 01:10 happens
    assert CronSchedule.parse("30 1 * * *", NEW_YORK).next_after(second_one_ten) == utc(2026, 11, 2, 6, 30)
    assert CronSchedule.parse("*/30 * * * *", NEW_YORK).next_after(second_one_ten) == utc(2026, 11, 1, 7)
    first_one_ten = utc(2026, 11, 1, 5, 10)  # 01:10 EDT
    assert CronSchedule.parse("30 1 * * *", NEW_YORK).next_after(first_one_ten) == utc(2026, 11, 1, 5, 30)


def test_the_gap_firing_is_not_repeated() -> None:
    schedule = CronSchedule.parse("30 2 * * *", NEW_YORK)
    assert schedule.next_after(utc(2026, 3, 8, 6, 59)) == utc(2026, 3, 8, 7)
    assert schedule.next_after(utc(2026, 3, 8, 7)) == utc(2026, 3, 9, 6, 30)


def test_a_half_hour_gap_ends_at_its_own_transition() -> None:
    """Lord Howe Island springs forward from 02:00 (+10:30) to 02:30 (+11:00) on 2026-10-04."""
    assert firings("15 2 * * *", utc(2026, 10, 2, 12), 3, "Australia/Lord_Howe") == [
        utc(2026, 10, 2, 15, 45),
        utc(2026, 10, 3, 15, 30),
        utc(2026, 10, 4, 15, 15),
    ]


def test_a_skipped_day_fires_once_when_the_next_day_begins() -> None:
    """Samoa skipped 2011-12-30 entirely, going from 23:59 on the 29th (-10:00) to the 31st (+14:00)."""
    assert firings("0 9 * * *", utc(2011, 12, 28, 12), 4, "Pacific/Apia") == [
        utc(2011, 12, 28, 19),
        utc(2011, 12, 29, 19),
        utc(2011, 12, 30, 10),
        utc(2011, 12, 30, 19),
    ]
