"""``/rules``: recurring and event-triggered rules, and a preview of a schedule's next firings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from notifier.api.errors import problems
from notifier.api.schemas import FireTime, RulePage, RulePreview, decode_cursor, encode_cursor
from notifier.domain import NewRule, Rule, RulePatch, utc
from notifier.services.rules import MAX_PREVIEW, Rules

MAX_PAGE = 200


class RuleController(Controller):
    path = "/rules"
    tags = ["rules"]

    @post("/", status_code=201, summary="Create a rule", responses=problems(413, 422))
    async def create(self, data: JSONBody[NewRule], rules: NamedDependency[Rules]) -> Response[Rule]:
        """Exactly one of ``schedule`` (five-field cron or an ``@daily``-style alias, evaluated in
        ``timezone``) and ``event`` (an event type). Subject, body and recipients are Jinja2
        templates; one that does not parse is refused naming the field and the line."""
        rule = await rules.create(data)
        return Response(rule, status_code=201, headers={"Location": f"/rules/{rule.id}"})

    @get("/", summary="List rules, newest first", responses=problems(422))
    async def list_rules(
        self,
        rules: NamedDependency[Rules],
        enabled: FromQuery[bool | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    ) -> RulePage:
        found = await rules.page(after=decode_cursor(cursor) if cursor else None, limit=limit + 1, enabled=enabled)
        items = found[:limit]
        return RulePage(items=items, next_cursor=encode_cursor(items[-1]) if len(found) > limit else None)

    @get("/{rule_id:uuid}", summary="Show a rule", responses=problems(404))
    async def show(self, rule_id: FromPath[uuid.UUID], rules: NamedDependency[Rules]) -> Rule:
        return await rules.get(rule_id)

    @patch("/{rule_id:uuid}", summary="Change a rule", responses=problems(404, 413, 422))
    async def change(
        self, rule_id: FromPath[uuid.UUID], data: JSONBody[RulePatch], rules: NamedDependency[Rules]
    ) -> Rule:
        """The fields given replace the rule's. Changing the schedule, zone, start or enabling it
        again computes the next firing from now: nothing missed while it was off fires."""
        return await rules.update(rule_id, data)

    @delete("/{rule_id:uuid}", status_code=204, summary="Delete a rule", responses=problems(404))
    async def remove(self, rule_id: FromPath[uuid.UUID], rules: NamedDependency[Rules]) -> None:
        """Notifications it already created stay, no longer linked to it."""
        await rules.delete(rule_id)

    @get("/{rule_id:uuid}/preview", summary="The next firings of a schedule", responses=problems(404, 422))
    async def preview(
        self,
        rule_id: FromPath[uuid.UUID],
        rules: NamedDependency[Rules],
        count: Annotated[int, QueryParameter(ge=1, le=MAX_PREVIEW)] = 10,
        after: FromQuery[datetime | None] = None,
    ) -> RulePreview:
        """The next ``count`` fire times after ``after`` (RFC 3339; default now), each in UTC and
        on the rule's wall clock."""
        rule, times = await rules.preview(rule_id, after=None if after is None else utc("after", after), count=count)
        zone = ZoneInfo(rule.timezone)
        return RulePreview(
            rule_id=rule.id,
            timezone=rule.timezone,
            fire_times=[FireTime(utc=t, local=t.astimezone(zone)) for t in times],
        )
