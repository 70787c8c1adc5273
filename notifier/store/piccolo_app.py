"""The Piccolo app: its tables, and its migrations in the top-level ``migrations/`` folder."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig

from notifier.store.tables import DeliveryAttemptTable, EventTable, NotificationTable, RuleTable


def migrations_folder() -> Path:
    """The repository's ``migrations/``; an installed wheel carries them inside the package."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


APP_CONFIG = AppConfig(
    app_name="notifier",
    migrations_folder_path=str(migrations_folder()),
    table_classes=[RuleTable, EventTable, NotificationTable, DeliveryAttemptTable],
)
