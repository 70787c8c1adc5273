"""The vendored Dramatiq dashboard, in-process, on real Redis and PostgreSQL.

Contract: what the fast enqueue writes (``enqueuer``, ``AsyncEnqueuer``) and what Dramatiq's own
consumer moves to the dead-letter queue, the dashboard shows on its queue page and its standard,
delayed and failed tabs. Its *Requeue* goes through the dashboard's own form, CSRF token included.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from litestar import Litestar
from litestar.testing import TestClient

from notifier.api import dashboard
from notifier.channels.memory import MemoryChannel
from notifier.domain import Channel
from notifier.errors import PermanentDeliveryError
from notifier.services.delivery import Dispatcher
from notifier.settings import Settings
from notifier.store.delivery import Pool
from notifier.worker import broker as worker_broker
from notifier.worker.broker import DELIVERY_QUEUE, SCHEDULE_QUEUE, AsyncEnqueuer, enqueuer, ticker
from tests.forms import Form, form_with_button

Client = TestClient[Litestar]
CSRF = "__dd_csrf"


def enqueue(how: str, broker: RedisBroker, settings: Settings, items: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Enqueue delivery messages with the API's ``AsyncEnqueuer`` or the scheduler's ``enqueuer``."""
    if how == "enqueuer":
        enqueuer(broker)(items)
        return

    async def send() -> None:
        fast = AsyncEnqueuer(broker, settings.redis.url)
        try:
            await fast(items)
        finally:
            await fast.aclose()

    asyncio.run(send())


def dead_letter_next(settings: Settings, queue: str = DELIVERY_QUEUE) -> None:
    """Take the next delivery message with a stock ``RedisBroker`` consumer, fail it and nack it: what
    Dramatiq's worker does when Retries gives up or the actor calls ``message.fail()``."""
    stock = RedisBroker(url=settings.redis.url, namespace=settings.redis.namespace)
    consumer = stock.consume(queue, prefetch=1, timeout=100)
    deadline = time.monotonic() + 10
    try:
        while (message := next(consumer)) is None:
            assert time.monotonic() < deadline, f"no message on {queue} to dead-letter"
        message.fail()
        consumer.nack(message)
    finally:
        consumer.close()
        stock.close()


def stored(settings: Settings, queue: str) -> list[dict[str, Any]]:
    """The messages in ``queue``'s hash: their fields as Redis holds them."""
    client = redis.Redis.from_url(settings.redis.url)
    raw = client.hvals(f"{settings.redis.namespace}:{queue}.msgs")
    client.close()
    return [json.loads(data) for data in raw]


def notification_ids(settings: Settings, queue: str) -> list[str]:
    return [message["args"][0] for message in stored(settings, queue)]


def stored_for(settings: Settings, queue: str, notification_id: uuid.UUID) -> dict[str, Any]:
    """The one message in ``queue`` that delivers this notification."""
    [message] = [m for m in stored(settings, queue) if m["args"] == [str(notification_id)]]
    return message


def listed(page: str, notification_id: uuid.UUID) -> bool:
    """Whether a tab lists the delivery message of this notification (as ``str(message)`` shows it)."""
    return f"deliver_notification(&#39;{notification_id}&#39;)" in page


def counts(page: str, queue: str) -> tuple[str, str, str]:
    """The dashboard's (jobs, delayed, failed) figures for ``queue``."""
    cells = r"\s*</a>\s*</td>" + r"\s*<td[^>]*>\s*(\S+)\s*</td>" * 3
    match = re.search(rf'href="/dramatiq/queues/{re.escape(queue)}">\s*{re.escape(queue)}{cells}', page)
    assert match, page
    return match.group(1), match.group(2), match.group(3)


def submit(client: Client, form: Form) -> Any:
    """Post ``form`` as a browser does: its fields url-encoded, the cookies the page set sent back."""
    assert form.method == "POST"
    return client.post(form.action, data=form.fields, follow_redirects=False)


@pytest.mark.parametrize("how", ["AsyncEnqueuer", "enqueuer"])
def test_the_dashboard_shows_fast_enqueued_messages_on_every_tab(
    client: Client, broker: RedisBroker, settings: Settings, how: str
) -> None:
    ready, dead, delayed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    enqueue(how, broker, settings, [(dead, 0)])
    dead_letter_next(settings)
    enqueue(how, broker, settings, [(ready, 0), (delayed, 60_000)])

    assert counts(client.get("/dramatiq/").text, DELIVERY_QUEUE) == ("1", "1", "1")

    standard = client.get(f"/dramatiq/queues/{DELIVERY_QUEUE}").text
    assert listed(standard, ready)
    assert not listed(standard, delayed)
    assert not listed(standard, dead)

    waiting = stored_for(settings, f"{DELIVERY_QUEUE}.DQ", delayed)
    tab = client.get(f"/dramatiq/queues/{DELIVERY_QUEUE}/delayed").text
    assert listed(tab, delayed)
    assert not listed(tab, ready)
    job_uri = f"/dramatiq/queues/{DELIVERY_QUEUE}/delayed/{waiting['options']['redis_message_id']}"
    assert f'href="{job_uri}"' in tab
    job = client.get(job_uri).text
    eta = datetime.fromtimestamp(waiting["options"]["eta"] / 1000, UTC).replace(tzinfo=None)
    assert f'<time datetime="{eta.isoformat()}">' in job
    assert re.search(r"in (59|60)s", job), "the delayed message's ETA is not a minute ahead"
    assert str(delayed) in html.unescape(job)

    failed = client.get(f"/dramatiq/queues/{DELIVERY_QUEUE}/failed").text
    assert listed(failed, dead)
    assert not listed(failed, ready)
    [dead_letter] = stored(settings, f"{DELIVERY_QUEUE}.XQ")
    form = form_with_button(failed, "Requeue", queue=f"{DELIVERY_QUEUE}.XQ")
    assert form.fields["id"] == dead_letter["options"]["redis_message_id"]
    assert form.fields[CSRF] == client.cookies[CSRF]


