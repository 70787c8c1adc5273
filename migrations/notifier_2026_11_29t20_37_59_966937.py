from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table


class NotificationTable(Table, tablename="notifications"):
    pass


ID = "2026-11-29T20:37:59:966937"
VERSION = "1.38.0"
DESCRIPTION = "scheduled notifications by due time"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)

    async def scheduled_index() -> None:
        # The relay's wake-ups read only this: a backlog of queued rows must not slow them.
        await NotificationTable.raw(
            "CREATE INDEX notifications_scheduled ON notifications (send_at) WHERE status = 'scheduled'"
        )

    manager.add_raw(scheduled_index)
    return manager
