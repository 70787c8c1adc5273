"""The Dramatiq dashboard, for operators: queues, workers, delayed and dead-lettered messages.

The dashboard is ``dramatiq_dashboard`` 0.4.0, vendored under ``notifier/vendor`` (LGPL; its
README there says why and what changed), a WSGI app served through ``a2wsgi`` under ``/dramatiq``
behind the same API keys as the rest.

Its *Requeue* button on a dead-lettered delivery replays the notification, as
``POST /notifications/{id}/retry`` does: the library's own requeue only copied the message back onto
the queue, where the worker's claim dropped it, the notification being ``failed`` in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from a2wsgi import WSGIMiddleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from notifier.domain import Notification
from notifier.errors import InvalidTransition, NotificationNotFound
from notifier.services.notifications import Notifications
from notifier.vendor.dramatiq_dashboard import DashboardApp
from notifier.vendor.dramatiq_dashboard.csrf import csrf_protect
from notifier.vendor.dramatiq_dashboard.http import HTTP_405, HTTP_410, handler, redirect

logger = logging.getLogger("notifier.api")

PREFIX = "/dramatiq"

DELIVER_ACTOR = "deliver_notification"
"""The worker's delivery actor (``notifier.worker.broker.DELIVER_ACTOR``, which the API does not import;
a test keeps the two equal)."""

REPLAY_TIMEOUT = 10.0
"""Seconds a *Requeue* waits for the replay, which runs on the API's event loop."""

HTTP_400 = "400 Bad Request"
HTTP_409 = "409 Conflict"
HTTP_503 = "503 Service Unavailable"

Replay = Callable[[uuid.UUID], Notification]
"""Replays one failed notification (``Notifications.retry``), called from a WSGI thread."""


def _requeue(app: Dashboard, request: Any) -> Any:
    """*Requeue* on a dead letter: a delivery replays its notification, then leaves the dead-letter
    queue; any other message is copied back onto its queue, as the library does."""
    if request.method != "POST":
        return HTTP_405, "Expected a POST request."
    queue, message_id = request.post_data["queue"], request.post_data["id"]
    job = app.iface.get_job(queue, message_id)
    if not job:
        return HTTP_410, "The requested message no longer exists."
    message = job.message
    if message.actor_name != DELIVER_ACTOR:
        app.iface.delete_message(queue, message_id)
        options = {"eta": message.message_timestamp, "retries": 0}
        app.broker.enqueue(message.copy(queue_name=q_name(queue), options=options))
        return redirect(app.make_uri("queues", q_name(queue), "failed"))
    try:
        notification_id = uuid.UUID(message.args[0])
    except (IndexError, TypeError, ValueError):
        return HTTP_400, f"This {DELIVER_ACTOR} message names no notification id: {message.args!r}."
    try:
        app.replay(notification_id)
    except NotificationNotFound:
        return HTTP_410, f"Notification {notification_id} no longer exists; delete this dead letter."
    except InvalidTransition as exc:
        return HTTP_409, (
            f"Notification {notification_id} is {exc.current}: only a failed notification is replayed. "
            "Delete this dead letter if it is stale."
        )
    except Exception:
        logger.exception("dashboard replay failed", extra={"notification_id": str(notification_id)})
        return HTTP_503, f"Notification {notification_id} could not be replayed now; try again."
    app.iface.delete_message(queue, message_id)
    return redirect(app.make_uri("queues", q_name(queue), "failed"))


class Dashboard(DashboardApp):
    """The library's dashboard, whose *Requeue* replays a failed notification through ``replay``,
    and which answers a malformed form with ``400`` rather than a traceback."""

    def __init__(self, broker: RedisBroker, replay: Replay) -> None:
        super().__init__(broker, PREFIX)  # type: ignore[no-untyped-call]
        self.replay = replay

    requeue_message = handler(csrf_protect(_requeue))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            response: Iterable[bytes] = super().__call__(environ, start_response)  # type: ignore[no-untyped-call]
        except (KeyError, TypeError, ValueError) as exc:  # a form without a field, not UTF-8, no length
            start_response(HTTP_400, [("Content-type", "text/plain; charset=utf-8")])
            return [f"Malformed request: {exc!r}".encode()]
        return response


class _OnLoop:
    """Runs ``Notifications.retry`` on the event loop the API serves from, for a WSGI thread."""

    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications
        self.loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, notification_id: uuid.UUID) -> Notification:
        assert self.loop is not None, "the dashboard is called only from a request"
        future = asyncio.run_coroutine_threadsafe(self.notifications.retry(notification_id), self.loop)
        try:
            return future.result(REPLAY_TIMEOUT)
        finally:
            future.cancel()


def dashboard(broker: RedisBroker, notifications: Notifications) -> ASGIRouteHandler:
    """The dashboard of ``broker``'s queues, mounted at :data:`PREFIX`."""
    replay = _OnLoop(notifications)
    app: Any = Dashboard(broker, replay)
    wsgi: Any = WSGIMiddleware(app)

    @asgi(PREFIX, is_mount=True, copy_scope=True, include_in_schema=False)
    async def dramatiq_dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        replay.loop = asyncio.get_running_loop()
        await wsgi(scope, receive, send)

    return dramatiq_dashboard
