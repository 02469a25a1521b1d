"""The schema commands: ``init-db`` (create and migrate) and ``migrate`` (upgrade, or print SQL)."""

from __future__ import annotations

import click

from ..errors import SensormeterError
from ..settings import redact_url
from .common import friendly_errors, load_settings


@click.command("init-db")
@friendly_errors
def init_db() -> None:
    """Create sensormeter's missing tables and migrate existing ones (safe to run again).

    With SENSORMETER_USAGE_SOURCE set, only sensormeter's own tables (meter_reports,
    sensormeter_schema_version); the host's tables are left alone.
    """
    from ..migrations import applied_versions
    from ..models import MeterReport, create_tables, open_database

    settings = load_settings()
    host_tables = settings.usage_source is None
    database = open_database(settings.database_url)
    had_ledger = MeterReport._meta.table_name in database.get_tables()
    before = applied_versions(database)
    created = create_tables(database, host_tables=host_tables)
    where = redact_url(settings.database_url)
    click.echo(
        f"created tables {', '.join(created)} in {where}" if created else f"tables exist in {where}"
    )
    if had_ledger:
        _echo_migrated(before, applied_versions(database))
    if not host_tables:
        click.echo(
            "left organizations, subscriptions and sensors alone: "
            f"SENSORMETER_USAGE_SOURCE={settings.usage_source} reads the host's tables"
        )


@click.command("migrate")
@click.option(
    "--sql",
    "--dry-run",
    "dry_run",
    is_flag=True,
    help="Print the SQL it would run (for review) and change nothing.",
)
@friendly_errors
def migrate(dry_run: bool) -> None:
    """Bring a database made by an earlier release to this release's schema, keeping every row.

    Runs the missing migrations in one transaction and records the version reached; running
    it again does nothing. Tables that do not exist are init-db's to create.
    """
    from ..migrations import CURRENT_VERSION, apply_plan, check_tables_fit, plan_migrations
    from ..models import MeterReport, managed_models, open_database

    settings = load_settings()
    host_tables = settings.usage_source is None
    database = open_database(settings.database_url, create=False)
    where = redact_url(settings.database_url)
    if MeterReport._meta.table_name not in database.get_tables():
        raise SensormeterError(f"no meter_reports table in {where}: run 'sensormeter init-db'")
    check_tables_fit(database, managed_models(host_tables))
    plan = plan_migrations(database, host_tables=host_tables)
    if dry_run:
        if not plan.steps:
            click.echo(f"-- {where} is at schema version {CURRENT_VERSION}: nothing to run")
            return
        click.echo(
            f"-- sensormeter migrate: {where} from schema version {plan.from_version} "
            f"to {CURRENT_VERSION}; nothing was changed. Run these in one transaction."
        )
        for statement in plan.setup:
            click.echo(statement.text(plan.placeholder))
        for step in plan.steps:
            click.echo(f"-- {step.migration.version}: {step.migration.description}")
            for statement in step.statements:
                click.echo(statement.text(plan.placeholder))
        return
    applied = apply_plan(database, plan)
    if not applied:
        click.echo(f"{where} is at schema version {CURRENT_VERSION}: nothing to migrate")
    for migration in applied:
        click.echo(f"migrated to schema version {migration.version}: {migration.description}")


def _echo_migrated(before: set[int], after: set[int]) -> None:
    from ..migrations import MIGRATIONS

    for migration in MIGRATIONS:
        if migration.version in after - before:
            click.echo(f"migrated to schema version {migration.version}: {migration.description}")
