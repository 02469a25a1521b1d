"""What an operator repairs with: ``reconcile``, ``retry-failed`` and ``backfill``."""

from __future__ import annotations

import sys

import click

from .common import BadArgument, connect_redis, fail, friendly_errors, load_settings


@click.command("reconcile")
@click.option(
    "--since",
    default=None,
    help="First UTC hour: YYYY-MM-DDTHH, or a day YYYY-MM-DD; default: 48 hours ago.",
)
@click.option("--until", default=None, help="Last UTC hour (included); default: the current hour.")
@click.option("--org", default=None, help="Only this organization (its customer from the ledger).")
@friendly_errors
def reconcile(since: str | None, until: str | None, org: str | None) -> None:
    """Compare the ledger with Stripe's hourly meter summaries; exit 1 on any mismatch.

    Hours before the first one the ledger keeps (SENSORMETER_RETENTION_DAYS) are not
    compared, and a note says so.
    """
    from ..hours import format_hour
    from ..ledger import validate_organization_id
    from ..ledger.retention import Reach
    from ..models import open_database, utcnow
    from ..reconcile import HOUR, window
    from ..reconcile import reconcile as run_reconcile

    now = utcnow()
    start, end = window(since, until, now)
    if org is not None:
        validate_organization_id(org)
    settings = load_settings()
    open_database(settings.database_url, create=False)
    result = run_reconcile(settings, start, end, org, now)
    for mismatch in result.mismatches:
        click.echo(mismatch.describe())
    kept = Reach.at(settings.retention_days, now).notice(start)
    if result.compared_from is not None and kept is not None:
        click.echo(f"note: {kept}; those hours were not compared")
        if result.compared_from < end:  # else nothing of the window is kept: none compared
            start = result.compared_from
    click.echo(
        f"reconcile {format_hour(start)}..{format_hour(end - HOUR)} UTC: "
        f"{result.customers} customer(s) checked, {result.hours} hour(s) compared, "
        f"{len(result.mismatches)} mismatch(es)"
    )
    sys.exit(0 if result.clean else 1)


@click.command("retry-failed")
@click.option("--org", default=None, help="Only this organization's reports.")
@click.option(
    "--include-stale-pending",
    is_flag=True,
    help="Also pending reports whose job was lost (untouched for longer than a job can take).",
)
@friendly_errors
def retry_failed(org: str | None, include_stale_pending: bool) -> None:
    """Queue failed reports to be sent again with their own identifier and value."""
    from .. import ledger
    from ..models import open_database, utcnow
    from ..tasks.recovery import enqueue_resend, stale_after

    if org is not None:
        ledger.validate_organization_id(org)
    settings = load_settings()
    open_database(settings.database_url, create=False)
    stale = utcnow() - stale_after(settings) if include_stale_pending else None
    ids = ledger.ids_to_resend(failed=True, stale_before=stale, organization_id=org)
    jobs = enqueue_resend(settings, connect_redis(settings), ids)
    click.echo(f"queued {len(ids)} report(s) in {jobs} job(s) on {settings.queue_name}")


@click.command("backfill")
@click.option("--since", required=True, help="First UTC hour: YYYY-MM-DDTHH, or a day YYYY-MM-DD.")
@click.option("--until", default=None, help="Last UTC hour (included); default: the current hour.")
@click.option("--org", default=None, help="Only this organization.")
@click.option("--dry-run", is_flag=True, help="Show what would be reported; send nothing.")
@friendly_errors
def backfill(since: str, until: str | None, org: str | None, dry_run: bool) -> None:
    """Report hours that have no delivered hourly report, with the count as it was then.

    The same search as the scheduler's catch-up, within Stripe's 35 days: the hours the
    billable history has an organization billable (canceled since or not); before the history
    knows it, the hours since sensormeter first reported it, if it is billable now.
    """
    from .. import ledger
    from ..hours import format_hour, hour_start, parse_hour_option
    from ..ledger import history
    from ..models import utcnow
    from ..report import Report
    from ..runtime import Runtime
    from ..tasks.catchup import backfill_window, iter_gaps

    if org is not None:
        ledger.validate_organization_id(org)
    now = utcnow()
    try:
        first = parse_hour_option(since)
        last = parse_hour_option(until) if until else hour_start(now)
        hours = backfill_window(first, last, now)
    except ValueError as exc:
        raise BadArgument(str(exc), param_hint="--since/--until") from None
    settings = load_settings()
    runtime = Runtime.build(settings)
    with runtime.database.connection_context():
        if (
            org is not None
            and not runtime.source.billable_customers([org])
            and not history.intervals(org, hours[0], hours[-1])
        ):
            fail(
                f"{org} is not billable ({runtime.source.explain_not_billable(org)}), and the "
                f"billable history has it billable at no hour of the window: nothing to do"
            )
        plan = list(iter_gaps(runtime.source, settings, hours, [org] if org else None))
        total = sum(len(orgs) for _, orgs in plan)
        click.echo(
            f"{total} missing hourly report(s) in {len(hours)} hour(s) "
            f"{format_hour(hours[0])}..{format_hour(hours[-1])} UTC",
            err=True,
        )
        if dry_run:
            for label, orgs in plan:
                click.echo(f"  {label}: {', '.join(orgs)}")
            return
        reporter = runtime.reporter()
        outcomes: dict[str, int] = {}
        with click.progressbar(
            length=total, label="backfilling", file=sys.stderr, show_pos=True
        ) as bar:
            for label, orgs in plan:
                result = reporter.run(
                    runtime.database, orgs, Report.hourly(label), job_id="backfill"
                )
                for status in result.statuses.values():
                    outcomes[status] = outcomes.get(status, 0) + 1
                bar.update(len(orgs))
    click.echo(
        "backfill: "
        + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "nothing to do")
    )
    if outcomes.get("failed"):
        fail("some reports failed; see 'sensormeter failed', then 'sensormeter retry-failed'")
