"""Group commit (``notifier.store.delivery.Group``): the threads that wait go together, each gets its own answer."""

from __future__ import annotations

import threading
import time

import pytest
from dramatiq import threading as dramatiq_threading

from notifier.errors import GroupStalled
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


def test_run_may_answer_one_member_with_its_own_exception() -> None:
    run = Recorder()

    def answers_each(items: list[int]) -> list[int | BaseException]:
        return [
            ValueError(f"bad {item}") if item == 2 else answer for item, answer in zip(items, run(items), strict=True)
        ]

    group: Group[int, int] = Group(answers_each)
    first_answers, answers = queue_behind_a_running_group(run, group, [1, 2, 3])
    assert first_answers == {0: 0}
    assert answers[1] == 10
    assert answers[3] == 30
    assert isinstance(answers[2], ValueError)


class TimeLimitExceeded(BaseException):
    """What Dramatiq's time limit raises into a worker thread (an Interrupt: a BaseException)."""


def raise_in_this_thread() -> None:
    """Raise :class:`TimeLimitExceeded` in the calling thread asynchronously, as Dramatiq does:
    it surfaces at the thread's next check for pending exceptions, in the code that runs next."""
    dramatiq_threading.raise_thread_exception(threading.get_ident(), TimeLimitExceeded)


def interrupt_once(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> list[str]:
    """Raise a real asynchronous exception the first time ``target.name`` is called, from inside it."""
    original = getattr(target, name)
    struck: list[str] = []

    def patched(*args: object, **kwargs: object) -> object:
        if not struck:
            struck.append(threading.current_thread().name)
            raise_in_this_thread()
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, patched)
    return struck


def call_in_threads_catching_all(
    group: Group[int, int], items: list[int]
) -> tuple[list[threading.Thread], dict[int, object]]:
    answers: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            answers[item] = group(item)
        except BaseException as exc:  # the interrupt is an answer here
            answers[item] = exc

    threads = [threading.Thread(target=call, args=(item,), name=f"caller-{item}") for item in items]
    for thread in threads:
        thread.start()
    return threads, answers


def run_with_a_leader_and_followers(group: Group[int, int], run: Recorder) -> dict[int, object]:
    run.release.clear()
    first, first_answers = call_in_threads_catching_all(group, [0])
    assert run.entered.wait(10)
    later, answers = call_in_threads_catching_all(group, [1, 2, 3])
    wait_queued(group, 3)
    run.release.set()
    started = time.monotonic()
    for thread in first + later:
        thread.join(5)
    assert not any(t.is_alive() for t in first + later), "a caller hangs"
    assert time.monotonic() - started < 2  # woken by the hand-over, not by the follower's deadline
    return {**first_answers, **answers}


class StrikingLock:
    """The group's lock, raising an asynchronous exception into ``thread`` as it takes the lock for
    the ``nth`` time: the leader's third is its hand-over (the first queues it, the second takes its
    group). The lock is let go first, as an exception raised at that instant would leave it."""

    def __init__(self, lock: threading.Lock, thread: str, nth: int) -> None:
        self.lock, self.thread, self.nth, self.count = lock, thread, nth, 0

    def __enter__(self) -> None:
        self.lock.acquire()
        if threading.current_thread().name == self.thread:
            self.count += 1
            if self.count == self.nth:
                self.lock.release()
                raise_in_this_thread()
                time.sleep(0)  # the exception surfaces here

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_an_exception_raised_into_the_leader_as_it_hands_over_hangs_no_follower() -> None:
    run = Recorder()
    group: Group[int, int] = Group(run)
    group._lock = StrikingLock(group._lock, "caller-0", 3)  # type: ignore[assignment]
    answers = run_with_a_leader_and_followers(group, run)
    assert isinstance(answers[0], TimeLimitExceeded)
    assert {i: answers[i] for i in (1, 2, 3)} == {1: 10, 2: 20, 3: 30}
    assert group(9) == 90


