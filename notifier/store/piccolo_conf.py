"""Piccolo's configuration module (``PICCOLO_CONF=notifier.store.piccolo_conf``).

Only Piccolo's own tooling imports it: ``notifier migrate`` and ``piccolo migrations new``. It
reads ``NOTIFIER_DATABASE_URL`` alone, so creating a migration needs no other setting.
"""

from __future__ import annotations

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

DB = PostgresEngine(config={"dsn": os.environ.get("NOTIFIER_DATABASE_URL", "postgresql://localhost/notifier")})
APP_REGISTRY = AppRegistry(apps=["notifier.store.piccolo_app"])
