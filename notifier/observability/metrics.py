"""Every Prometheus metric notifier defines, and the small helpers the code calls to count.

Nothing is counted until a process installs the families on a registry (:func:`install`): the API
and the scheduler on prometheus-client's default registry (with its ``process_*`` and
``python_*`` families), each worker process on a registry of its own, written through
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``notifier worker``
before any process imports prometheus-client) and served for all of them by Dramatiq's exposition
server. Until then, and with ``NOTIFIER_METRICS_ENABLED=false``, every helper does nothing.

Labels are bounded: a channel, a source, an outcome, a reason, a queue, a status; never a
recipient, an id or a raw path. A helper's label values are the constants below; a channel that
cannot be known (the notification's row is gone or unreadable) is :data:`UNKNOWN_CHANNEL`.

Each process exports every series it can count from the start, at 0: Prometheus takes a series'
first sample as its start, so a counter that appeared at 1 would hide its first event from
``rate()`` and ``increase()`` — a first dead letter would raise no alert.

The API's gauges read from Redis and PostgreSQL at scrape are not kept here: the scrape reads
them (:mod:`notifier.api.metrics`) and hands them to :func:`live_families` as plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

from notifier.domain import Channel
from notifier.observability.tally import Counts, Direct, Tally

Source = Literal["api", "batch", "event", "rule"]
Outcome = Literal["sent", "transient_error", "permanent_error", "timeout", "abandoned", "dead_lettered"]
RelayReason = Literal["due", "missed", "lost", "lease_expired"]
RuleOutcome = Literal["fired", "failed"]

SOURCES: tuple[Source, ...] = ("api", "batch", "event", "rule")
OUTCOMES: tuple[Outcome, ...] = ("sent", "transient_error", "permanent_error", "timeout", "abandoned", "dead_lettered")
RELAY_REASONS: tuple[RelayReason, ...] = ("due", "missed", "lost", "lease_expired")
RULE_OUTCOMES: tuple[RuleOutcome, ...] = ("fired", "failed")
QUEUE_STATES = ("ready", "delayed", "dead")
UNKNOWN_CHANNEL = "unknown"

PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds a provider call takes: a log line in microseconds, an SMTP server or an HTTP API in tens of
milliseconds, a timeout at ``NOTIFIER_DELIVERY_TIMEOUT`` (10 s by default)."""

DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds from due to sent (or to the first attempt): tens of milliseconds when all is well, up to
the retries' backoff, an hour for a backlog."""


@dataclass(frozen=True)
class QueueDepth:
    """A queue as Redis holds it: messages ``ready`` for a worker, ``delayed`` until their eta (in the
    delay queue, or fetched from it by a worker that holds them until then), ``dead`` (Dramatiq's
    dead-letter queue), and how long the oldest ready one has waited."""

    ready: int
    delayed: int
    dead: int
    oldest_ready_age: float
    """Seconds since the oldest ready message was enqueued, or fell due (its eta); 0 when none is ready."""


Process = Literal["api", "worker", "scheduler"]


