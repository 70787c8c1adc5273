"""Rules: recurring (a cron ``schedule`` in a ``timezone``) or event-triggered (an ``event`` type).

Every firing of a rule becomes one notification per recipient. Which firings a scheduler tick
creates is decided here, from the current time it is given (:func:`plan_firings`), so that days
and daylight-saving changes are tested without waiting.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec

from notifier import templates
from notifier.cron import CronSchedule
from notifier.domain.addresses import PUBLIC_ONLY, AddressPolicy
from notifier.domain.notifications import (
    MAX_BODY_LENGTH,
    MAX_METADATA_BYTES,
    MAX_RECIPIENT_LENGTH,
    MAX_SUBJECT_LENGTH,
    Channel,
    NewNotification,
    check_json_text,
    check_single_line,
    check_text,
    normalise_recipient,
    utc,
    validate,
)
from notifier.errors import InvalidNotification

MAX_RECIPIENTS = 1000
RULE_FAILURE_LIMIT = 5
"""Consecutive failed firings after which a schedule rule is disabled, with the reason."""
EVENT_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$")


class Misfire(enum.StrEnum):
    """What a schedule does about firings missed while nothing was running."""

    SKIP = "skip"
    """Drop them."""
    ONCE = "once"
    """Fire once for all of them, if the latest is within the grace window (the default)."""


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    schedule: str | None
    event: str | None
    timezone: str
    starts_at: datetime | None
    ends_at: datetime | None
    channel: Channel
    recipients: list[str]
    subject: str | None
    body: str
    metadata: dict[str, Any]
    enabled: bool
    misfire: Misfire
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime
    revision: int = 1
    """Counts changes to the rule; its firings' idempotency keys include it."""
    failures: int = 0
    """Consecutive firings that failed; at :data:`RULE_FAILURE_LIMIT` the scheduler disables the rule."""
    disabled_reason: str | None = None
    """Why the scheduler disabled the rule; cleared when it is enabled again."""

    def cron(self) -> CronSchedule:
        assert self.schedule is not None, "an event rule has no schedule"
        return CronSchedule.parse(self.schedule, self.timezone)


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Expression = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Zone = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Recipients = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECIPIENT_LENGTH)]],
    msgspec.Meta(min_length=1, max_length=1000),
]
Subject = Annotated[str, msgspec.Meta(max_length=MAX_SUBJECT_LENGTH)]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_LENGTH)]


class NewRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rule as a client defines it; :func:`validate_rule` checks what types cannot."""

    name: Name
    channel: Channel
    recipients: Recipients
    body: Body
    schedule: Expression | None = None
    event: Expression | None = None
    timezone: Zone = "UTC"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    subject: Subject | None = None
    metadata: dict[str, Any] = {}
    enabled: bool = True
    misfire: Misfire = Misfire.ONCE


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def validate_rule(new: NewRule, policy: AddressPolicy = PUBLIC_ONLY) -> NewRule:
    """Check a rule before it is saved; errors name the field (``recipients[2]``, ``body``).

    A literal webhook recipient must be one ``policy`` lets the channel reach; a templated one is
    checked when it is rendered, at each firing.
    """
    for field in ("name", "schedule", "event", "timezone", "subject", "body"):
        value = getattr(new, field)
        if value is not None:
            check_text(field, value)
    if not new.name.strip():
        raise InvalidNotification("name", "must not be blank")
    if (new.schedule is None) == (new.event is None):
        raise InvalidNotification("schedule", "give exactly one of schedule (a cron expression) and event")
    CronSchedule.parse(new.schedule or "@daily", new.timezone)  # checks the expression and the zone
    if new.event is not None and not EVENT_TYPE.match(new.event):
        raise InvalidNotification("event", "must be 1-200 letters, digits, '_', '.', ':' or '-'")
    starts_at = None if new.starts_at is None else utc("starts_at", new.starts_at)
    ends_at = None if new.ends_at is None else utc("ends_at", new.ends_at)
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise InvalidNotification("ends_at", "must be after starts_at")
    if not 1 <= len(new.recipients) <= MAX_RECIPIENTS:
        raise InvalidNotification("recipients", f"must list 1 to {MAX_RECIPIENTS} recipients")
    recipients = []
    for i, recipient in enumerate(new.recipients):
        field = f"recipients[{i}]"
        check_text(field, recipient)
        if is_template(recipient):
            templates.check(field, recipient)
            recipients.append(recipient)
        else:
            try:
                recipients.append(normalise_recipient(new.channel, recipient, policy))
            except InvalidNotification as exc:
                raise InvalidNotification(field, exc.reason) from None
    if new.subject is not None:
        check_single_line("subject", new.subject)
        templates.check("subject", new.subject)
    if new.channel is Channel.EMAIL and not new.subject:
        raise InvalidNotification("subject", "is required for email")
    templates.check("body", new.body)
    if len(msgspec.json.encode(new.metadata)) > MAX_METADATA_BYTES:
        raise InvalidNotification("metadata", f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
    check_json_text("metadata", new.metadata)
    return msgspec.structs.replace(new, recipients=recipients, starts_at=starts_at, ends_at=ends_at)


class RulePatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial update: the fields given replace the rule's."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    schedule: Expression | msgspec.UnsetType | None = msgspec.UNSET
    event: Expression | msgspec.UnsetType | None = msgspec.UNSET
    timezone: Zone | msgspec.UnsetType = msgspec.UNSET
    starts_at: datetime | msgspec.UnsetType | None = msgspec.UNSET
    ends_at: datetime | msgspec.UnsetType | None = msgspec.UNSET
    channel: Channel | msgspec.UnsetType = msgspec.UNSET
    recipients: Recipients | msgspec.UnsetType = msgspec.UNSET
    subject: Subject | msgspec.UnsetType | None = msgspec.UNSET
    body: Body | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    misfire: Misfire | msgspec.UnsetType = msgspec.UNSET

    def apply(self, rule: Rule) -> NewRule:
        fields = {f: getattr(rule, f) for f in NewRule.__struct_fields__}
        fields.update({f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not msgspec.UNSET})
        return NewRule(**fields)

    def reschedules(self) -> bool:
        """Whether the rule's next firing must be computed anew (from now)."""
        return any(
            getattr(self, f) is not msgspec.UNSET for f in ("schedule", "timezone", "starts_at", "ends_at", "enabled")
        )


def first_firing(schedule: CronSchedule, *, now: datetime, starts_at: datetime | None) -> datetime:
    """The first firing a new (or rescheduled) rule waits for: after now, and not before ``starts_at``."""
    start = now if starts_at is None or starts_at <= now else starts_at - timedelta(microseconds=1)
    return schedule.next_after(start)


class Firing(msgspec.Struct, frozen=True):
    at: datetime
    """The instant the rule was due to fire (the notifications' ``send_at``)."""
    missed: int = 0
    """For a catch-up firing under ``once``: how many missed firings it stands for."""


def plan_firings(
    schedule: CronSchedule,
    *,
    next_fire_at: datetime,
    now: datetime,
    lookahead: timedelta,
    misfire: Misfire,
    grace: timedelta,
    late_after: timedelta,
    ends_at: datetime | None,
) -> tuple[list[Firing], datetime | None]:
    """The firings to turn into notifications now, and the rule's next ``next_fire_at``.

    Firings due up to ``now + lookahead`` are planned ahead, so their notifications are in
    PostgreSQL before they are due. A firing more than ``late_after`` in the past was missed while
    nothing ran: ``skip`` drops it; ``once`` fires once for the missed firings within ``grace``,
    at the latest of them (``missed`` counts them); older ones are dropped. The next
    ``next_fire_at`` is ``None`` once ``ends_at`` is passed.
    """
    horizon = now + lookahead
    missed: list[datetime] = []
    on_time: list[Firing] = []
    at: datetime | None = next_fire_at
    if next_fire_at < now - grace:
        # Firings older than the grace window are dropped under either policy: skip straight past
        # them rather than step through a long outage one firing at a time.
        at = schedule.next_after(now - grace - timedelta(microseconds=1))
    while at is not None and at <= horizon:
        if ends_at is not None and at > ends_at:
            at = None
            break
        if at < now - late_after:
            missed.append(at)
        else:
            on_time.append(Firing(at))
        at = schedule.next_after(at)
    if at is not None and ends_at is not None and at > ends_at:
        at = None
    planned: list[Firing] = []
    if missed and misfire is Misfire.ONCE and now - missed[-1] <= grace:
        planned.append(Firing(missed[-1], missed=len(missed)))
    return planned + on_time, at


class Materialised(msgspec.Struct, frozen=True, kw_only=True):
    """One notification a firing produces, or why it could not be produced (``failure``)."""

    notification: NewNotification
    failure: str | None = None


