"""An in-memory channel for tests: records what it was asked to send, fails when told to."""

from __future__ import annotations

import threading

from notifier.domain import Notification
from notifier.errors import DeliveryError


class MemoryChannel:
    def __init__(self) -> None:
        self.sent: list[Notification] = []
        self.failures: list[DeliveryError] = []
        self._lock = threading.Lock()

    def fail_next(self, *errors: DeliveryError) -> None:
        """Raise these, one per call, before sending again."""
        with self._lock:
            self.failures.extend(errors)

    def send(self, notification: Notification) -> str | None:
        with self._lock:
            if self.failures:
                raise self.failures.pop(0)
            self.sent.append(notification)
            return f"memory-{len(self.sent)}"

    def close(self) -> None:
        pass