class Families:
    """The families one process counts, on ``registry``. Those with labels are on every process,
    each exporting the series that process counts, from 0; those without are on the process that
    counts them only, as a family without labels is exported from its creation."""

    def __init__(self, registry: CollectorRegistry, process: Process, counts: Counts) -> None:
        self.counts = counts
        """How the helpers count: at once, or on a tally (:mod:`.tally`) added up later."""
        self.accepted = Counter(
            "notifier_notifications_accepted",
            "Notifications stored for delivery, by channel and by what created them (api: POST /notify, batch:"
            " POST /notify/batch, event: POST /events, rule: a schedule rule's firing).",
            ["channel", "source"],
            registry=registry,
        )
        self.deliveries = Counter(
            "notifier_deliveries",
            "Delivery attempts by outcome (sent, transient_error, permanent_error, timeout); abandoned: a message"
            " dropped with no attempt, or given up by Dramatiq; dead_lettered: a notification failed for good.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.provider = Histogram(
            "notifier_delivery_duration_seconds",
            "Seconds the provider call of one attempt took (SMTP, the SMS gateway, the webhook, the log).",
            ["channel"],
            buckets=PROVIDER_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "notifier_delivery_latency_seconds",
            "Seconds from due (send_at, else created_at) to sent, retries included.",
            ["channel"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "notifier_delivery_lateness_seconds",
            "Seconds from due (send_at, else created_at) to the start of the first attempt.",
            ["channel"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        # Created only where counted: a family without labels is exported (at 0) once created, and
        # in multiprocess mode whatever registry it is on.
        self.ticks = (
            Counter(
                "notifier_scheduler_ticks",
                "Scheduler ticks (fire_schedules) a worker ran to their end.",
                registry=registry,
            )
            if process == "worker"
            else None
        )
        self.rule_firings = Counter(
            "notifier_rule_firings",
            "Firings of schedule rules: fired (made notifications to deliver), failed (made none, or could not fire).",
            ["outcome"],
            registry=registry,
        )
        self.relayed = Counter(
            "notifier_relay_enqueued",
            "Notifications the outbox relay enqueued, by why: due (fell due, or a rule fired), missed (the API's"
            " enqueue failed), lost (enqueued long ago, never delivered), lease_expired (a dead worker left it"
            " sending).",
            ["reason"],
            registry=registry,
        )
        self.relay_passes = (
            Counter("notifier_relay_passes", "Passes the outbox relay made.", registry=registry)
            if process == "scheduler"
            else None
        )
        self.ticks_sent = (
            Counter(
                "notifier_scheduler_ticks_sent",
                "Scheduler ticks (fire_schedules) the scheduler sent.",
                registry=registry,
            )
            if process == "scheduler"
            else None
        )
        self.accepted_of = Series(self.accepted)
        self.deliveries_of = Series(self.deliveries)
        self.provider_of = Series(self.provider)
        self.latency_of = Series(self.latency)
        self.lateness_of = Series(self.lateness)
        self.rule_firings_of = Series(self.rule_firings)
        self.relayed_of = Series(self.relayed)
        self.count = counts.count
        self.observe = counts.observe
        self._start_at_zero(process)

    def _start_at_zero(self, process: Process) -> None:
        """Create, at 0, every series ``process`` counts (see the module's docstring): looking a
        series up in its :class:`Series` makes it."""
        channels = [channel.value for channel in Channel]
        if process == "api":
            for channel in channels:
                for source in ("api", "batch", "event"):
                    self.accepted_of[channel, source]
        elif process == "worker":
            for channel in channels:
                self.accepted_of[channel, "rule"]
                for outcome in OUTCOMES:
                    self.deliveries_of[channel, outcome]
                for histogram in (self.provider_of, self.latency_of, self.lateness_of):
                    histogram[channel]
            self.deliveries_of[UNKNOWN_CHANNEL, "abandoned"]
            for rule_outcome in RULE_OUTCOMES:
                self.rule_firings_of[rule_outcome]
        else:
            for reason in RELAY_REASONS:
                self.relayed_of[reason]


class Series(dict[Any, Any]):
    """A family's children by their label values (a tuple of them, or the one value of a family with
    one label), each made on first use: ``family.labels()`` takes a lock and builds a tuple on every
    call, and a worker counts four times a message."""

    def __init__(self, family: MetricWrapperBase) -> None:
        super().__init__()
        self.family = family

    def __missing__(self, labels: str | tuple[str, ...]) -> Any:
        # Two threads may both get here: the family gives both the same child.
        found = self[labels] = self.family.labels(*labels) if isinstance(labels, tuple) else self.family.labels(labels)
        return found


_installed: dict[CollectorRegistry, Families] = {}
_active: Families | None = None


def install(process: Process, registry: CollectorRegistry = REGISTRY, counts: Counts | None = None) -> Families:
    """Define ``process``'s families on ``registry`` (once per registry) and count on them from now on,
    with ``counts`` (at once unless told).

    The ``*_created`` series prometheus-client adds to every counter and histogram are left out:
    nothing here reads them, and they doubled what a scrape carries."""
    global _active
    disable_created_metrics()  # type: ignore[no-untyped-call]
    families = _installed.get(registry)
    if families is None:
        families = _installed[registry] = Families(registry, process, Direct() if counts is None else counts)
    _active = families
    return families


def add_up() -> None:
    """Add up what this process noted and has not yet counted, if it counts on a tally (the API before
    a scrape; a worker process's flusher adds its own up)."""
    if (f := _active) is not None and isinstance(f.counts, Tally):
        f.counts.add_up()


def disable() -> None:
    """Count nothing from now on (``NOTIFIER_METRICS_ENABLED=false``; tests)."""
    global _active
    _active = None


def enabled() -> bool:
    return _active is not None


def accepted(channel: str, source: Source, n: int = 1) -> None:
    """``n`` notifications on ``channel`` stored for delivery by ``source``."""
    if (f := _active) is not None and n:
        f.count(f.accepted_of[channel, source], n)


def delivered(channel: str, outcome: Outcome) -> None:
    """One delivery outcome: an attempt's, or a message ``abandoned``, or a notification ``dead_lettered``."""
    if (f := _active) is not None:
        f.count(f.deliveries_of[channel, outcome], 1)


def provider_call(channel: str, seconds: float) -> None:
    """The provider call of one attempt took ``seconds``."""
    if (f := _active) is not None:
        f.observe(f.provider_of[channel], seconds)


def sent(channel: str, latency: float) -> None:
    """A notification was sent ``latency`` seconds after it was due."""
    if (f := _active) is not None:
        f.observe(f.latency_of[channel], max(0.0, latency))


def first_attempt(channel: str, lateness: float) -> None:
    """A notification's first attempt started ``lateness`` seconds after it was due."""
    if (f := _active) is not None:
        f.observe(f.lateness_of[channel], max(0.0, lateness))


def tick() -> None:
    """A worker ran a scheduler tick to its end."""
    if (f := _active) is not None and f.ticks is not None:
        f.count(f.ticks, 1)


def rule_firings(outcome: RuleOutcome, n: int = 1) -> None:
    if (f := _active) is not None and n:
        f.count(f.rule_firings_of[outcome], n)


def relayed(counts: Mapping[RelayReason, int]) -> None:
    """One relay pass: how many it enqueued, by reason."""
    if (f := _active) is not None and f.relay_passes is not None:
        f.count(f.relay_passes, 1)
        for reason, n in counts.items():
            if n:
                f.count(f.relayed_of[reason], n)


def tick_sent() -> None:
    """The scheduler sent a tick."""
    if (f := _active) is not None and f.ticks_sent is not None:
        f.count(f.ticks_sent, 1)


def live_families(
    *,
    queues: Mapping[str, QueueDepth] | None,
    dead_letters: int | None,
    statuses: Mapping[str, int] | None,
    up: Mapping[str, bool],
) -> Iterator[Metric]:
    """The API's gauges as read at scrape: per queue its messages by state and the age of its oldest
    ready one, the dead-letter stream's length, the notifications by status, and whether each backend
    answered. What a backend did not answer (``None``) is left out rather than reported stale."""
    if queues is not None:
        messages = GaugeMetricFamily(
            "notifier_queue_messages",
            "Messages in each Redis queue: ready (waiting for a worker), delayed (waiting for their eta),"
            " dead (in Dramatiq's dead-letter queue).",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "notifier_queue_oldest_message_age_seconds",
            "Seconds the oldest ready message of each queue has waited for a worker (0 when none waits).",
            labels=["queue"],
        )
        for queue, depth in queues.items():
            for state in QUEUE_STATES:
                messages.add_metric([queue, state], getattr(depth, state))
            oldest.add_metric([queue], depth.oldest_ready_age)
        yield messages
        yield oldest
    if dead_letters is not None:
        yield GaugeMetricFamily(
            "notifier_dead_letters", "Entries in the dead-letter stream (<namespace>:dead-letters).", value=dead_letters
        )
    if statuses is not None:
        by_status = GaugeMetricFamily(
            "notifier_notifications", "Notifications in PostgreSQL by status.", labels=["status"]
        )
        for status, count in statuses.items():
            by_status.add_metric([status], count)
        yield by_status
    backend_up = GaugeMetricFamily(
        "notifier_backend_up",
        "1 if the backend (redis, postgresql) answered this scrape's reads of the API's gauges, else 0.",
        labels=["backend"],
    )
    for backend, answered in up.items():
        backend_up.add_metric([backend], 1.0 if answered else 0.0)
    yield backend_up


class Chain:
    """Collects from each of ``collectors`` in turn (what prometheus-client's exposition takes)."""

    def __init__(self, *collectors: Iterable[Metric] | CollectorRegistry) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect() if isinstance(collector, CollectorRegistry) else collector
