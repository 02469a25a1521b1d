"""Versioned schema migrations: every database an earlier release made reaches the current shape.

The old databases are the real thing: the tables ``sensormeter init-db`` made at commit 1aac8fc
(the oldest schema supported) and at each schema change since, dumped from SQLite and
PostgreSQL into tests/fixtures/ by scripts/schema-fixtures. Each is filled with rows, upgraded
by the ``sensormeter migrate`` command, and then compared with a database this release creates.
"""

from __future__ import annotations

import subprocess
from datetime import datetime

import peewee
import pytest

from sensormeter.errors import SchemaOutdated
from sensormeter.hours import format_hour, hour_start
from sensormeter.meters import InMemoryMeterClient
from sensormeter.migrations import CURRENT_VERSION, MIGRATIONS, applied_versions, check_schema
from sensormeter.models import MeterReport, open_database, utcnow
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings

from .conftest import SENSORMETER, cli_env
from .schema_fixtures import (
    OLD_SCHEMAS,
    drop_everything,
    insert,
    load_old_schema,
    run_sql_script,
    shape,
)

MOMENT = datetime(2026, 11, 30, 4, 59, 59)
# The ledger's columns in every schema since 1aac8fc: what must survive an upgrade unchanged.
OLD_LEDGER_COLUMNS = (
    "id, organization_id, event_name, value, identifier, kind, period_hour, stripe_customer_id, "
    "measured_at, status, attempts, last_error, stripe_request_id, job_id, created_at, "
    "updated_at, sent_at"
)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sensormeter ARGS`` as an operator would, against the test database."""
    return subprocess.run(
        [*SENSORMETER, *args], env=cli_env(settings), capture_output=True, text=True
    )


def fill(database: peewee.Database) -> None:
    """What a running deployment holds: organizations, their subscriptions and sensors, and
    a ledger row of each status (written with the old columns only)."""
    now = utcnow()
    for n in (1, 2, 3):
        insert(database, "organizations", id=f"o{n}", name=f"Org {n}")
        insert(
            database,
            "subscriptions",
            organization_id=f"o{n}",
            # o1 and o2 share a Stripe customer, as the current release bills them.
            stripe_customer_id="cus_shared" if n < 3 else "cus_o3",
            stripe_subscription_id=f"sub_o{n}",
            status="active",
            current_period_start=datetime(2026, 11, 1),
            current_period_end=datetime(2027, 1, 1),
        )
        for _ in range(n):
            insert(database, "sensors", organization_id=f"o{n}", is_active=True, created_at=now)
    for i, status in enumerate(("sent", "pending", "failed", "rejected")):
        insert(
            database,
            "meter_reports",
            organization_id=f"o{i % 3 + 1}",
            event_name="active_sensors",
            value=i + 1,
            identifier=f"active_sensors-o{i}-2026-11-30T04",
            kind="hourly",
            period_hour=datetime(2026, 11, 30, 4),
            stripe_customer_id="cus_o3",
            measured_at=MOMENT,
            status=status,
            attempts=i,
            last_error="429" if status != "sent" else None,
            created_at=MOMENT,
            updated_at=MOMENT,
            sent_at=MOMENT if status == "sent" else None,
        )


def ledger_rows(database: peewee.Database) -> list[tuple[object, ...]]:
    """The ledger's rows, old columns only, in id order."""
    cursor = database.execute_sql(f"SELECT {OLD_LEDGER_COLUMNS} FROM meter_reports ORDER BY id")
    return [tuple(row) for row in cursor.fetchall()]


@pytest.fixture
def current_shape(settings: Settings) -> dict[str, object]:
    """The tables this release's ``init-db`` creates in an empty database."""
    drop_everything(settings.database_url)
    made = cli(settings, "init-db")
    assert made.returncode == 0, made.stderr
    db = open_database(settings.database_url)
    found = shape(db)
    db.close()
    drop_everything(settings.database_url)
    return dict(found)


