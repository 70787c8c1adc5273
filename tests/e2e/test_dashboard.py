"""The dashboard's *Requeue*, clicked as a browser would, replays a failed notification that a real
worker then delivers."""

from __future__ import annotations

from tests.e2e.conftest import Stack, wait_until
from tests.forms import form_with_button
from tests.peers import WebhookPeer

FAILED_TAB = "/dramatiq/queues/notifier.deliver/failed"


def test_requeue_on_a_dead_letter_delivers_the_notification(stack: Stack, webhook_receiver: WebhookPeer) -> None:
    webhook_receiver.respond(400, body="no such hook")  # permanent: the first attempt fails for good
    created = stack.notify(channel="webhook", recipient=f"{webhook_receiver.url}/hook", body="replay me")
    stack.wait_status(created["id"], "failed")
    listed = f"deliver_notification(&#39;{created['id']}&#39;)"

    def failed_tab() -> str | None:
        text = stack.client.get(FAILED_TAB).text
        return text if listed in text else None

    page = wait_until(failed_tab, 10, "the dead letter on the dashboard's failed tab")
    form = form_with_button(page, "Requeue", queue="notifier.deliver.XQ")
    assert form.fields["__dd_csrf"] == stack.client.cookies["__dd_csrf"]

    response = stack.client.post(form.action, data=form.fields, follow_redirects=False)
    assert response.status_code == 302, response.text

    sent = stack.wait_status(created["id"], "sent")
    assert [a["outcome"] for a in sent["delivery_attempts"]] == ["permanent_error", "sent"]
    first, second = webhook_receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == created["id"]
    assert listed not in stack.client.get(FAILED_TAB).text, "the replayed dead letter is still listed"
