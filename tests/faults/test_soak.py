"""The soak: 10,000 notifications with 10 % transient failures injected at the peer.

Not part of the default run (marked ``soak``); run it on purpose:
``uv run pytest tests/faults/test_soak.py -m soak -s``.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import FAULT_SETTINGS, CountingWebhookPeer, StartStack
from tests.faults.test_faults import figures, send_many, settle


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_10000_notifications_with_10_percent_transient_failures(
    start_stack: StartStack, counting_receiver: CountingWebhookPeer, database_url: str
) -> None:
    counting_receiver.failure_rate = 0.10
    stack = start_stack(NOTIFIER_WEBHOOK_SECRET=counting_receiver.secret, **FAULT_SETTINGS)
    accepted = send_many(stack, counting_receiver, 10_000, threads=8)
    final = settle(database_url, list(accepted), timeout=1200)
    result = figures("soak-10000-10pct", accepted, counting_receiver, final)
    assert counting_receiver.refused > 500  # the failures were really injected
    assert result.sent == result.delivered == 10_000
    assert result.failed == 0
    assert result.duplicated == 0
