"""Rules: managing them (async, for the API) and firing the due ones (sync, for the scheduler tick)."""

from __future__ import annotations

import functools
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import anyio.to_thread

from notifier import templates
from notifier.channels import check_configured
from notifier.cron import CronSchedule
from notifier.domain import (
    Channel,
    Materialised,
    NewRule,
    Rule,
    RulePatch,
    Status,
    first_firing,
    materialise,
    plan_firings,
    validate_rule,
)
from notifier.domain.addresses import PUBLIC_ONLY, AddressPolicy
from notifier.domain.rules import RULE_FAILURE_LIMIT, check_renders
from notifier.errors import InvalidNotification, RuleNotFound, ServiceUnavailable
from notifier.observability import metrics, tracing
from notifier.services import now
from notifier.settings import Settings
from notifier.store import firings as firing_store
from notifier.store import rules as store
from notifier.store.delivery import Pool

logger = logging.getLogger("notifier.services.rules")

MAX_PREVIEW = 1000
LATE_AFTER = timedelta(seconds=60)
"""A firing further than one tick in the past was missed (nothing ran), not merely late."""
RULES_PER_TICK = 200
UPDATE_ATTEMPTS = 5

Made = tuple[datetime, Materialised]
"""A notification a firing made, with the firing's time."""


def _next_fire_at(new: NewRule, current: datetime) -> datetime | None:
    if new.schedule is None or not new.enabled:
        return None
    try:
        at = first_firing(CronSchedule.parse(new.schedule, new.timezone), now=current, starts_at=new.starts_at)
    except (OverflowError, ValueError):
        raise InvalidNotification("schedule", "never fires within the supported dates") from None
    return None if new.ends_at is not None and at > new.ends_at else at


class Rules:
    """The API's use cases for rules.

    ``nudge`` asks for a scheduler tick now (blocking; it may fail, the minute tick catches up),
    so that a rule created or changed between two ticks has its first firings planned at once.
    Changing, disabling or deleting a rule cancels the notifications it planned ahead that are
    not due yet; a changed rule plans afresh from now.
    """

    def __init__(
        self,
        configured: frozenset[Channel],
        nudge: Callable[[], None],
        *,
        policy: AddressPolicy = PUBLIC_ONLY,
        budget: float = templates.DEFAULT_BUDGET,
    ) -> None:
        self.configured = configured
        self._nudge = nudge
        self.policy = policy
        self.budget = budget

    async def nudge(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._nudge)
        except Exception as exc:
            logger.warning("could not ask for a scheduler tick; the minute tick will do", extra={"error": repr(exc)})

    def _check(self, new: NewRule) -> NewRule:
        new = validate_rule(new, self.policy)
        check_configured(new.channel, self.configured)
        return new

    async def _check_renders(self, new: NewRule, current: datetime) -> None:
        """Test-render the templates in a thread, holding no database connection."""
        await anyio.to_thread.run_sync(functools.partial(check_renders, new, now=current, budget=self.budget))

    async def create(self, new: NewRule) -> Rule:
        new = self._check(new)
        current = now()
        await self._check_renders(new, current)
        rule = await store.insert(new, next_fire_at=_next_fire_at(new, current), now=current)
        if rule.next_fire_at is not None:
            await self.nudge()
        return rule

    async def get(self, rule_id: uuid.UUID) -> Rule:
        found = await store.get(rule_id)
        if found is None:
            raise RuleNotFound(rule_id)
        return found

    async def page(self, *, after: tuple[datetime, uuid.UUID] | None, limit: int, enabled: bool | None) -> list[Rule]:
        return await store.page(after=after, limit=limit, enabled=enabled)

    async def update(self, rule_id: uuid.UUID, patch: RulePatch) -> Rule:
        """Apply ``patch``; the templates are test-rendered before the rule is locked, and the
        change is written only if no other change came in between (else it is tried again)."""
        for _ in range(UPDATE_ATTEMPTS):
            current = now()
            rule = await self.get(rule_id)
            new = self._check(patch.apply(rule))
            await self._check_renders(new, current)
            async with store.transaction():
                locked = await store.get_for_update(rule_id)  # a concurrent change waits for this one
                if locked is None:
                    raise RuleNotFound(rule_id)
                if locked.revision != rule.revision:
                    continue
                await store.cancel_planned(rule_id, now=current)
                updated = await store.update(rule_id, new, next_fire_at=_next_fire_at(new, current), now=current)
            break
        else:
            raise ServiceUnavailable("the rule kept changing while this change was checked; try again")
        assert updated is not None
        if updated.next_fire_at is not None:
            await self.nudge()
        return updated

    async def delete(self, rule_id: uuid.UUID) -> None:
        async with store.transaction():
            await store.cancel_planned(rule_id, now=now())
            if not await store.delete(rule_id):
                raise RuleNotFound(rule_id)

    async def preview(self, rule_id: uuid.UUID, *, after: datetime | None, count: int) -> tuple[Rule, list[datetime]]:
        rule = await self.get(rule_id)
        if rule.schedule is None:
            raise InvalidNotification("schedule", "an event rule has no schedule to preview")
        at = after or now()
        if rule.starts_at is not None and at < rule.starts_at:
            at = rule.starts_at - timedelta(microseconds=1)
        schedule = rule.cron()
        times: list[datetime] = []
        while len(times) < count:
            try:
                at = schedule.next_after(at)
            except (OverflowError, ValueError):  # the end of the calendar
                break
            if rule.ends_at is not None and at > rule.ends_at:
                break
            times.append(at)
        return rule, times