def test_the_delivery_actor_is_the_workers() -> None:
    assert dashboard.DELIVER_ACTOR == worker_broker.DELIVER_ACTOR


def accept(client: Client) -> uuid.UUID:
    response = client.post("/notify", json={"channel": "webhook", "recipient": "https://hooks.example/x", "body": "b"})
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def fail_permanently(client: Client, settings: Settings, pool: Pool) -> uuid.UUID:
    """A notification accepted by the API, failed for good by a delivery, its message dead-lettered."""
    memory = MemoryChannel()
    memory.fail_next(PermanentDeliveryError("HTTP 400: no such hook"))
    notification_id = accept(client)
    Dispatcher(settings, pool, {Channel.WEBHOOK: memory}).deliver(notification_id)
    dead_letter_next(settings)
    assert client.get(f"/notifications/{notification_id}").json()["status"] == "failed"
    return notification_id


def requeue_form(client: Client, settings: Settings, notification_id: uuid.UUID) -> Form:
    """The *Requeue* form of this notification's dead letter, from the failed tab."""
    page = client.get(f"/dramatiq/queues/{DELIVERY_QUEUE}/failed").text
    assert listed(page, notification_id)
    message = stored_for(settings, f"{DELIVERY_QUEUE}.XQ", notification_id)
    return form_with_button(page, "Requeue", id=message["options"]["redis_message_id"])


def test_requeue_replays_the_failed_notification(client: Client, settings: Settings, pool: Pool) -> None:
    failed = fail_permanently(client, settings, pool)
    response = submit(client, requeue_form(client, settings, failed))
    assert response.status_code == 302, response.text
    assert client.get(f"/notifications/{failed}").json()["status"] == "queued"
    assert response.headers["location"] == f"/dramatiq/queues/{DELIVERY_QUEUE}/failed"
    assert stored(settings, f"{DELIVERY_QUEUE}.XQ") == [], "the dead letter stays after its replay"
    assert notification_ids(settings, DELIVERY_QUEUE) == [str(failed)]
    # Claimable again: the next delivery sends it, on the same notification.
    assert Dispatcher(settings, pool, {Channel.WEBHOOK: MemoryChannel()}).deliver(failed).kind == "sent"
    assert client.get(f"/notifications/{failed}").json()["status"] == "sent"


def test_requeue_refuses_a_notification_that_is_not_failed(client: Client, settings: Settings) -> None:
    queued = accept(client)
    dead_letter_next(settings)  # e.g. Retries gave up while PostgreSQL was away
    response = submit(client, requeue_form(client, settings, queued))
    assert response.status_code == 409, response.text
    assert f"Notification {queued} is queued" in response.text
    assert notification_ids(settings, f"{DELIVERY_QUEUE}.XQ") == [str(queued)], "refused, yet the dead letter is gone"


def test_requeue_needs_the_pages_csrf_token(client: Client, settings: Settings, pool: Pool) -> None:
    failed = fail_permanently(client, settings, pool)
    form = requeue_form(client, settings, failed)
    form.fields[CSRF] = "0" * 64
    assert submit(client, form).status_code == 403
    del form.fields[CSRF]
    assert submit(client, form).status_code == 403
    assert client.get(f"/notifications/{failed}").json()["status"] == "failed"


def test_a_malformed_dashboard_form_is_a_400(client: Client) -> None:
    client.get(f"/dramatiq/queues/{DELIVERY_QUEUE}/failed")
    token = client.cookies[CSRF]
    for path in ("/dramatiq/requeue-message", "/dramatiq/delete-message"):
        response = client.post(path, data={CSRF: token}, follow_redirects=False)
        assert response.status_code == 400, (path, response.text)
    response = client.post(
        "/dramatiq/delete-message",
        content=b"queue=%FF&id=x&" + f"{CSRF}={token}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400, response.text


def test_requeue_of_another_actors_message_puts_it_back_on_its_queue(
    client: Client, broker: RedisBroker, settings: Settings
) -> None:
    ticker(broker)()
    dead_letter_next(settings, SCHEDULE_QUEUE)
    page = client.get(f"/dramatiq/queues/{SCHEDULE_QUEUE}/failed").text
    [dead] = stored(settings, f"{SCHEDULE_QUEUE}.XQ")
    response = submit(client, form_with_button(page, "Requeue", id=dead["options"]["redis_message_id"]))
    assert response.status_code == 302, response.text
    assert stored(settings, f"{SCHEDULE_QUEUE}.XQ") == []
    [requeued] = stored(settings, SCHEDULE_QUEUE)
    assert (requeued["actor_name"], requeued["message_id"]) == (dead["actor_name"], dead["message_id"])
    assert requeued["options"]["retries"] == 0
