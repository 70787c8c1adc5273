from __future__ import annotations

from collections.abc import Iterator

import pytest
from dramatiq.brokers.redis import RedisBroker
from litestar import Litestar
from litestar.testing import TestClient

from notifier import settings as settings_module
from notifier.settings import Settings
from notifier.store import delivery as delivery_store
from notifier.worker.broker import AsyncEnqueuer, build, queue_depths, ticker
from tests.conftest import notifier_env


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_namespace: str) -> Settings:
    """Settings for in-process tests: this test's database and Redis namespace, no auth."""
    return settings_module.load(notifier_env(database_url, redis_url, redis_namespace, NOTIFIER_AUTH_DISABLED="true"))


def make_app(settings: Settings) -> Litestar:
    """The API as ``notifier api`` builds it."""
    from notifier.api.app import create_app

    broker = build(settings)
    return create_app(settings, broker, AsyncEnqueuer(broker, settings.redis.url), ticker(broker), queue_depths)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Litestar]]:
    with TestClient(make_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def broker(settings: Settings) -> Iterator[RedisBroker]:
    built = build(settings)
    yield built
    built.close()


@pytest.fixture
def pool(database_url: str) -> Iterator[delivery_store.Pool]:
    pool = delivery_store.open_pool(database_url, size=4)
    yield pool
    pool.close()
