"""Periodic work, driven by periodiq (``notifier scheduler``) and run by the workers.

periodiq sends ``fire_schedules`` every minute; any worker runs it. It is idempotent: it works
from each rule's ``next_fire_at`` in PostgreSQL, so two schedulers (two ticks a minute) create
each firing once, and a tick that never came (the scheduler was down) is caught up by the next.

Nothing here runs at import: :func:`declare` declares the tick on the broker it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from periodiq import Scheduler, cron

from notifier.observability import metrics
from notifier.services.rules import RuleScheduler
from notifier.worker.broker import FIRE_SCHEDULES_ACTOR, SCHEDULE_QUEUE

TICK = "* * * * *"

logger = logging.getLogger("notifier.worker.schedules")


def declare(broker: dramatiq.Broker, rules: Callable[[], RuleScheduler]) -> dramatiq.Actor[[], None]:
    """Declare ``fire_schedules`` on ``broker`` (which needs periodiq's middleware, as
    :func:`notifier.worker.broker.build` gives it); ``rules`` gives a rule scheduler for one tick."""

    @dramatiq.actor(
        broker=broker,
        actor_name=FIRE_SCHEDULES_ACTOR,
        queue_name=SCHEDULE_QUEUE,
        periodic=cron(TICK),
        max_retries=0,
        time_limit=55_000,
    )
    def fire_schedules() -> None:
        """Turn the firings of schedule rules due within the lookahead into notifications."""
        rules().fire_due()
        metrics.tick()

    return fire_schedules


class TickScheduler(Scheduler):  # type: ignore[misc]
    """periodiq's scheduler, but a tick that cannot be sent (Redis away) is logged and skipped
    instead of ending the process: the next tick catches up from the database's state."""

    def send_actors(self, actors: list[Any], now: Any) -> None:
        try:
            super().send_actors(actors, now)
        except Exception as exc:
            logger.warning("could not send the scheduler tick; the next one catches up", extra={"error": repr(exc)})
            return
        for _ in actors:
            metrics.tick_sent()