@pytest.mark.parametrize("where", ["_hand_over", "_pass_lead"])
def test_an_exception_raised_into_the_leader_during_the_hand_over_hangs_no_follower(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """At the start of the hand-over, or once it has chosen the next leader."""
    run = Recorder()
    group: Group[int, int] = Group(run, wait=30)
    struck = interrupt_once(monkeypatch, group, where)
    answers = run_with_a_leader_and_followers(group, run)
    assert struck == ["caller-0"]
    assert isinstance(answers[0], TimeLimitExceeded)  # the leader's own call fails, as the time limit means
    assert {i: answers[i] for i in (1, 2, 3)} == {1: 10, 2: 20, 3: 30}
    assert group(9) == 90  # and the group still works afterwards
    assert group._leaders == 0


def test_an_exception_raised_into_the_leader_while_its_group_runs_fails_the_followers_cleanly() -> None:
    interrupted = threading.Event()

    class Interrupting(Recorder):
        def __call__(self, items: list[int]) -> list[int]:
            answer = super().__call__(items)
            if items != [0] and not interrupted.is_set():
                interrupted.set()
                raise_in_this_thread()
                time.sleep(0)  # the interrupt surfaces here, inside run
            return answer

    run = Interrupting()
    group: Group[int, int] = Group(run, wait=30)
    first, first_answers = hold_first_group(run, group)
    later, answers = call_in_threads_catching_all(group, [1, 2, 3])
    wait_queued(group, 3)
    run.release.set()
    for thread in first + later:
        thread.join(5)
    assert first_answers == {0: 0}
    kinds = sorted(type(a).__name__ for a in answers.values())
    assert kinds == ["GroupStalled", "GroupStalled", "TimeLimitExceeded"]  # the leader of 1-3 was struck
    assert group(9) == 90


def test_an_exception_raised_into_the_next_leader_before_it_leads_passes_the_lead_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = Recorder()
    group: Group[int, int] = Group(run, wait=30)
    original = Group._lead
    struck: list[int] = []

    def lead(self: Group[int, int], own: delivery._Request[int, int]) -> None:
        if own.item == 1 and not struck:
            struck.append(own.item)
            raise TimeLimitExceeded
        original(self, own)

    monkeypatch.setattr(Group, "_lead", lead)
    run.release.clear()
    first, _ = call_in_threads_catching_all(group, [0])
    assert run.entered.wait(10)
    one, one_answer = call_in_threads_catching_all(group, [1])  # first in line: the next leader
    wait_queued(group, 1)
    later, answers = call_in_threads_catching_all(group, [2, 3])
    wait_queued(group, 3)
    run.release.set()
    for thread in first + one + later:
        thread.join(5)
    assert not any(t.is_alive() for t in first + one + later), "a caller hangs"
    assert struck == [1]
    assert isinstance(one_answer[1], TimeLimitExceeded)
    assert answers == {2: 20, 3: 30}
    assert group._leaders == 0


def test_a_follower_no_group_took_leads_its_own_after_the_deadline() -> None:
    """The leader is stuck in ``run`` (or gone): after ``wait`` the callers queued behind it run."""
    run = Recorder()
    group: Group[int, int] = Group(run, wait=0.3)
    first, _ = hold_first_group(run, group)
    started = time.monotonic()

    def later_run(items: list[int]) -> list[int]:
        return [item * 10 for item in items]

    group._run = lambda items: run(items) if items == [0] else later_run(items)  # type: ignore[method-assign]
    later, answers = call_in_threads_catching_all(group, [1, 2])
    for thread in later:
        thread.join(5)
    assert answers == {1: 10, 2: 20}
    assert 0.3 <= time.monotonic() - started < 3
    run.release.set()
    for thread in first:
        thread.join(5)
    assert group(9) == 90


def test_a_follower_in_a_group_that_never_answers_gives_up_cleanly() -> None:
    run = Recorder()
    group: Group[int, int] = Group(run, wait=0.5)
    never = threading.Event()
    first, _ = hold_first_group(run, group)
    later, answers = call_in_threads_catching_all(group, [1, 2, 3])
    wait_queued(group, 3)

    def stuck(items: list[int]) -> list[int]:
        assert never.wait(30)
        return [item * 10 for item in items]

    group._run = stuck  # type: ignore[method-assign]
    started = time.monotonic()
    run.release.set()  # the first group ends; the next (1, 2, 3) never answers
    try:
        deadline = time.monotonic() + 5
        while len(answers) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        waited = time.monotonic() - started
        gave_up = {i: a for i, a in answers.items()}
        assert len(gave_up) == 2, gave_up  # the two followers; their leader is the one stuck in run
        assert all(isinstance(a, GroupStalled) for a in gave_up.values()), gave_up
        assert 0.5 <= waited < 3
    finally:
        never.set()
        for thread in first + later:
            thread.join(5)
