"""The bare API ceiling: Litestar + uvicorn (1 worker), POST → msgspec → one asyncpg INSERT → one LPUSH.

``python -m bench.ceilings.bare_api --port P --database-url U --redis-url R --key K`` serves
``POST /notify`` on a plain table (:data:`TABLE`, made by :func:`create_table`) with nothing else:
no validation beyond msgspec's decoding, no ORM, no middleware, no logging.
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import psycopg
import redis.asyncio
import uvicorn
from litestar import Litestar, post

TABLE = "bench_bare_insert"
POOL_SIZE = 10
"""The same as ``NOTIFIER_DATABASE_POOL_SIZE``'s default."""


class Notify(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    recipient: str
    body: str
    subject: str | None = None


class Accepted(msgspec.Struct):
    id: uuid.UUID
    status: str


def create_table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, channel text NOT NULL,"
            " recipient text NOT NULL, subject text, body text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )


def create_app(database_url: str, redis_url: str, key: str) -> Litestar:
    state: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=POOL_SIZE)
        client = redis.asyncio.Redis.from_url(redis_url)
        state["pool"], state["redis"] = pool, client
        try:
            yield
        finally:
            await client.aclose()
            await pool.close()

    @post("/notify", status_code=202)
    async def notify(data: Notify) -> Accepted:
        pool: asyncpg.Pool = state["pool"]
        client: redis.asyncio.Redis = state["redis"]  # type: ignore[assignment]
        new_id = uuid.uuid4()
        await pool.execute(
            f"INSERT INTO {TABLE} (id, channel, recipient, subject, body) VALUES ($1, $2, $3, $4, $5)",  # noqa: S608
            new_id,
            data.channel,
            data.recipient,
            data.subject,
            data.body,
        )
        await client.lpush(key, str(new_id))
        return Accepted(id=new_id, status="queued")

    return Litestar(route_handlers=[notify], lifespan=[lifespan], logging_config=None, openapi_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.bare_api")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key", required=True, help="the Redis list each request pushes its id on")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.database_url, args.redis_url, args.key),
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
