"""What Dramatiq's queue maintenance costs a Redis command, and so which ``MAINTENANCE_CHANCE`` to run.

    uv run python -m bench.maintenance [--redis-url URL] [--calls N]

Dramatiq's dispatch script runs maintenance on a random ``maintenance_chance`` out of a million
commands (every command but ``ack`` and ``nack``; a worker's fetches are most of them): it lists the
workers whose heartbeat is older than the heartbeat timeout and, for each, puts the ids of its
unacknowledged messages of that queue back on the queue, deletes that set, and runs ``KEYS
<its acks>*`` (a walk over every key of the Redis database) to see whether it can forget the
worker; then it drops expired dead letters. This times one dispatch call (``qsize`` of the
delivery queue, which changes nothing, as the carrier) on a queue of 10,000 messages, without
maintenance and with it: with no dead worker (the usual case), with 20 dead workers holding 10
unacknowledged messages each (recreated before every call, as maintenance clears them), and the
same again with 10,000 unrelated keys in the database (``KEYS`` walks them too). It prints the
cost of maintenance and what it adds to the average command at candidate chances, beside how long
a dead worker's messages wait for it. It works in a Redis namespace of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
import uuid
from collections.abc import Callable

import redis
from dramatiq.brokers.redis import DEFAULT_DEAD_MESSAGE_TTL, MAINTENANCE_SCALE

from notifier.cli import WORKER_POLL_MS
from notifier.settings import WorkerSettings
from notifier.worker.broker import DELIVERY_QUEUE, MAINTENANCE_CHANCE, Broker, enqueuer

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUED = 10_000
DEAD_WORKERS = 20
UNACKED_EACH = 10
OTHER_KEYS = 10_000
CHANCES = (1_000, 10_000, 100_000)
"""Dramatiq's default, ten times it and a hundred times it."""


class Bench:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.broker = Broker(client=client, namespace=namespace)
        self.dispatch = self.broker.scripts["dispatch"]
        self.timeout_ms = int(WorkerSettings().heartbeat_timeout * 1000)

    def fill(self) -> None:
        enqueuer(self.broker)([(uuid.uuid4(), 0) for _ in range(QUEUED)])
        self.queued = self.client.lrange(f"{self.namespace}:{DELIVERY_QUEUE}", 0, UNACKED_EACH * DEAD_WORKERS - 1)

    def call(self, maintenance: bool) -> float:
        """One dispatch call, as ``RedisBroker`` makes it; seconds taken."""
        args = [
            "qsize",
            int(time.time() * 1000),
            DELIVERY_QUEUE,
            self.broker.broker_id,
            self.timeout_ms,
            DEFAULT_DEAD_MESSAGE_TTL,
            int(maintenance),
            self.broker._max_unpack_size(),
        ]
        start = time.perf_counter()
        self.dispatch(keys=[self.namespace], args=args)
        return time.perf_counter() - start

    def kill_workers(self) -> None:
        """Twenty workers, silent since the epoch, each with 10 of the queued messages fetched."""
        pipe = self.client.pipeline(transaction=False)
        for index in range(DEAD_WORKERS):
            worker_id = f"dead-{index}"
            pipe.zadd(f"{self.namespace}:__heartbeats__", {worker_id: 1})
            ids = self.queued[index * UNACKED_EACH : (index + 1) * UNACKED_EACH]
            pipe.sadd(f"{self.namespace}:__acks__.{worker_id}.{DELIVERY_QUEUE}", *ids)
        # What maintenance pushed back on the queue goes, so every call sees the same queue.
        pipe.ltrim(f"{self.namespace}:{DELIVERY_QUEUE}", 0, QUEUED - 1)
        pipe.execute()

    def add_other_keys(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for index in range(OTHER_KEYS):
            pipe.set(f"{self.namespace}:other:{index}", "x")
        pipe.execute()

    def times(self, calls: int, maintenance: bool, prepare: Callable[[], None] | None = None) -> list[float]:
        taken = []
        for _ in range(calls):
            if prepare is not None:
                prepare()
            taken.append(self.call(maintenance))
        return taken

    def delete(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])


def summary(taken: list[float]) -> tuple[float, float]:
    """(median, p99) in microseconds."""
    ordered = sorted(taken)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.99) - 1] * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.maintenance", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--calls", type=int, default=400, help="timed dispatch calls per case (default 400)")
    options = parser.parse_args(argv)

    client = redis.Redis.from_url(options.redis_url)
    bench = Bench(client, f"bench-maintenance-{secrets.token_hex(4)}")
    try:
        bench.fill()
        calls = options.calls
        bench.times(50, False)  # warm-up: the script is loaded, the connection made
        cases = {"without maintenance": bench.times(calls, False)}
        cases["maintenance, no dead worker"] = bench.times(calls, True)
        cases[f"maintenance, {DEAD_WORKERS} dead workers"] = bench.times(calls, True, bench.kill_workers)
        bench.add_other_keys()
        keys = client.dbsize()
        cases[f"… and {OTHER_KEYS:,} more keys"] = bench.times(calls, True, bench.kill_workers)
    finally:
        bench.delete()
        client.close()

    info = client.info("server")
    print(f"Redis {info['redis_version']}, {QUEUED:,} queued messages, {calls} calls a case")
    print(f"(the database held {keys:,} keys in the last case, other namespaces included)\n")
    print(f"{'one dispatch call':<38} {'median µs':>10} {'p99 µs':>10}")
    medians = {}
    for name, taken in cases.items():
        median, p99 = summary(taken)
        medians[name] = median
        print(f"{name:<38} {median:>10.1f} {p99:>10.1f}")
    base = medians["without maintenance"]
    idle = max(0.0, medians["maintenance, no dead worker"] - base)
    dead = max(0.0, medians[f"maintenance, {DEAD_WORKERS} dead workers"] - base)
    crowded = max(0.0, medians[f"… and {OTHER_KEYS:,} more keys"] - base)

    poll = WORKER_POLL_MS / 1000
    timeout = bench.timeout_ms / 1000
    print(
        f"\nWhat maintenance adds to the average command at each chance, and how long a dead worker's "
        f"messages wait\n(the heartbeat timeout, {timeout:g} s, and then the expected wait for a maintenance on "
        f"their queue,\nwith one live worker process fetching from it every {poll:g} s, as an idle one does):"
    )
    print(f"{'chance':>9} {'no dead':>10} {'20 dead':>10} {'+10k keys':>10} {'recovered after':>16}")
    for chance in CHANCES:
        share = chance / MAINTENANCE_SCALE
        wait = poll / share
        marker = "  ← MAINTENANCE_CHANCE" if chance == MAINTENANCE_CHANCE else ""
        print(
            f"{chance:>9,} {idle * share:>8.2f}µs {dead * share:>8.2f}µs {crowded * share:>8.2f}µs "
            f"{timeout + wait:>14.1f} s{marker}"
        )


if __name__ == "__main__":
    main()
