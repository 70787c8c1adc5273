"""Periodic work, driven by periodiq (``notifier scheduler``) and run by the workers.

periodiq sends ``fire_schedules`` every minute; any worker runs it. It is idempotent: it works
from each rule's ``next_fire_at`` in PostgreSQL, so two schedulers (two ticks a minute) create
each firing once, and a tick that never came (the scheduler was down) is caught up by the next.
"""

from __future__ import annotations

import dramatiq
from periodiq import cron

from notifier.services.rules import RuleScheduler
from notifier.worker.actors import pool, settings
from notifier.worker.broker import FIRE_SCHEDULES_ACTOR, SCHEDULE_QUEUE

TICK = "* * * * *"


@dramatiq.actor(
    actor_name=FIRE_SCHEDULES_ACTOR,
    queue_name=SCHEDULE_QUEUE,
    periodic=cron(TICK),
    max_retries=0,
    time_limit=55_000,
)
def fire_schedules() -> None:
    """Turn the firings of schedule rules due within the lookahead into notifications."""
    RuleScheduler(settings, pool()).fire_due()
