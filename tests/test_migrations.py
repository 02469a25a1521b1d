"""Versioned schema migrations: a database made by the previous release reaches the new shape.

The previous release's ``meter_reports`` had no ``event_identifier``/``event_value`` and there
was no ``sensormeter_schema_version`` table. ``init-db`` migrates in place, keeping every row;
a worker refuses to start on a database that was not migrated.
"""

from __future__ import annotations

import subprocess
from datetime import datetime

import peewee
import pytest

from sensormeter.errors import SchemaOutdated
from sensormeter.migrations import CURRENT_VERSION, applied_versions, check_schema
from sensormeter.models import MODELS, MeterReport, create_tables, open_database
from sensormeter.settings import Settings

from .conftest import SENSORMETER, cli_env


class OldMeterReport(peewee.Model):
    """meter_reports exactly as release 0.1.0 created it."""

    organization_id = peewee.TextField(index=True)
    event_name = peewee.TextField()
    value = peewee.BigIntegerField()
    identifier = peewee.TextField(unique=True)
    kind = peewee.TextField(default="hourly")
    period_hour = peewee.DateTimeField(null=True)
    stripe_customer_id = peewee.TextField()
    measured_at = peewee.DateTimeField()
    status = peewee.TextField(default="pending", index=True)
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    stripe_request_id = peewee.TextField(null=True)
    job_id = peewee.TextField(null=True)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    sent_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "meter_reports"


@pytest.fixture
def old_database(database_url: str) -> peewee.Database:
    """A database holding the previous release's ledger with three rows, nothing else."""
    db = open_database(database_url)
    cascade = {"cascade": True} if isinstance(db, peewee.PostgresqlDatabase) else {}
    db.drop_tables(list(reversed(MODELS)), safe=True, **cascade)
    with db.bind_ctx([OldMeterReport]):
        OldMeterReport.create_table()
        moment = datetime(2026, 11, 30, 4, 59, 59)
        for i, status in enumerate(("sent", "pending", "failed")):
            OldMeterReport.create(
                organization_id=f"o{i}",
                event_name="active_sensors",
                value=i + 1,
                identifier=f"active_sensors-o{i}-2026-11-30T04",
                stripe_customer_id=f"cus_o{i}",
                measured_at=moment,
                status=status,
                created_at=moment,
                updated_at=moment,
            )
    return db


class TestMigrate:
    def test_previous_release_database_is_migrated_keeping_every_row(
        self, old_database: peewee.Database
    ) -> None:
        """init-db's create_tables adds the columns and records the version; rows stay."""
        with pytest.raises(SchemaOutdated, match="run 'sensormeter init-db'"):
            check_schema(old_database)
        create_tables(old_database)
        check_schema(old_database)
        assert applied_versions(old_database) == {CURRENT_VERSION}
        columns = {c.name for c in old_database.get_columns("meter_reports")}
        assert {"event_identifier", "event_value"} <= columns
        rows = list(MeterReport.select().order_by(MeterReport.organization_id))
        assert [(r.organization_id, r.value, r.status) for r in rows] == [
            ("o0", 1, "sent"),
            ("o1", 2, "pending"),
            ("o2", 3, "failed"),
        ]
        assert all(r.event_identifier is None and r.event_value is None for r in rows)
        create_tables(old_database)  # a second run changes nothing
        assert MeterReport.select().count() == 3

    def test_worker_refuses_an_unmigrated_database_and_init_db_fixes_it(
        self, old_database: peewee.Database, settings: Settings
    ) -> None:
        """One clear line from the worker; init-db says what it migrated; then it starts."""
        env = cli_env(settings)
        refused = subprocess.run(
            [*SENSORMETER, "worker", "--burst"], env=env, capture_output=True, text=True
        )
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "error: the database schema is at version 0, this release needs 1: run "
            "'sensormeter init-db' (it migrates in place, keeping every row)"
        ]
        migrated = subprocess.run(
            [*SENSORMETER, "init-db"], env=env, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stderr
        assert "migrated to schema version 1: meter_reports: event_identifier, event_value" in (
            migrated.stdout
        )

    def test_fresh_database_is_at_the_current_version(self, database: peewee.Database) -> None:
        """Tables created by this release are recorded as current: nothing to migrate."""
        assert applied_versions(database) == {CURRENT_VERSION}
        check_schema(database)