def materialise(
    rule: Rule,
    *,
    context: dict[str, Any],
    key: str,
    send_at: datetime | None,
    about: dict[str, Any] | None = None,
    policy: AddressPolicy = PUBLIC_ONLY,
    budget: float = templates.DEFAULT_BUDGET,
) -> list[Materialised]:
    """One notification per recipient, rendered against ``context``, each template within ``budget``.

    ``metadata.rule`` records the rule (and ``about``, what the firing was); ``key`` makes the
    firing's idempotency keys: the same firing materialised twice (two
    schedulers, an event replayed) yields the same keys, which the database keeps unique. A
    template that cannot be rendered, one over its budget, a body that renders blank, or a
    rendered recipient that is not valid for the channel (a webhook URL ``policy`` refuses among
    them), yields a notification that fails with the reason instead of one sent half-rendered.
    Subject and body are rendered once per firing (they see the same context for every
    recipient); after one render over budget the firing's remaining recipients are not rendered
    but fail with the same reason, so a firing costs at most a few budgets.
    """
    produced = []
    metadata = {**rule.metadata, "rule": {"id": str(rule.id), "name": rule.name, **(about or {})}}
    shared: str | None = None
    subject: str | None = None
    body = ""
    try:
        subject = None if rule.subject is None else templates.render("subject", rule.subject, context, budget=budget)
        body = templates.render("body", rule.body, context, budget=budget)
        if not body.strip():
            shared = "body: the template rendered an empty body"
    except templates.TemplateRenderError as exc:
        shared = str(exc)
    for i, template in enumerate(rule.recipients):
        digest = hashlib.sha256(template.encode()).hexdigest()[:16]
        base = NewNotification(
            channel=rule.channel,
            recipient=template,
            subject=rule.subject,
            body=rule.body,
            send_at=send_at,
            metadata=metadata,
            idempotency_key=f"{key}:{digest}",
        )
        if shared is not None:
            produced.append(Materialised(notification=base, failure=shared))
            continue
        try:
            recipient = templates.render(f"recipients[{i}]", template, context, budget=budget)
            rendered = msgspec.structs.replace(base, recipient=recipient, subject=subject, body=body)
            produced.append(Materialised(notification=validate(rendered, policy)))
        except templates.TemplateBudgetError as exc:
            shared = str(exc)
            produced.append(Materialised(notification=base, failure=shared))
        except (templates.TemplateRenderError, InvalidNotification) as exc:
            produced.append(Materialised(notification=base, failure=str(exc)))
    return produced


SAMPLE_ID = "00000000-0000-4000-8000-000000000000"


def sample_context(new: NewRule, *, now: datetime) -> dict[str, Any]:
    """What a save-time test render sees: a schedule rule's real context at ``now``; for an event
    rule, the event's fields and ``data`` as :class:`~notifier.templates.Sample`, where every key
    exists, reads as ``sample`` and is false."""
    if new.event is not None:
        return {
            "event": {"id": SAMPLE_ID, "type": new.event, "created_at": now.isoformat()},
            "data": templates.Sample(name="data"),
        }
    local = now.astimezone(ZoneInfo(new.timezone))
    return {
        "rule": {"id": SAMPLE_ID, "name": new.name},
        "fire_time": now.isoformat(),
        "local_time": local.isoformat(),
        "missed": 0,
    }


def check_renders(new: NewRule, *, now: datetime, budget: float) -> None:
    """Test-render a (validated) rule against :func:`sample_context`, as it is saved.

    Refuses, naming the field, a template over its budget (time, size or a sandbox bound) and a
    body that renders blank. Other render errors (a missing key, a type error) may depend on the
    data the rule will see, so they are left to fail the notification when it fires.
    """
    context = sample_context(new, now=now)
    fields = [("subject", new.subject), ("body", new.body)]
    fields += [(f"recipients[{i}]", r) for i, r in enumerate(new.recipients) if is_template(r)]
    for field, source in fields:
        if source is None:
            continue
        try:
            output = templates.render(field, source, context, budget=budget)
        except templates.TemplateBudgetError as exc:
            raise InvalidNotification(field, exc.reason) from None
        except templates.TemplateRenderError:
            continue
        if field == "body" and not output.strip():
            raise InvalidNotification("body", "renders an empty body (tried on sample data)")
