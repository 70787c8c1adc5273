from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table


class NotificationTable(Table, tablename="notifications"):
    pass


ID = "2026-11-26T13:57:38:302621"
VERSION = "1.38.0"
DESCRIPTION = "replays and dead letters"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)

    manager.add_column(
        table_class_name="NotificationTable",
        tablename="notifications",
        column_name="attempt_base",
        db_column_name="attempt_base",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    async def failed_index() -> None:
        await NotificationTable.raw(
            "CREATE INDEX notifications_failed ON notifications (updated_at DESC, id DESC) WHERE status = 'failed'"
        )

    manager.add_raw(failed_index)
    return manager
