"""Versioned schema migrations: each release's databases reach the current shape in place.

``sensormeter init-db`` runs :func:`migrate` (through ``models.create_tables``): every migration
not yet recorded in ``sensormeter_schema_version`` is applied and recorded, inside the same
transaction. A migration only adds (columns, indexes, tables) and checks what is there first,
so it is safe on a table that was just created in the current shape, and on one it already
changed. Processes refuse to start on a database that is behind (:func:`check_schema`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_operations

from .db import BaseModel, tuples, utcnow
from .errors import SchemaOutdated

LEDGER_TABLE = "meter_reports"


class SchemaVersion(BaseModel):
    """One applied schema migration (see sensormeter/migrations.py)."""

    version = peewee.IntegerField(primary_key=True)
    description = peewee.TextField()
    applied_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sensormeter_schema_version"


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once per database."""

    version: int
    description: str
    apply: Callable[[peewee.Database], None]


def _columns(database: peewee.Database, table: str) -> set[str]:
    return {column.name for column in database.get_columns(table)}


def _shared_customer_events(database: peewee.Database) -> None:
    """meter_reports gains event_identifier and event_value (shared Stripe customers)."""
    if LEDGER_TABLE not in database.get_tables():
        return  # created afterwards in the current shape
    migrator = SchemaMigrator.from_database(database)
    columns = _columns(database, LEDGER_TABLE)
    operations = []
    if "event_identifier" not in columns:
        operations.append(
            migrator.add_column(LEDGER_TABLE, "event_identifier", peewee.TextField(null=True))
        )
    if "event_value" not in columns:
        operations.append(
            migrator.add_column(LEDGER_TABLE, "event_value", peewee.BigIntegerField(null=True))
        )
    # The column's index is the model's own: create_tables adds it right after, by its name.
    run_operations(*operations)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meter_reports: event_identifier, event_value", _shared_customer_events),
)
CURRENT_VERSION = MIGRATIONS[-1].version


def applied_versions(database: peewee.Database) -> set[int]:
    """The versions recorded in the database (empty when the version table is missing)."""
    if SchemaVersion._meta.table_name not in database.get_tables():
        return set()
    with database.bind_ctx([SchemaVersion]):
        return {int(v) for (v,) in tuples(SchemaVersion.select(SchemaVersion.version))}


def migrate(database: peewee.Database) -> list[Migration]:
    """Apply and record the migrations this database lacks; returns those applied.

    Called by ``models.create_tables`` (``sensormeter init-db``), which then creates the
    current models' missing tables and indexes.
    """
    done = applied_versions(database)
    applied = []
    with database.atomic(), database.bind_ctx([SchemaVersion]):
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            migration.apply(database)
            SchemaVersion.insert(
                version=migration.version, description=migration.description
            ).on_conflict_ignore().execute()
            applied.append(migration)
    return applied


def check_schema(database: peewee.Database) -> None:
    """Raise SchemaOutdated when the database lacks a migration this release needs."""
    missing = [m.version for m in MIGRATIONS if m.version not in applied_versions(database)]
    if missing:
        raise SchemaOutdated(max(applied_versions(database), default=0), CURRENT_VERSION)
