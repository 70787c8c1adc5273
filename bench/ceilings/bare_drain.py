"""The bare delivery ceiling: Dramatiq on Redis, a sync actor doing one psycopg UPDATE per message.

Workers: ``python -m dramatiq bench.ceilings.bare_drain --processes 2 --threads 8`` (the broker and
the database come from ``BENCH_DRAIN_REDIS_URL``, ``BENCH_DRAIN_NAMESPACE`` and
``BENCH_DRAIN_DATABASE_URL``). The suite fills :data:`TABLE` with N rows (:func:`prepare`), enqueues
one message per row up front, pipelined (``python -m bench.ceilings.bare_drain enqueue N``), starts
the workers, and takes the time from the first row updated to the last (``done_at``).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker

TABLE = "bench_bare_drain"
ACTOR = "bare_update"
QUEUE = "bench.bare"
PIPELINE_BATCH = 500

broker = RedisBroker(
    url=os.environ.get("BENCH_DRAIN_REDIS_URL", "redis://127.0.0.1:6379/0"),
    namespace=os.environ.get("BENCH_DRAIN_NAMESPACE", "bench-bare"),
)
dramatiq.set_broker(broker)

_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["BENCH_DRAIN_DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE)
def bare_update(row_id: int) -> None:
    _connection().execute(f"UPDATE {TABLE} SET done_at = clock_timestamp() WHERE id = %s", (row_id,))  # noqa: S608


def prepare(database_url: str, count: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, done_at timestamptz)")
        conn.execute(f"INSERT INTO {TABLE} (id) SELECT generate_series(1, %s)", (count,))
        conn.execute(f"VACUUM ANALYZE {TABLE}")


def enqueue(count: int) -> float:
    """Enqueue ``count`` messages through the broker's own Lua script, 500 per pipeline; seconds taken."""
    script = broker.scripts["dispatch"]
    started = time.perf_counter()
    for start in range(1, count + 1, PIPELINE_BATCH):
        now = int(time.time() * 1000)
        with broker.client.pipeline(transaction=False) as pipe:
            for row_id in range(start, min(start + PIPELINE_BATCH, count + 1)):
                message: dramatiq.Message[None] = dramatiq.Message(
                    queue_name=QUEUE,
                    actor_name=ACTOR,
                    args=(row_id,),
                    kwargs={},
                    options={"redis_message_id": str(uuid.uuid4())},
                )
                args = [
                    "enqueue",
                    now,
                    QUEUE,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    0,
                    broker._max_unpack_size(),
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                script(keys=[broker.namespace], args=args, client=pipe)
            pipe.execute()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.bare_drain")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("enqueue").add_argument("count", type=int)
    args = parser.parse_args()
    broker.declare_queue(QUEUE)
    seconds = enqueue(args.count)
    print(f'{{"enqueued": {args.count}, "seconds": {seconds:.6f}}}', flush=True)


if __name__ == "__main__":
    main()
