"""Group commit (``notifier.store.delivery.Group``): the threads that wait go together, each gets its own answer."""

from __future__ import annotations

import threading
import time

import pytest

from notifier.store import delivery
from notifier.store.delivery import Group


class Recorder:
    """A ``run`` that records its groups and can be held, so that callers pile up behind it."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def __call__(self, items: list[int]) -> list[int]:
        self.groups.append(list(items))
        self.entered.set()
        assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return [item * 10 for item in items]


def call_in_threads(group: Group[int, int], items: list[int]) -> tuple[list[threading.Thread], dict[int, object]]:
    answers: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            answers[item] = group(item)
        except Exception as exc:
            answers[item] = exc

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads, answers


def hold_first_group(run: Recorder, group: Group[int, int]) -> tuple[list[threading.Thread], dict[int, object]]:
    """Start a call that runs alone and blocks in ``run``; the caller then queues more behind it."""
    run.release.clear()
    threads, answers = call_in_threads(group, [0])
    assert run.entered.wait(10)
    return threads, answers


def wait_queued(group: Group[int, int], count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with group._lock:
            if len(group._waiting) >= count:
                return
        time.sleep(0.005)
    pytest.fail(f"{count} callers never queued")


def test_a_caller_alone_runs_alone_and_at_once() -> None:
    run = Recorder()
    group: Group[int, int] = Group(run)
    assert group(7) == 70
    assert group(8) == 80
    assert run.groups == [[7], [8]]


def queue_behind_a_running_group(
    run: Recorder, group: Group[int, int], items: list[int]
) -> tuple[dict[int, object], dict[int, object]]:
    """Hold a call of 0 in ``run``, queue ``items`` behind it, release; the answers of both."""
    first, first_answers = hold_first_group(run, group)
    later, answers = call_in_threads(group, items)
    wait_queued(group, len(items))
    run.release.set()
    for thread in first + later:
        thread.join(10)
    return first_answers, answers


def test_callers_that_arrive_while_a_group_runs_go_together_in_the_next() -> None:
    run = Recorder()
    group: Group[int, int] = Group(run)
    first_answers, answers = queue_behind_a_running_group(run, group, [1, 2, 3, 4, 5])
    assert first_answers == {0: 0}
    assert answers == {i: i * 10 for i in range(1, 6)}
    assert run.groups[0] == [0]
    assert sorted(run.groups[1]) == [1, 2, 3, 4, 5]
    assert len(run.groups) == 2


def test_a_group_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "GROUP_SIZE", 2)
    run = Recorder()
    group: Group[int, int] = Group(run)
    _, answers = queue_behind_a_running_group(run, group, [1, 2, 3, 4, 5])
    assert answers == {i: i * 10 for i in range(1, 6)}
    assert [len(g) for g in run.groups] == [1, 2, 2, 1]


def test_a_failed_group_raises_in_every_caller_of_it_and_the_next_group_runs() -> None:
    run = Recorder()
    group: Group[int, int] = Group(run)
    run.fail = RuntimeError("the database went away")
    first_answers, answers = queue_behind_a_running_group(run, group, [1, 2, 3])
    assert all(isinstance(a, RuntimeError) for a in [*first_answers.values(), *answers.values()])
    run.fail = None
    assert group(9) == 90
