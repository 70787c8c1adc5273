from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-26T13:02:40:799931"
VERSION = "1.38.0"
DESCRIPTION = "indexes and constraints"

STATEMENTS = (
    "ALTER TABLE notifications ADD CONSTRAINT notifications_status_check CHECK (status IN"
    " ('scheduled', 'queued', 'sending', 'retrying', 'sent', 'failed', 'cancelled'))",
    # Keyset pagination, newest first, with and without a status filter.
    "CREATE INDEX notifications_created_at_id ON notifications (created_at DESC, id DESC)",
    "CREATE INDEX notifications_status_created_at_id ON notifications (status, created_at DESC, id DESC)",
    # The outbox relay's scan: only rows that may still need enqueueing.
    "CREATE INDEX notifications_outbox ON notifications (COALESCE(send_at, created_at))"
    " WHERE status IN ('scheduled', 'queued', 'retrying')",
    "CREATE UNIQUE INDEX delivery_attempts_notification_number ON delivery_attempts (notification, number)",
)


class Notifications(Table, tablename="notifications"):
    pass


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)

    async def run() -> None:
        for statement in STATEMENTS:
            await Notifications.raw(statement)

    manager.add_raw(run)
    return manager
