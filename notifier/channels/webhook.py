"""The ``webhook`` channel: an HTTP POST of the notification as JSON, signed per Standard Webhooks.

The ``webhook-id`` is the notification id on every attempt, so a receiver can drop a redelivery.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from standardwebhooks import Webhook

from notifier.channels import http
from notifier.domain import Notification


class WebhookChannel:
    def __init__(self, secret: str, *, timeout: float) -> None:
        self._signer = Webhook(secret) if secret else None
        self._http = http.client(timeout)

    @staticmethod
    def payload(notification: Notification, now: datetime) -> bytes:
        data = {
            "id": notification.id,
            "subject": notification.subject,
            "body": notification.body,
            "metadata": notification.metadata,
            "send_at": notification.send_at,
            "created_at": notification.created_at,
        }
        return msgspec.json.encode({"type": "notification", "timestamp": now, "data": data})

    def send(self, notification: Notification) -> str | None:
        now = datetime.now(UTC).replace(microsecond=0)
        body = self.payload(notification, now)
        msg_id = str(notification.id)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(msg_id, now, body.decode())
        http.post(self._http, notification.recipient, content=body, headers=headers)
        return msg_id

    def close(self) -> None:
        self._http.close()
