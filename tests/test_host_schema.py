"""The host's schema is left alone: init-db and migrate never create, alter or drop its tables.

The case from the field: a host application already has its own ``organizations(id serial)``.
Before, ``init-db`` failed on PostgreSQL with a foreign-key error and created nothing, not even
the ledger, and on SQLite silently created ``sensors`` and ``subscriptions`` pointing at the
host's table.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import peewee
import pytest

from sensormeter.migrations import MIGRATIONS, applied_versions
from sensormeter.models import open_database
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings

from .conftest import SENSORMETER, cli_env
from .schema_fixtures import drop_everything, insert, is_postgres, load_old_schema, shape

HOST_SOURCE = "tests.host_source:make_source"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sensormeter ARGS`` against the test database."""
    return subprocess.run(
        [*SENSORMETER, *args], env=cli_env(settings), capture_output=True, text=True
    )


def open_fresh(settings: Settings) -> peewee.Database:
    """The test database, emptied of every table."""
    drop_everything(settings.database_url)
    return open_database(settings.database_url)


def host_organizations(db: peewee.Database) -> None:
    """The host's own organizations table: integer ids, and a row."""
    key = "SERIAL PRIMARY KEY" if is_postgres(db) else "INTEGER PRIMARY KEY"
    db.execute_sql(f"CREATE TABLE organizations (id {key}, title TEXT NOT NULL)")
    insert(db, "organizations", title="Host Inc")


class TestWithAUsageSource:
    def test_init_db_creates_only_sensormeters_tables_next_to_the_hosts(
        self, settings: Settings
    ) -> None:
        """The ledger and the version table are created; the host's table is untouched and
        no subscriptions or sensors table appears; the worker's start-up check passes."""
        db = open_fresh(settings)
        host_organizations(db)
        host_before = shape(db)["organizations"]
        db.close()
        hosted = replace(settings, usage_source=HOST_SOURCE)

        made = cli(hosted, "init-db")
        assert made.returncode == 0, made.stderr
        assert made.stdout.splitlines()[0] == (
            "created tables sensormeter_schema_version, meter_reports, "
            f"sensormeter_billable_history, sensormeter_quarantine in {settings.database_url}"
        )
        runtime = Runtime.build(hosted)  # checks the schema as a worker does
        try:
            db = runtime.database
            assert sorted(db.get_tables()) == [
                "meter_reports",
                "organizations",
                "sensormeter_billable_history",
                "sensormeter_quarantine",
                "sensormeter_schema_version",
            ]
            assert shape(db)["organizations"] == host_before
            rows = db.execute_sql("SELECT id, title FROM organizations").fetchall()
            assert [tuple(r) for r in rows] == [(1, "Host Inc")]
            assert applied_versions(db) == {m.version for m in MIGRATIONS}
        finally:
            runtime.close()
        again = cli(hosted, "init-db")
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("tables exist in ")

    def test_migrate_leaves_the_host_tables_indexes_to_the_host(self, settings: Settings) -> None:
        """On an old release's database now read through a usage source, migrate upgrades
        the ledger and adds no index to subscriptions."""
        load_old_schema(settings.database_url, "1aac8fc")
        hosted = replace(settings, usage_source=HOST_SOURCE)
        db = open_database(settings.database_url)
        before = shape(db)
        db.close()
        printed = cli(hosted, "migrate", "--sql")
        assert 'ON "subscriptions"' not in printed.stdout
        assert 'CREATE INDEX "meterreport_event_identifier"' in printed.stdout
        migrated = cli(hosted, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        db = open_database(settings.database_url)
        after = shape(db)
        db.close()
        for table in ("organizations", "subscriptions", "sensors"):
            assert after[table] == before[table]
        assert {"event_identifier", "event_value"} <= {c[0] for c in after["meter_reports"][0]}

    def test_a_foreign_meter_reports_table_is_refused(self, settings: Settings) -> None:
        """The ledger's name is sensormeter's: a host table of that name is refused, untouched."""
        db = open_fresh(settings)
        db.execute_sql("CREATE TABLE meter_reports (id INTEGER PRIMARY KEY, amount INTEGER)")
        db.close()
        refused = cli(replace(settings, usage_source=HOST_SOURCE), "init-db")
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "error: table meter_reports exists and is not sensormeter's (it has no column "
            "organization_id): rename that table: sensormeter's own table must be called "
            "meter_reports; nothing was changed"
        ]
        db = open_database(settings.database_url)
        assert db.get_tables() == ["meter_reports"]
        db.close()


class TestWithTheDefaultSource:
    @pytest.mark.parametrize("command", ["init-db", "migrate"])
    def test_a_host_organizations_table_is_one_line_and_nothing_created(
        self, settings: Settings, command: str
    ) -> None:
        """One line naming the table and what to do; no table created, the host's unchanged."""
        if command == "migrate":
            # An old release's ledger beside the host's own organizations: work for migrate.
            load_old_schema(settings.database_url, "1aac8fc")
            db = open_database(settings.database_url)
            for table in ("sensors", "subscriptions", "organizations"):
                db.execute_sql(f"DROP TABLE {table}")
        else:
            db = open_fresh(settings)
        host_organizations(db)
        before = shape(db)
        db.close()
        refused = cli(settings, command)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "error: table organizations exists and is not sensormeter's (its id is integer, "
            "sensormeter's is text): set SENSORMETER_USAGE_SOURCE to read your own tables "
            "(docs/integrating.md), or rename your organizations table; nothing was changed"
        ]
        db = open_database(settings.database_url)
        assert shape(db) == before
        db.close()

    def test_a_table_missing_a_column_is_refused_before_any_ddl(self, settings: Settings) -> None:
        """A host subscriptions table without stripe_customer_id: refused, nothing created."""
        db = open_fresh(settings)
        db.execute_sql(
            "CREATE TABLE subscriptions (id INTEGER PRIMARY KEY, organization_id TEXT, status TEXT)"
        )
        db.close()
        refused = cli(settings, "init-db")
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "error: table subscriptions exists and is not sensormeter's (it has no column "
            "stripe_customer_id): set SENSORMETER_USAGE_SOURCE to read your own tables "
            "(docs/integrating.md), or rename your subscriptions table; nothing was changed"
        ]
        db = open_database(settings.database_url)
        assert db.get_tables() == ["subscriptions"]
        db.close()

    def test_tables_of_sensormeters_shape_are_used_as_they_are(self, settings: Settings) -> None:
        """A host that made organizations as sensormeter does keeps it; the rest is created."""
        db = open_fresh(settings)
        db.execute_sql("CREATE TABLE organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
        insert(db, "organizations", id="acme", name="Acme")
        db.close()
        made = cli(settings, "init-db")
        assert made.returncode == 0, made.stderr
        assert made.stdout.splitlines()[0] == (
            "created tables sensormeter_schema_version, subscriptions, sensors, meter_reports, "
            f"sensormeter_billable_history, sensormeter_quarantine in {settings.database_url}"
        )
