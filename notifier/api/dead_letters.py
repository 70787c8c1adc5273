"""``/dead-letters``: failed notifications with their reasons, and replaying them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, QueryParameter

from notifier.api.errors import problems
from notifier.api.schemas import NotificationOut, NotificationPage, decode_cursor, encode_keyset
from notifier.domain import Channel, DeadLetterFilter, Notification, utc
from notifier.services.notifications import Notifications

MAX_PAGE = 200
MAX_REPLAY = 1000


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    channel: Channel | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLAY)] = 100


class Replayed(msgspec.Struct, kw_only=True):
    replayed: int
    ids: list[uuid.UUID]


def _filter(channel: Channel | None, failed_after: datetime | None, failed_before: datetime | None) -> DeadLetterFilter:
    return DeadLetterFilter(
        channel=channel,
        failed_after=None if failed_after is None else utc("failed_after", failed_after),
        failed_before=None if failed_before is None else utc("failed_before", failed_before),
    )


def _cursor(n: Notification) -> str:
    return encode_keyset(n.updated_at, n.id)


class DeadLetterController(Controller):
    path = "/dead-letters"
    tags = ["dead letters"]

    @get("/", summary="List failed notifications, most recently failed first", responses=problems(422))
    async def list_dead_letters(
        self,
        service: NamedDependency[Notifications],
        channel: FromQuery[Channel | None] = None,
        failed_after: FromQuery[datetime | None] = None,
        failed_before: FromQuery[datetime | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    ) -> NotificationPage:
        """Each with ``last_error``, the provider's reason; ``failed_*`` filter on when it failed."""
        found = await service.dead_letters(
            _filter(channel, failed_after, failed_before),
            after=decode_cursor(cursor) if cursor else None,
            limit=limit + 1,
        )
        items = found[:limit]
        return NotificationPage(
            items=[NotificationOut.of(n) for n in items],
            next_cursor=_cursor(items[-1]) if len(found) > limit else None,
        )

    @post("/replay", status_code=202, summary="Replay failed notifications", responses=problems(413, 422))
    async def replay(self, data: JSONBody[ReplayRequest], service: NamedDependency[Notifications]) -> Replayed:
        """Puts up to ``limit`` matching failed notifications back in the queue, most recently
        failed first: new attempts on the same notifications, never new notifications."""
        replayed = await service.replay(_filter(data.channel, data.failed_after, data.failed_before), limit=data.limit)
        return Replayed(replayed=len(replayed), ids=[n.id for n in replayed])
