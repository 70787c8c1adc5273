"""Real PostgreSQL and Redis for every test that needs them, isolated per test.

Where they come from, in this order: ``NOTIFIER_TEST_DATABASE_URL`` / ``NOTIFIER_TEST_REDIS_URL``;
containers, when a Docker engine answers; the local defaults (127.0.0.1:5432 and :6379); the
embedded servers of ``notifier dev``. Failing all of them, the run stops and says how to provide them.

PostgreSQL: the schema is migrated once (by ``notifier migrate``) into a template database, and
each test gets a fresh clone of it. Redis: each test gets its own key namespace, deleted after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from notifier.observability import tracing

pytest_plugins = ["tests.peers"] if importlib.util.find_spec("tests.peers") else []

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
PEER_NETWORKS = "127.0.0.0/8,::1/128"
"""Where the test peers listen (tests/peers.py): the NOTIFIER_WEBHOOK_ALLOWED_NETWORKS that lets webhooks reach them."""


def _reachable(url: str, kind: str) -> bool:
    try:
        if kind == "postgres":
            psycopg.connect(url, connect_timeout=3).close()
        else:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception:
        return False
    return True


def _from_containers(stack: contextlib.ExitStack) -> tuple[str, str] | None:
    try:
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer

        postgres = stack.enter_context(PostgresContainer("postgres:17", driver=None))
        cache = stack.enter_context(RedisContainer("redis:7"))
    except Exception:
        return None
    redis_url = f"redis://{cache.get_container_host_ip()}:{cache.get_exposed_port(6379)}/0"
    return postgres.get_connection_url(), redis_url


def _embedded(stack: contextlib.ExitStack, data_dir: Path) -> tuple[str, str] | None:
    """The servers ``notifier dev`` embeds, so that a machine with only Python and uv runs the suite."""
    try:
        from notifier.dev import EmbeddedServices

        embedded = stack.enter_context(EmbeddedServices(data_dir))
        return embedded.postgres(), embedded.redis()
    except Exception:
        return None


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(admin PostgreSQL URL, Redis URL) of the servers this run uses."""
    with contextlib.ExitStack() as stack:
        database_url = os.environ.get("NOTIFIER_TEST_DATABASE_URL")
        redis_url = os.environ.get("NOTIFIER_TEST_REDIS_URL")
        if not (database_url and redis_url):
            found = _from_containers(stack)
            if found is None and _reachable(LOCAL_DATABASE_URL, "postgres") and _reachable(LOCAL_REDIS_URL, "redis"):
                found = (LOCAL_DATABASE_URL, LOCAL_REDIS_URL)
            if found is None:
                found = _embedded(stack, tmp_path_factory.mktemp("embedded"))
            if found is None:
                pytest.exit(
                    "no PostgreSQL/Redis for the tests: set NOTIFIER_TEST_DATABASE_URL and NOTIFIER_TEST_REDIS_URL, "
                    "start a Docker engine (testcontainers), or run PostgreSQL on 127.0.0.1:5432 and Redis on "
                    "127.0.0.1:6379",
                    returncode=2,
                )
            database_url = database_url or found[0]
            redis_url = redis_url or found[1]
        yield database_url, redis_url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def template_database(services: tuple[str, str]) -> Iterator[str]:
    """A database migrated by the real ``notifier migrate``, used only as a template."""
    admin_url, _ = services
    name = f"notifier_template_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "NOTIFIER_DATABASE_URL": with_database(admin_url, name)}
        result = subprocess.run(
            [sys.executable, "-m", "notifier", "migrate"], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"notifier migrate failed:\n{result.stdout}\n{result.stderr}"
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(services: tuple[str, str], template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    admin_url, _ = services
    name = f"notifier_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(services: tuple[str, str]) -> str:
    return services[1]


def _delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key namespace of this test's own (for processes it starts), deleted afterwards."""
    namespace = f"ntest{secrets.token_hex(6)}"
    yield namespace
    _delete_namespace(redis_url, namespace)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span exported at its end into the exporter yielded."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def notifier_env(database_url: str, redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    """A process environment with only this test's NOTIFIER_* settings.

    Webhooks may reach the local peers (on loopback, refused by default) unless ``extra`` says otherwise.
    The worker's and the scheduler's metrics servers listen on loopback, on free ports of their own
    (so that tests running at once never collide on the defaults).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        NOTIFIER_DATABASE_URL=database_url,
        NOTIFIER_REDIS_URL=redis_url,
        NOTIFIER_REDIS_NAMESPACE=namespace,
        **{
            "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": PEER_NETWORKS,
            "NOTIFIER_METRICS_HOST": "127.0.0.1",
            "NOTIFIER_WORKER_METRICS_PORT": str(free_port()),
            "NOTIFIER_SCHEDULER_METRICS_PORT": str(free_port()),
            **extra,
        },
    )
    return env