@pytest.mark.parametrize("commit", OLD_SCHEMAS)
def test_migrate_upgrades_an_old_release_database_keeping_every_row(
    commit: str, settings: Settings, current_shape: dict[str, object]
) -> None:
    """migrate adds what each release since brought, records the version, keeps the rows,
    is a no-op the second time, and the pipeline then runs on the database."""
    load_old_schema(settings.database_url, commit)
    db = open_database(settings.database_url)
    fill(db)
    before_rows = ledger_rows(db)
    already = applied_versions(db)
    with pytest.raises(SchemaOutdated, match="run 'sensormeter migrate'"):
        check_schema(db)
    db.close()

    first = cli(settings, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"migrated to schema version {m.version}: {m.description}"
        for m in MIGRATIONS
        if m.version not in already
    ]
    db = open_database(settings.database_url)
    assert applied_versions(db) == {m.version for m in MIGRATIONS}
    assert ledger_rows(db) == before_rows
    assert dict(shape(db)) == current_shape  # columns, types, indexes: as if made today
    db.close()

    second = cli(settings, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout.endswith(f"is at schema version {CURRENT_VERSION}: nothing to migrate\n")
    assert cli(settings, "init-db").stdout.startswith("tables exist in ")

    # The pipeline on the upgraded database: the worker's check passes, the default source
    # reads the old host tables, and a shared customer's event fills the new ledger columns.
    meter = InMemoryMeterClient()
    runtime = Runtime.build(settings, meter=meter)
    try:
        hour = format_hour(hour_start(utcnow()))
        result = Reporter(runtime.source, meter, "active_sensors").run(
            runtime.database, ["o1", "o2", "o3"], Report.hourly(hour)
        )
        assert result.statuses == {"o1": "sent", "o2": "sent", "o3": "sent"}
        assert sorted((e.customer, e.value) for e in meter.events) == [
            ("cus_o3", 3),
            ("cus_shared", 3),
        ]
        shared = MeterReport.get(
            MeterReport.organization_id == "o1",
            MeterReport.kind == "hourly",
            MeterReport.event_value.is_null(False),
        )
        assert shared.event_value == 3
        assert len(ledger_rows(runtime.database)) == len(before_rows) + 3
    finally:
        runtime.close()


def test_migrate_sql_prints_the_statements_and_changes_nothing(
    settings: Settings, current_shape: dict[str, object]
) -> None:
    """--sql prints each statement migrate would run, for a DBA; the printed SQL, run by hand,
    brings the database to the current schema, after which migrate has nothing to do."""
    load_old_schema(settings.database_url, "1aac8fc")
    db = open_database(settings.database_url)
    fill(db)
    before = shape(db)
    before_rows = ledger_rows(db)
    db.close()

    printed = cli(settings, "migrate", "--sql")
    assert printed.returncode == 0, printed.stderr
    statements = [line for line in printed.stdout.splitlines() if not line.startswith("--")]
    assert [s.split(" (")[0].split(" VALUES")[0] for s in statements] == [
        'CREATE TABLE IF NOT EXISTS "sensormeter_schema_version"',
        'ALTER TABLE "meter_reports" ADD COLUMN "event_identifier" TEXT;',
        'ALTER TABLE "meter_reports" ADD COLUMN "event_value" '
        + ("BIGINT;" if settings.database_url.startswith("postgres") else "INTEGER;"),
        'CREATE INDEX "meterreport_event_identifier" ON "meter_reports"',
        'INSERT INTO "sensormeter_schema_version"',
        'CREATE INDEX "subscription_stripe_customer_id" ON "subscriptions"',
        'CREATE INDEX "subscription_current_period_start" ON "subscriptions"',
        'INSERT INTO "sensormeter_schema_version"',
        'ALTER TABLE "meter_reports" ADD COLUMN "evidence" TEXT;',
        'CREATE TABLE IF NOT EXISTS "sensormeter_billable_history"',
        'CREATE INDEX IF NOT EXISTS "billableinterval_organization_id_last_hour" ON '
        + '"sensormeter_billable_history"',
        'CREATE INDEX IF NOT EXISTS "billableinterval_stripe_customer_id_last_hour" ON '
        + '"sensormeter_billable_history"',
        'CREATE TABLE IF NOT EXISTS "sensormeter_quarantine"',
        'CREATE INDEX IF NOT EXISTS "quarantine_scope_subject" ON "sensormeter_quarantine"',
        'INSERT INTO "sensormeter_schema_version"',
    ]
    assert "from schema version 0 to 3; nothing was changed" in printed.stdout
    dry = cli(settings, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.splitlines()) == len(printed.stdout.splitlines())
    db = open_database(settings.database_url)
    assert shape(db) == before  # no DDL ran, no version recorded
    db.close()

    run_sql_script(settings.database_url, printed.stdout)  # what the DBA does with it
    db = open_database(settings.database_url)
    assert applied_versions(db) == {m.version for m in MIGRATIONS}
    assert dict(shape(db)) == current_shape
    assert ledger_rows(db) == before_rows
    db.close()
    again = cli(settings, "migrate", "--sql")
    assert again.stdout.endswith(f"is at schema version {CURRENT_VERSION}: nothing to run\n")


def test_migrate_without_sensormeter_tables_points_to_init_db(settings: Settings) -> None:
    """An empty database is init-db's to create: migrate says so in one line, creates nothing."""
    drop_everything(settings.database_url)
    if settings.database_url.startswith("sqlite"):
        open_database(settings.database_url).close()  # an existing, empty file
    refused = cli(settings, "migrate")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"error: no meter_reports table in {settings.database_url}: run 'sensormeter init-db'"
    ]
    db = open_database(settings.database_url)
    assert db.get_tables() == []
    db.close()


def test_worker_refuses_an_outdated_database_and_migrate_fixes_it(settings: Settings) -> None:
    """One clear line from the worker naming the command; after migrate it starts."""
    load_old_schema(settings.database_url, "2b8bf40")
    refused = cli(settings, "worker", "--burst")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: the database schema is at version 1, this release needs {CURRENT_VERSION}: run "
        "'sensormeter migrate' (it upgrades in place, keeping every row; --sql prints the SQL "
        "first)"
    ]
    assert cli(settings, "migrate").returncode == 0
    db = open_database(settings.database_url)
    check_schema(db)
    db.close()


def test_fresh_database_is_at_the_current_version(database: peewee.Database) -> None:
    """Tables created by this release are recorded as current: nothing to migrate."""
    assert applied_versions(database) == {m.version for m in MIGRATIONS}
    check_schema(database)
