"""What an operator looks at: ``sensormeter status`` and ``sensormeter failed``."""

from __future__ import annotations

import click
import peewee

from ..settings import Settings
from .common import WholeNumber, connect_redis, friendly_errors, load_settings


@click.command("status")
@friendly_errors
def status() -> None:
    """Summarize the ledger, the queue and the schedule."""
    from .. import ledger
    from ..models import MeterReport, open_database
    from ..tasks.queue import make_queue
    from ..tasks.schedule import make_scheduler, scheduled_run_time
    from ..tasks.skipped import skipped_ids
    from ..tasks.worker import pending_work

    settings = load_settings()
    database = open_database(settings.database_url, create=False)
    counts = ledger.summary()
    click.echo("ledger: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    last = (
        MeterReport.select()
        .where(MeterReport.status == MeterReport.SENT)
        .order_by(MeterReport.sent_at.desc())
        .first()
    )
    if last is not None:
        click.echo(f"last sent: {last.organization_id} value {last.value} at {last.sent_at} UTC")
    connection = connect_redis(settings)
    queued, scheduled = pending_work(make_queue(settings, connection))
    click.echo(f"queue {settings.queue_name}: {queued} queued, {scheduled} waiting for retry")
    skipped = skipped_ids(connection, settings.queue_name)
    if skipped:
        more = f", and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        click.echo(
            f"{len(skipped)} organization id(s) from the usage source cannot be reported: "
            + ", ".join(s.describe() for s in skipped[:10])
            + more
        )
    next_run = scheduled_run_time(
        make_scheduler(settings.queue_name, connection), settings.queue_name
    )
    click.echo(f"next hourly run: {next_run or 'not scheduled (is the scheduler running?)'}")
    problems = (
        MeterReport.select()
        .where(MeterReport.status.in_([MeterReport.FAILED, MeterReport.REJECTED]))
        .order_by(MeterReport.updated_at.desc())
        .limit(10)
    )
    for row in problems:
        click.echo(f"  {row.status}: {row.organization_id} {row.identifier}: {row.last_error}")
    _echo_stale_pending(settings, limit=10)
    _echo_shared_customers(settings, database)
    _echo_late_closes(settings, limit=20)


def _echo_stale_pending(settings: Settings, limit: int) -> None:
    """List pending rows no job will finish (the sweep resends them every 10 minutes)."""
    from ..models import MeterReport, utcnow
    from ..tasks.recovery import stale_after

    cutoff = utcnow() - stale_after(settings)
    rows = MeterReport.select().where(
        (MeterReport.status == MeterReport.PENDING) & (MeterReport.updated_at < cutoff)
    )
    total = rows.count()
    if not total:
        return
    click.echo(
        f"{total} pending report(s) untouched since before {cutoff:%Y-%m-%d %H:%M} UTC: no job "
        "will finish them (the sweep resends them; or 'sensormeter retry-failed "
        "--include-stale-pending')"
    )
    for row in rows.order_by(MeterReport.updated_at).limit(limit):
        click.echo(
            f"  pending: {row.organization_id} {row.identifier} attempts {row.attempts}: "
            f"{row.last_error or 'no attempt recorded'}"
        )


def _echo_shared_customers(settings: Settings, database: peewee.Database) -> None:
    """Warn of Stripe customers with several billable subscriptions (see docs/integrating.md)."""
    from ..usage import load_usage_source

    several = getattr(
        load_usage_source(settings, database), "customers_with_several_subscriptions", None
    )
    if several is None:
        return
    found = several()
    if found:
        click.echo(
            "warning: Stripe customer(s) with more than one billable subscription (their "
            "organizations are billed as one meter value; check in Stripe how the invoice "
            "splits it): " + ", ".join(f"{c} ({n})" for c, n in found.items())
        )


def _echo_late_closes(settings: Settings, limit: int) -> None:
    """List closing reports Stripe got after it finalized the invoice, or not at all."""
    from ..models import MeterReport, utcnow
    from ..tasks.period_close import late_closes

    grace = settings.invoice_grace_hours
    late = late_closes(MeterReport._meta.database, grace, utcnow())
    click.echo(
        f"period closes after the {grace} h invoice grace: {len(late)}"
        + (" (correct these invoices in Stripe; see docs/operations.md)" if late else "")
    )
    for close in late[:limit]:
        when = (
            f"sent {close.sent_at:%Y-%m-%d %H:%M:%S} UTC"
            if close.sent_at
            else f"not delivered ({close.status})"
        )
        click.echo(
            f"  late close: {close.organization_id} period end {close.period_end} UTC "
            f"value {close.value}: {when}"
        )


@click.command("failed")
@click.option("--limit", default=50, show_default=True, type=WholeNumber(1, 10_000))
@click.option(
    "--rejected",
    is_flag=True,
    help="List the reports Stripe refused for good instead (never sent again).",
)
@friendly_errors
def failed(limit: int, rejected: bool) -> None:
    """List reports whose retries ran out (or, with --rejected, refused), with the reason."""
    from ..models import MeterReport, open_database

    settings = load_settings()
    open_database(settings.database_url, create=False)
    status = MeterReport.REJECTED if rejected else MeterReport.FAILED
    rows = MeterReport.select().where(MeterReport.status == status)
    total = rows.count()
    click.echo(f"{total} {status} report(s)")
    for row in rows.order_by(MeterReport.updated_at.desc()).limit(limit):
        click.echo(
            f"  {row.organization_id} value {row.value} {row.identifier} "
            f"attempts {row.attempts} at {row.updated_at:%Y-%m-%d %H:%M} UTC: {row.last_error}"
        )
    if not rejected:
        _echo_stale_pending(settings, limit)
