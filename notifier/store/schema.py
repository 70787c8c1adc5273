"""Applying migrations: idempotent, and serialised across processes by a PostgreSQL advisory lock."""

from __future__ import annotations

import asyncio
import os

import psycopg

from notifier.errors import NotifierError

MIGRATION_LOCK = 0x6E6F7469  # "noti": one arbitrary, fixed advisory-lock key for every migrator


def migrate(database_url: str) -> None:
    """Apply every pending migration; a second copy running at once waits, then finds nothing to do."""
    with psycopg.connect(database_url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            asyncio.run(_forwards(database_url))
        finally:
            lock.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _forwards(database_url: str) -> None:
    os.environ["PICCOLO_CONF"] = "notifier.store.piccolo_conf"
    os.environ["NOTIFIER_DATABASE_URL"] = database_url
    from piccolo.apps.migrations.commands.forwards import run_forwards
    from piccolo.engine.postgres import PostgresEngine

    from notifier.store import piccolo_conf

    piccolo_conf.DB = PostgresEngine(config={"dsn": database_url}, log_queries=False)
    result = await run_forwards(app_name="notifier")
    if not result.success:
        raise NotifierError(f"migration failed: {result.message}")
