from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-26T13:52:40:825418"
VERSION = "1.38.0"
DESCRIPTION = "rule revision"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)

    manager.add_column(
        table_class_name="RuleTable",
        tablename="rules",
        column_name="revision",
        db_column_name="revision",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
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

    return manager
