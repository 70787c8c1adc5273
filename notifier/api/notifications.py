"""``/notify`` and ``/notifications``: accept, list, show and cancel notifications."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from notifier.api.errors import item_problem, problems
from notifier.api.schemas import (
    BatchItemResult,
    BatchRequest,
    BatchResponse,
    NotificationOut,
    NotificationPage,
    NotifyRequest,
    decode_cursor,
    encode_cursor,
)
from notifier.domain import Channel, NewNotification, NotificationFilter, Status, check_text, utc
from notifier.errors import InvalidNotification, NotifierError
from notifier.services.notifications import Notifications

MAX_PAGE = 200


class NotificationController(Controller):
    tags = ["notifications"]

    @post("/notify", status_code=202, summary="Accept a notification", responses=problems(409, 413, 422))
    async def notify(
        self,
        data: JSONBody[NotifyRequest],
        service: NamedDependency[Notifications],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[NotificationOut]:
        """Store the notification durably, then queue it for delivery (now, or at ``send_at``).

        Repeating a request with the same idempotency key (body field or ``Idempotency-Key``
        header) answers with the original notification and sends nothing again; the same key
        with a different request is a 409.
        """
        accepted = await service.accept(data.to_domain(idempotency_key))
        headers = {"Location": f"/notifications/{accepted.notification.id}"}
        if not accepted.created:
            headers["Idempotent-Replayed"] = "true"
        return Response(NotificationOut.of(accepted.notification), status_code=202, headers=headers)

    @post(
        "/notify/batch",
        status_code=200,
        summary="Accept up to 1,000 notifications at once",
        responses=problems(413, 422),
    )
    async def notify_batch(
        self, data: JSONBody[BatchRequest], service: NamedDependency[Notifications]
    ) -> BatchResponse:
        """Each item is validated and answered on its own (``results``, in request order): ``202``
        with the stored notification, ``409`` for an idempotency key used with other content, or
        ``422`` naming the field (``notifications[3].recipient``). The accepted ones are stored in
        one statement and enqueued in one Redis round trip per 500."""
        batch: list[NewNotification | NotifierError] = []
        decode_errors: dict[int, Exception] = {}
        for i, raw in enumerate(data.notifications):
            try:
                batch.append(msgspec.convert(raw, NotifyRequest).to_domain(None))
            except (msgspec.ValidationError, InvalidNotification) as exc:
                decode_errors[i] = exc
                batch.append(InvalidNotification("", str(exc)))
        answers = await service.accept_many(batch)
        results = []
        for i, answer in enumerate(answers):
            prefix = f"notifications[{i}]."
            if i in decode_errors:
                results.append(BatchItemResult(status=422, error=item_problem(decode_errors[i], field_prefix=prefix)))
            elif isinstance(answer, Exception):
                problem = item_problem(answer, field_prefix=prefix)
                results.append(BatchItemResult(status=problem.status, error=problem))
            else:
                results.append(
                    BatchItemResult(
                        status=202,
                        notification=NotificationOut.of(answer.notification),
                        idempotent_replayed=not answer.created,
                    )
                )
        return BatchResponse(results=results)

    @get("/notifications", summary="List notifications, newest first", responses=problems(422))
    async def list_notifications(
        self,
        service: NamedDependency[Notifications],
        status: FromQuery[Status | None] = None,
        channel: FromQuery[Channel | None] = None,
        recipient: FromQuery[str | None] = None,
        created_after: FromQuery[datetime | None] = None,
        created_before: FromQuery[datetime | None] = None,
        rule_id: FromQuery[uuid.UUID | None] = None,
        event_id: FromQuery[uuid.UUID | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    ) -> NotificationPage:
        """Keyset pagination: pass the previous page's ``next_cursor`` as ``cursor``."""
        if recipient is not None:
            check_text("recipient", recipient)
        filters = NotificationFilter(
            status=status,
            channel=channel,
            recipient=recipient,
            created_after=None if created_after is None else utc("created_after", created_after),
            created_before=None if created_before is None else utc("created_before", created_before),
            rule_id=rule_id,
            event_id=event_id,
        )
        after = decode_cursor(cursor) if cursor else None
        rows = await service.page(filters, after=after, limit=limit + 1)
        items, more = rows[:limit], len(rows) > limit
        return NotificationPage(
            items=[NotificationOut.of(n) for n in items],
            next_cursor=encode_cursor(items[-1]) if more else None,
        )

    @get(
        "/notifications/{notification_id:uuid}",
        summary="Show a notification and its attempts",
        responses=problems(404),
    )
    async def show(
        self, notification_id: FromPath[uuid.UUID], service: NamedDependency[Notifications]
    ) -> NotificationOut:
        notification = await service.get(notification_id)
        return NotificationOut.of(notification, await service.attempts(notification_id))

    @post(
        "/notifications/{notification_id:uuid}/retry",
        status_code=202,
        summary="Replay a failed notification",
        responses=problems(404, 409),
    )
    async def retry(
        self, notification_id: FromPath[uuid.UUID], service: NamedDependency[Notifications]
    ) -> NotificationOut:
        """Puts a ``failed`` notification back in the queue with a fresh budget of attempts: new
        attempts on the same notification, never a second one. 409 unless it is ``failed``."""
        return NotificationOut.of(await service.retry(notification_id))

    @post(
        "/notifications/{notification_id:uuid}/cancel",
        status_code=200,
        summary="Cancel a notification",
        responses=problems(404, 409),
    )
    async def cancel(
        self, notification_id: FromPath[uuid.UUID], service: NamedDependency[Notifications]
    ) -> NotificationOut:
        """Allowed while ``scheduled``, ``queued`` or ``retrying``; 409 once sending or finished."""
        return NotificationOut.of(await service.cancel(notification_id))
