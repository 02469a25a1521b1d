"""The table that records which migrations a database has, and the check at process start."""

from __future__ import annotations

import peewee

from ..db import BaseModel, tuples, utcnow
from ..errors import SchemaOutdated
from .steps import CURRENT_VERSION, MIGRATIONS


class SchemaVersion(BaseModel):
    """One applied schema migration (see sensormeter/migrations/steps.py)."""

    version = peewee.IntegerField(primary_key=True)
    description = peewee.TextField()
    applied_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sensormeter_schema_version"


def applied_versions(database: peewee.Database) -> set[int]:
    """The versions recorded in the database (empty when the version table is missing)."""
    if SchemaVersion._meta.table_name not in database.get_tables():
        return set()
    with database.bind_ctx([SchemaVersion]):
        return {int(v) for (v,) in tuples(SchemaVersion.select(SchemaVersion.version))}


def check_schema(database: peewee.Database) -> None:
    """Raise SchemaOutdated when the database lacks a migration this release needs."""
    done = applied_versions(database)
    if any(m.version not in done for m in MIGRATIONS):
        raise SchemaOutdated(max(done, default=0), CURRENT_VERSION)
