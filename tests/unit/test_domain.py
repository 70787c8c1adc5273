from __future__ import annotations

from datetime import datetime

import pytest

from notifier import domain
from notifier.domain import TRANSITIONS, Channel, NewNotification, Status
from notifier.errors import InvalidNotification, InvalidTransition


def test_only_a_replay_leaves_failed() -> None:
    assert TRANSITIONS[Status.FAILED] == {Status.QUEUED}


def test_final_statuses_have_no_way_out() -> None:
    for final in (Status.SENT, Status.CANCELLED):
        assert TRANSITIONS[final] == frozenset()
        for target in Status:
            with pytest.raises(InvalidTransition):
                domain.check_transition(final, target)


def test_cancel_is_allowed_only_before_sending() -> None:
    assert domain.sources(Status.CANCELLED) == {Status.SCHEDULED, Status.QUEUED, Status.RETRYING}


def test_a_worker_may_claim_waiting_rows_and_lapsed_leases() -> None:
    assert domain.sources(Status.SENDING) == {Status.SCHEDULED, Status.QUEUED, Status.RETRYING, Status.SENDING}


def test_every_status_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(
    ("channel", "recipient", "canonical"),
    [
        (Channel.EMAIL, "Ada@Example.COM", "Ada@example.com"),
        (Channel.SMS, "+1 415 555 2671", "+14155552671"),
        (Channel.SMS, "+44 20 7946 0958", "+442079460958"),
        (Channel.WEBHOOK, "https://hooks.example/x?y=1", "https://hooks.example/x?y=1"),
        (Channel.LOG, "ops", "ops"),
    ],
)
def test_recipients_are_validated_and_normalised(channel: Channel, recipient: str, canonical: str) -> None:
    assert domain.normalise_recipient(channel, recipient) == canonical


@pytest.mark.parametrize(
    ("channel", "recipient"),
    [
        (Channel.EMAIL, "not-an-address"),
        (Channel.EMAIL, "a@b@c"),
        (Channel.SMS, "4155552671"),
        (Channel.SMS, "+1 555"),
        (Channel.SMS, "+999999999999999"),
        (Channel.WEBHOOK, "ftp://example.com/x"),
        (Channel.WEBHOOK, "/relative"),
        (Channel.LOG, "   "),
    ],
)
def test_bad_recipients_are_refused_naming_the_field(channel: Channel, recipient: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        domain.normalise_recipient(channel, recipient)
    assert caught.value.field == "recipient"


def test_send_at_needs_an_offset() -> None:
    new = NewNotification(channel=Channel.LOG, recipient="ops", body="x", send_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidNotification) as caught:
        domain.validate(new)
    assert caught.value.field == "send_at"


def test_email_needs_a_subject() -> None:
    with pytest.raises(InvalidNotification) as caught:
        domain.validate(NewNotification(channel=Channel.EMAIL, recipient="a@example.com", body="x"))
    assert caught.value.field == "subject"


def test_fingerprint_covers_the_request_but_not_the_key() -> None:
    a = NewNotification(channel=Channel.LOG, recipient="ops", body="x", metadata={"a": 1, "b": 2}, idempotency_key="k")
    b = NewNotification(channel=Channel.LOG, recipient="ops", body="x", metadata={"b": 2, "a": 1}, idempotency_key="j")
    c = NewNotification(channel=Channel.LOG, recipient="ops", body="y", metadata={"a": 1, "b": 2}, idempotency_key="k")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
