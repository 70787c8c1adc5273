"""The ``log`` channel: one structured JSON line in the worker's log per notification."""

from __future__ import annotations

import logging

from notifier.domain import Notification

logger = logging.getLogger("notifier.channels.log")


class LogChannel:
    def send(self, notification: Notification) -> str | None:
        logger.info(
            "notification delivered to log",
            extra={
                "notification_id": str(notification.id),
                "recipient": notification.recipient,
                "subject": notification.subject,
                "body": notification.body,
                "metadata": notification.metadata,
            },
        )
        return None

    def close(self) -> None:
        pass
