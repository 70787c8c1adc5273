"""Cron schedules for recurring rules, read on the wall clock of the rule's time zone. Pure: no I/O.

A :class:`CronSchedule` is a cron expression bound to an IANA time zone. Every function that
needs "now" takes it as an argument, so daylight-saving changes are tested without waiting.

Syntax
    Exactly five fields, ``minute hour day-of-month month day-of-week``, separated by ASCII
    whitespace: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or ``jan``-``dec``,
    day-of-week 0-7 or ``sun``-``sat`` (0 and 7 are both Sunday). Each field is ``*`` or a
    comma-separated list of values, ranges (``a-b``) and steps (``*/n``, ``a-b/n``, ``a/n``);
    names are case-insensitive. A range that runs backwards wraps around (``fri-mon``,
    ``22-2``). ``L`` alone in day-of-month is the last day of the month. The aliases
    ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily`` ``@midnight`` ``@hourly``
    stand for their usual five fields. Refused with :class:`~notifier.errors.InvalidNotification`
    on ``schedule``: a seconds or year field, values out of range, ``@reboot``, croniter's
    extensions (``#``, ``W``, ``?``, ``L<n>``, hashed ``H`` and random ``R``), and expressions
    that can never fire (``0 0 30 2 *``). An unknown zone, or ``localtime`` (whatever the host
    is set to), is refused on ``timezone``.

Semantics
    - The expression is matched against the zone's *wall clock*: the naive local times it
      names are enumerated (croniter, on naive datetimes) and each is then mapped to a UTC
      instant. Firings are returned as aware UTC datetimes, to the minute.
    - A local time that does not exist (the spring-forward gap: 02:30 on 2026-03-08 in
      America/New_York) fires once, at the end of the gap: the transition instant, 03:00 local.
    - A local time that happens twice (fall back: 01:30 on 2026-11-01 in New York) fires once,
      at its first occurrence (``fold=0``). So on that day an hourly rule skips the repeated
      hour, and a daily 01:30 rule fires 25 hours after the one before.
    - Firings are strictly increasing and never repeat: local times that map to the same
      instant fire once (``*/30`` across a spring gap: 01:30, then 02:00, 02:30 and 03:00 are
      all the transition instant, then 03:30).
    - When both day-of-month and day-of-week are restricted, a day matches if *either* does
      (cron's usual OR): ``0 9 13 * fri`` fires on every 13th and every Friday.
    - "After" is strict and "until" inclusive: :meth:`CronSchedule.next_after` never returns
      ``after`` itself, and :meth:`CronSchedule.between` yields ``start < t <= end``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice, takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from notifier.errors import InvalidNotification

MAX_EXPRESSION_LENGTH = 1024

ALIASES: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DAYS = {name: number for number, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS_SHAPE = "minute hour day-of-month month day-of-week"
_SPLIT = re.compile(r"\S+", re.ASCII)
_ITEM = re.compile(r"(?:(?P<star>\*)|(?P<low>[0-9a-z]+)(?:-(?P<high>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?", re.ASCII)
_EXTENSION = re.compile(r"[#?]|^[hr](?:\(|/|$)|^[0-9]*w[0-9]*$|^l[0-9]", re.ASCII)
_REFUSED_ZONES = re.compile(r"localtime|posixrules|right/.*")
_PROBE_START = datetime(2000, 1, 1)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int]
    """Values by name (``jan``, ``sun``), lower case."""

    def value(self, text: str) -> int:
        if text.isdigit():
            number = int(text)
        elif text in self.names:
            number = self.names[text]
        else:
            first, *_, last = self.names or ("", "")
            spelled = f" or a name ({first}-{last})" if self.names else ""
            raise InvalidNotification("schedule", f"{self.name} {text!r} is not a number{spelled}")
        if not self.low <= number <= self.high:
            raise InvalidNotification("schedule", f"{self.name} {number} is out of range {self.low}-{self.high}")
        return number


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _DAYS),
)
_DAY_OF_MONTH, _DAY_OF_WEEK = _FIELDS[2], _FIELDS[4]


def _normalise_item(spec: _Field, item: str) -> str:
    """One list item as plain numbers croniter reads the way cron does.

    croniter reads a one-value range (``5-5``, ``sun-sun``, ``7-7``) as the whole field, so
    those become the single value; day-of-week 7 at the start of a range or step becomes 0.
    """
    if spec is _DAY_OF_MONTH and item == "l":
        return "l"
    if _EXTENSION.search(item):
        raise InvalidNotification(
            "schedule", f"{spec.name} {item!r} uses a croniter extension (# W ? L<n> H R) that is not supported"
        )
    match = _ITEM.fullmatch(item)
    if match is None:
        raise InvalidNotification(
            "schedule", f"{spec.name} {item!r} is not a value, a range (a-b) or a step (*/n, a-b/n, a/n)"
        )
    step = ""
    if match["step"] is not None:
        if int(match["step"]) < 1:
            raise InvalidNotification("schedule", f"{spec.name} {item!r}: a step must be at least 1")
        step = f"/{int(match['step'])}"
    if match["star"]:
        return f"*{step}"
    written_low = spec.value(match["low"])
    low = 0 if spec is _DAY_OF_WEEK and written_low == 7 else written_low
    if match["high"] is None:
        return f"{low}{step}"
    high = spec.value(match["high"])
    if high in (low, written_low):
        return str(low)
    return f"{low}-{high}{step}"


def _normalise(expression: str) -> str:
    """The five-field, all-numeric form of ``expression`` given to croniter; refuses what cron would."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise InvalidNotification("schedule", f"must be at most {MAX_EXPRESSION_LENGTH} characters")
    text = expression.strip().lower()
    if not text:
        raise InvalidNotification("schedule", f"must not be blank: give five fields ({_FIELDS_SHAPE}) or an alias")
    if text.startswith("@"):
        if text not in ALIASES:
            raise InvalidNotification(
                "schedule", f"unknown alias {expression.strip()!r}: use one of {', '.join(ALIASES)}"
            )
        text = ALIASES[text]
    fields = _SPLIT.findall(text)
    if len(fields) != len(_FIELDS):
        extra = " (a seconds or year field is not supported)" if len(fields) in (6, 7) else ""
        raise InvalidNotification(
            "schedule", f"has {len(fields)} fields{extra}; give exactly five: {_FIELDS_SHAPE}, or an alias"
        )
    normalised = []
    for spec, text_field in zip(_FIELDS, fields, strict=True):
        items = text_field.split(",")
        if "" in items:
            raise InvalidNotification("schedule", f"{spec.name} {text_field!r} has an empty list item")
        normalised.append(",".join(_normalise_item(spec, item) for item in items))
    cron = " ".join(normalised)
    try:
        croniter(cron, _PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidNotification("schedule", "never fires: no month has that day-of-month") from None
    except CroniterError as exc:
        raise InvalidNotification("schedule", f"is not a valid cron expression ({exc})") from None
    return cron


def _zone(name: str) -> ZoneInfo:
    if _REFUSED_ZONES.fullmatch(name):
        raise InvalidNotification("timezone", f"{name!r} depends on the host; give an IANA name like Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidNotification(
            "timezone", f"{name[:100]!r} is not a known IANA time zone (like Europe/Berlin or UTC)"
        ) from None


def _as_utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _gap_end(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a gap closes, for a naive ``local`` time inside it: the transition.

    Read with the offset from after the transition ``local`` lands before it, and with the
    offset from before it lands at or after it; bisecting between the two finds the instant
    to the second, whatever the size of the gap (30 minutes on Lord Howe, a day on Samoa).
    """
    earlier, later = sorted(local.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    offset_before = earlier.astimezone(zone).utcoffset()
    low, high = int(earlier.timestamp()), int(later.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A cron expression on the wall clock of an IANA zone; see the module for the semantics.

    Build one with :meth:`parse`; constructing it directly validates the same way.
    """

    expression: str
    """As the user wrote it."""
    timezone: str = "UTC"
    """An IANA zone name."""
    _cron: str = field(init=False, repr=False, compare=False)
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cron", _normalise(self.expression))
        object.__setattr__(self, "_tz", _zone(self.timezone))

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSchedule:
        """Check ``expression`` and ``timezone``; raises :class:`InvalidNotification` naming the bad one."""
        return cls(expression, timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first firing strictly after the aware datetime ``after``, in UTC."""
        return next(self._firings(after))

    def between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every firing ``t`` with ``start < t <= end``, ascending, in UTC."""
        last = _as_utc("end", end)
        return takewhile(lambda instant: instant <= last, self._firings(start))

    def preview(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` firings strictly after ``after``, in UTC."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        return list(islice(self._firings(after), count))

    def _instant(self, local: datetime) -> datetime:
        """When the naive wall-clock time ``local`` fires: its first occurrence, or the gap's end."""
        instant = local.replace(tzinfo=self._tz, fold=0).astimezone(UTC)
        if instant.astimezone(self._tz).replace(tzinfo=None) == local:
            return instant
        return _gap_end(local, self._tz)

    def _firings(self, after: datetime) -> Iterator[datetime]:
        """Every firing after ``after``, checked now rather than at the first ``next()``.

        Starting from ``after``'s wall-clock time is safe: local-to-UTC is non-decreasing, and
        that time (read as its first occurrence) is at or before ``after``.
        """
        last = _as_utc("after", after)
        start = last.astimezone(self._tz).replace(tzinfo=None, fold=0)

        def firings(previous: datetime) -> Iterator[datetime]:
            local: datetime
            for local in croniter(self._cron, start).all_next(datetime):
                instant = self._instant(local)
                if instant > previous:
                    yield instant
                    previous = instant

        return firings(last)
