from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer, Text
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T05:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "rules disabled after repeated failed firings"

_PARAMS = {
    "primary_key": False,
    "unique": False,
    "index": False,
    "index_method": IndexMethod.btree,
    "choices": None,
    "db_column_name": None,
    "secret": False,
}


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)
    manager.add_column(
        table_class_name="RuleTable",
        tablename="rules",
        column_name="failures",
        db_column_name="failures",
        column_class_name="Integer",
        column_class=Integer,
        params={**_PARAMS, "default": 0, "null": False},
        schema=None,
    )
    manager.add_column(
        table_class_name="RuleTable",
        tablename="rules",
        column_name="disabled_reason",
        db_column_name="disabled_reason",
        column_class_name="Text",
        column_class=Text,
        params={**_PARAMS, "default": None, "null": True},
        schema=None,
    )
    return manager