class RuleScheduler:
    """The scheduler tick's use case: turn the due firings of schedule rules into notifications.

    Due rules are read in batches; each is planned and rendered with no transaction open (so a
    slow template holds no lock and no connection), then written in a short transaction of its
    own that first checks the rule is unchanged (:func:`~notifier.store.firings.lock_unchanged`).
    A rule that cannot fire is logged and left for the next tick instead of holding up the others;
    a firing whose notifications all fail (a template over budget, a blank body) counts against
    the rule, and after :data:`~notifier.domain.rules.RULE_FAILURE_LIMIT` such firings in a
    row the rule is disabled, with the reason in ``disabled_reason``.
    """

    def __init__(self, settings: Settings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.policy = AddressPolicy.from_cidrs(settings.webhook.allowed_networks)

    def fire_due(self, current: datetime | None = None) -> int:
        """Plan and create the firings due up to now + lookahead; returns notifications created."""
        current = current or now()
        horizon = current + timedelta(seconds=self.settings.scheduler.lookahead)
        created = 0
        seen: set[uuid.UUID] = set()
        while True:
            with firing_store.transaction(self.pool) as conn:
                due = firing_store.due_rules(conn, horizon=horizon, limit=RULES_PER_TICK, exclude=seen)
            for rule in due:
                seen.add(rule.id)
                created += self._fire(rule, current)
            if len(due) < RULES_PER_TICK:
                break
        if created:
            logger.info("rules fired", extra={"notifications": created})
        return created

    def _fire(self, rule: Rule, current: datetime) -> int:
        """Fire one rule, in a span of its own; the notifications it makes keep its trace context."""
        with tracing.span("fire rule", **{"notifier.rule.id": str(rule.id)}):
            created = self._fire_traced(rule, current)
            tracing.annotate(**{"notifier.notifications.created": created})
            return created

    def _fire_traced(self, rule: Rule, current: datetime) -> int:
        try:
            next_fire_at, made = self._materialise(rule, current)
        except Exception as exc:
            logger.exception("rule could not fire; it is retried at the next tick", extra={"rule_id": str(rule.id)})
            self._record_failure(rule, f"the rule could not fire: {type(exc).__name__}: {exc}")
            metrics.rule_firings("failed")
            return 0
        # A firing that made nothing counts against the rule; one bad recipient among good ones does not.
        failure = made[0][1].failure if made and all(m.failure for _, m in made) else None
        trace_parent = tracing.traceparent()
        try:
            with firing_store.transaction(self.pool) as conn:
                if not firing_store.lock_unchanged(conn, rule):
                    return 0  # changed, deleted or taken by another tick while it rendered
                created = 0
                to_deliver: Counter[Channel] = Counter()
                for _, m in made:
                    status = Status.FAILED if m.failure else Status.SCHEDULED
                    inserted = firing_store.insert_notification(
                        conn,
                        m.notification,
                        status=status,
                        last_error=m.failure,
                        rule_id=rule.id,
                        trace_parent=trace_parent,
                    )
                    created += inserted
                    if inserted and not m.failure:
                        to_deliver[m.notification.channel] += 1
                firing_store.set_next_fire_at(conn, rule.id, next_fire_at)
                disabled = firing_store.record_outcome(conn, rule.id, failure=failure, limit=RULE_FAILURE_LIMIT)
        except Exception as exc:
            logger.exception("rule could not fire; it is retried at the next tick", extra={"rule_id": str(rule.id)})
            self._record_failure(rule, f"the rule could not fire: {type(exc).__name__}: {exc}")
            metrics.rule_firings("failed")
            return 0
        for channel, count in to_deliver.items():
            metrics.accepted(channel, "rule", count)
        delivers: dict[datetime, bool] = {}  # per firing: did it make a notification to deliver?
        for at, m in made:
            delivers[at] = delivers.get(at, False) or not m.failure
        fired = sum(delivers.values())
        metrics.rule_firings("fired", fired)
        metrics.rule_firings("failed", len(delivers) - fired)
        for at in sorted({at for at, m in made if m.failure}):
            reason = next(m.failure for fired, m in made if fired == at and m.failure)
            logger.error(
                "rule firing failed", extra={"rule_id": str(rule.id), "fire_time": at.isoformat(), "error": reason}
            )
        if disabled:
            logger.error(
                "rule disabled after repeated failed firings", extra={"rule_id": str(rule.id), "error": failure}
            )
        return created

    def _record_failure(self, rule: Rule, failure: str) -> None:
        try:
            with firing_store.transaction(self.pool) as conn:
                if firing_store.lock_unchanged(conn, rule):
                    firing_store.record_outcome(conn, rule.id, failure=failure, limit=RULE_FAILURE_LIMIT)
        except Exception:
            logger.exception("could not record the rule's failed firing", extra={"rule_id": str(rule.id)})

    def _materialise(self, rule: Rule, current: datetime) -> tuple[datetime | None, list[Made]]:
        """The rule's next ``next_fire_at`` and the notifications of its due firings, rendered."""
        assert rule.next_fire_at is not None
        scheduler = self.settings.scheduler
        planned, next_fire_at = plan_firings(
            rule.cron(),
            next_fire_at=rule.next_fire_at,
            now=current,
            lookahead=timedelta(seconds=scheduler.lookahead),
            misfire=rule.misfire,
            grace=timedelta(seconds=scheduler.misfire_grace),
            late_after=LATE_AFTER,
            ends_at=rule.ends_at,
        )
        zone = ZoneInfo(rule.timezone)
        made: list[Made] = []
        for firing in planned:
            context = {
                "rule": {"id": str(rule.id), "name": rule.name},
                "fire_time": firing.at.isoformat(),
                "local_time": firing.at.astimezone(zone).isoformat(),
                "missed": firing.missed,
            }
            key = f"rule:{rule.id}:r{rule.revision}:{firing.at:%Y%m%dT%H%M%SZ}"
            about = {"fire_time": firing.at.isoformat(), **({"missed": firing.missed} if firing.missed else {})}
            budget = self.settings.template.render_budget
            for m in materialise(
                rule, context=context, key=key, send_at=firing.at, about=about, budget=budget, policy=self.policy
            ):
                made.append((firing.at, m))
        return next_fire_at, made
