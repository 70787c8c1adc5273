"""``/events``: something happened; the enabled rules for its type turn it into notifications."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody

from notifier.api import schemas
from notifier.api.errors import problems
from notifier.api.schemas import EventOut, NotificationOut
from notifier.domain import NewEvent
from notifier.services.events import Events


class EventController(Controller):
    path = "/events"
    tags = ["events"]

    @post("/", status_code=202, summary="Publish an event", responses=problems(409, 413, 422))
    async def publish(
        self,
        data: JSONBody[NewEvent],
        events: NamedDependency[Events],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[EventOut]:
        """Store the event and answer with the notifications it created. The same idempotency key
        never fans out twice: a repeat answers with what the first request produced."""
        data = msgspec.structs.replace(
            data, idempotency_key=schemas.idempotency_key(data.idempotency_key, idempotency_key)
        )
        published = await events.publish(data)
        headers = {"Location": f"/events/{published.event.id}"}
        if not published.created:
            headers["Idempotent-Replayed"] = "true"
        body = EventOut(
            **msgspec.structs.asdict(published.event),
            notifications=[NotificationOut.of(n) for n in published.notifications],
        )
        return Response(body, status_code=202, headers=headers)

    @get("/{event_id:uuid}", summary="Show an event and what it produced", responses=problems(404))
    async def show(self, event_id: FromPath[uuid.UUID], events: NamedDependency[Events]) -> EventOut:
        event, notifications = await events.get(event_id)
        return EventOut(**msgspec.structs.asdict(event), notifications=[NotificationOut.of(n) for n in notifications])
