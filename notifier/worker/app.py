"""The worker's composition: the broker, made Dramatiq's global broker first, then the actors
declared on it with what they need (settings, the database pool, the channels) passed in.

``notifier worker`` runs Dramatiq's CLI on ``notifier.worker.app:setup``, which each worker process
calls before it starts its threads. ``notifier scheduler`` takes :class:`Resources` for its own
pool and declares only the tick. Importing this module does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit
from prometheus_client import CollectorRegistry

from notifier import channels
from notifier import settings as settings_module
from notifier.channels.base import Channel as ChannelImpl
from notifier.domain import Channel
from notifier.observability import metrics, multiprocess, tracing
from notifier.observability.logging import configure_logging
from notifier.services.delivery import Dispatcher
from notifier.services.rules import RuleScheduler
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from notifier.worker import actors, schedules
from notifier.worker.actors import DeadLetterStream
from notifier.worker.broker import DELIVER_ACTOR, build, dead_letter_stream

logger = logging.getLogger("notifier.worker")


class Resources:
    """What the actors of one process share, each opened once, on first use (after Dramatiq has
    started the process): the database pool, and the dispatcher with one instance of each channel.

    ``open_pool`` and ``open_channels`` default to what the settings name.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        open_pool: Callable[[], delivery_store.Pool] | None = None,
        open_channels: Callable[[], Mapping[Channel, ChannelImpl]] | None = None,
    ) -> None:
        self.settings = settings
        self._open_pool = open_pool or (
            lambda: delivery_store.open_pool(settings.database.url, size=settings.database.pool_size)
        )
        self._open_channels = open_channels or (lambda: channels.build(settings))
        self._lock = threading.Lock()
        self._pool: delivery_store.Pool | None = None
        self._dispatcher: Dispatcher | None = None

    def pool(self) -> delivery_store.Pool:
        with self._lock:
            if self._pool is None:
                self._pool = self._open_pool()
            return self._pool

    def dispatcher(self) -> Dispatcher:
        shared = self.pool()
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(self.settings, shared, dict(self._open_channels()))
            return self._dispatcher

    def rules(self) -> RuleScheduler:
        """A rule scheduler for one tick."""
        return RuleScheduler(self.settings, self.pool())


class OpenOnBoot(dramatiq.Middleware):
    """Opens the database pool and the channels as a worker process boots, before its consumers
    start: done on the first delivery instead, it held up the deliveries of the first 1-2 seconds
    after a start under load (mostly importing the channels' libraries)."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        try:
            self.resources.dispatcher()
        except Exception as exc:  # the first delivery opens them instead, and reports why it cannot
            logger.warning("could not open the database pool at boot", extra={"error": repr(exc)})


def count_given_up(message: MessageProxy) -> None:
    """Counts a delivery message Dramatiq gave up on (its infrastructure retries spent, PostgreSQL
    away for long) as ``abandoned``. The worker's Prometheus middleware calls it for every message
    failed for good, after Dramatiq's Retries middleware has decided."""
    if message.actor_name == DELIVER_ACTOR:
        metrics.delivered(metrics.UNKNOWN_CHANNEL, "abandoned")


def instrument(broker: dramatiq.Broker) -> None:
    """Count this worker process's metrics: Dramatiq's Prometheus middleware (whose exposition server
    serves every process's, from the multiprocess directory ``notifier worker`` set) and notifier's,
    both noted on the process's tally (:mod:`notifier.observability.tally`)."""
    # Imported here: the module reads its dramatiq_prom_* variables at import, which `notifier worker`
    # sets before it starts Dramatiq; nothing else needs it.
    from notifier.worker.prometheus import Prometheus

    multiprocess.install()
    counts = multiprocess.counts()
    metrics.install("worker", CollectorRegistry(), counts)
    # Where Dramatiq's default middleware puts it: its after hooks run after Retries' have decided.
    broker.add_middleware(Prometheus(counts, given_up=count_given_up), before=AgeLimit)


@dataclass(frozen=True)
class Actors:
    deliver_notification: dramatiq.Actor[[str], None]
    fire_schedules: dramatiq.Actor[[], None]


def declare(broker: dramatiq.Broker, resources: Resources, dead_letters: DeadLetterStream) -> Actors:
    """Declare every actor a worker runs on ``broker``, which has the middleware
    :func:`~notifier.worker.broker.build` gives it, and open ``resources`` as its workers boot."""
    broker.add_middleware(OpenOnBoot(resources))
    return Actors(
        deliver_notification=actors.declare(broker, resources.dispatcher, dead_letters),
        fire_schedules=schedules.declare(broker, resources.rules),
    )


def install_broker(settings: Settings) -> RedisBroker:
    """Build the broker and make it Dramatiq's global broker, before any actor is declared on it."""
    broker = build(settings)
    dramatiq.set_broker(broker)
    return broker


def setup() -> None:
    """A worker process's start, called by Dramatiq's CLI (``notifier.worker.app:setup``), which
    then takes the global broker: settings, logging, tracing, the broker, the actors. Tracing starts
    here, in each worker process, as its exporter's thread would not survive the fork."""
    settings = settings_module.load()
    configure_logging(settings.log.level)
    tracing.configure("notifier-worker")
    broker = install_broker(settings)
    if settings.metrics.enabled:
        instrument(broker)
    declare(broker, Resources(settings), DeadLetterStream(broker.client, dead_letter_stream(settings)))
