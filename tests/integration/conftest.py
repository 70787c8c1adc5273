from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from psycopg_pool import ConnectionPool

from notifier import settings as settings_module
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from tests.conftest import notifier_env


@pytest.fixture
def settings(database_url: str, redis_url: str, broker_namespace: str) -> Settings:
    """Settings for in-process tests: this test's database, the session's broker namespace."""
    return settings_module.load(notifier_env(database_url, redis_url, broker_namespace, NOTIFIER_AUTH_DISABLED="true"))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """The API in this process, without its outbox relay (tests call the relay themselves)."""
    from notifier.api.app import create_app

    with TestClient(create_app(settings, relay=False)) as test_client:
        yield test_client


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    pool = delivery_store.open_pool(database_url, size=4)
    yield pool
    pool.close()
