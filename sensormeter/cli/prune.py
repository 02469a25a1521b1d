"""``sensormeter prune``: remove what is older than the retention now, or count it."""

from __future__ import annotations

import click

from .common import Number, friendly_errors, load_settings


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option(
    "--budget",
    type=Number(min=1),
    default=None,
    metavar="SECONDS",
    help="Start no batch after this many seconds (default: until everything old is removed).",
)
@friendly_errors
def prune(dry_run: bool, budget: float | None) -> None:
    """Remove ledger rows, billable history and released quarantines older than the retention.

    What the hourly prune job does (SENSORMETER_RETENTION_DAYS; docs/operations.md, "Ledger
    retention"), all at once and with the daily history part: in batches of 2,000 rows, each
    followed by a pause as long as it took, so the database keeps half its time for reports.
    """
    from ..ledger import retention
    from ..migrations import check_schema
    from ..models import open_database, utcnow
    from ..tasks.retention import prune as run_prune

    settings = load_settings()
    before = retention.kept_since(settings.retention_days, utcnow())
    if before is None:
        click.echo("SENSORMETER_RETENTION_DAYS is off: the ledger keeps everything; nothing to do")
        return
    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
        kept = f"keeps {settings.retention_days} days: before {before:%Y-%m-%d %H:00} UTC"
        if dry_run:
            older = retention.count_older(database, before)
            statuses = ", ".join(f"{s} {n}" for s, n in sorted(older.items())) or "none"
            click.echo(
                f"the ledger {kept}, {sum(older.values())} report(s) would be removed "
                f"({statuses}); nothing removed (--dry-run)"
            )
            return
        pruned = run_prune(database, before, with_history=True, budget_seconds=budget)
    finally:
        database.close()
    rate = pruned.reports / pruned.seconds if pruned.seconds else 0.0
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(pruned.by_status.items())) or "none"
    click.echo(
        f"the ledger {kept}: removed {pruned.reports} report(s) ({statuses}), "
        f"{pruned.history} billable interval(s), {pruned.quarantines} released quarantine(s) "
        f"in {pruned.seconds:.1f} s ({rate:.0f} reports/s)"
    )
    if not pruned.complete:
        click.echo("older reports remain (--budget reached): run it again, or let the job go on")
