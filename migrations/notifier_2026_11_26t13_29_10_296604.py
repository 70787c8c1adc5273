from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-11-26T13:29:10:296604"
VERSION = "1.38.0"
DESCRIPTION = "rule and event indexes"

STATEMENTS = (
    "ALTER TABLE rules ADD CONSTRAINT rules_schedule_xor_event CHECK ((schedule IS NULL) <> (event IS NULL))",
    "ALTER TABLE rules ADD CONSTRAINT rules_misfire_check CHECK (misfire IN ('skip', 'once'))",
    # The scheduler's scan: enabled schedules whose next firing is near.
    "CREATE INDEX rules_next_fire_at ON rules (next_fire_at) WHERE enabled AND schedule IS NOT NULL",
    # Fan-out of an event to the enabled rules for its type.
    "CREATE INDEX rules_event ON rules (event) WHERE enabled AND event IS NOT NULL",
    "CREATE INDEX rules_created_at_id ON rules (created_at DESC, id DESC)",
    "CREATE INDEX notifications_rule ON notifications (rule) WHERE rule IS NOT NULL",
    "CREATE INDEX notifications_event ON notifications (event) WHERE event IS NOT NULL",
)


class Rules(Table, tablename="rules"):
    pass


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="notifier", description=DESCRIPTION)

    async def run() -> None:
        for statement in STATEMENTS:
            await Rules.raw(statement)

    manager.add_raw(run)
    return manager
