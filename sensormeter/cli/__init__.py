"""The ``sensormeter`` command: the process edge where settings are read and logging is set up."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click
import peewee
import redis

from ..errors import ConfigurationError, SensormeterError
from ..logs import configure_logging
from ..settings import ASCII_INTEGER, ASCII_NUMBER, Settings, redact_url

F = TypeVar("F", bound=Callable[..., Any])


class BadArgument(click.BadParameter):
    """Raised for a bad command-line value; shown as one ``error:`` line, without the usage."""

    def show(self, file: Any = None) -> None:
        """Print the one line (click would print the usage text first)."""
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class WholeNumber(click.IntRange):
    """An IntRange of ASCII digits only: int() also takes '1_000', '١٢' and full-width digits."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Refuse anything but [+-]digits 0-9, then check the range as click does."""
        if isinstance(value, str) and not ASCII_INTEGER.fullmatch(value.strip()):
            raise BadArgument(
                f"{value!r} is not a whole number written with the digits 0-9", ctx, param
            )
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise BadArgument(exc.message, ctx, param) from None


class Number(click.FloatRange):
    """A FloatRange of ASCII digits only, never nan or inf (float() takes both)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Refuse anything but a finite decimal number written with 0-9, then check the range."""
        if isinstance(value, str) and not ASCII_NUMBER.fullmatch(value.strip()):
            raise BadArgument(f"{value!r} is not a number written with the digits 0-9", ctx, param)
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise BadArgument(exc.message, ctx, param) from None
        if not math.isfinite(number):
            raise BadArgument(f"{value!r} is too large", ctx, param)
        return number


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1 if not message.startswith("cannot reach") else 2)


def friendly_errors(func: F) -> F:
    """Turn sensormeter, Redis and database errors into one clear line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            _fail(f"{exc} (fix the environment variable and run again)")
        except SensormeterError as exc:
            _fail(str(exc))
        except redis.RedisError as exc:
            _fail(f"cannot reach Redis: {exc}")
        except peewee.DatabaseError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if "init-db" in sys.argv else " (did you run 'sensormeter init-db'?)"
            _fail(f"database error: {first}{hint}")

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    """Read and validate the environment; configure structlog for this process."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return settings


def connect_redis(settings: Settings) -> redis.Redis:
    """A checked Redis connection (one clear error when Redis does not answer)."""
    from ..runtime import check_redis, make_redis

    connection = make_redis(settings.redis_url)
    check_redis(connection, settings.redis_url)
    return connection


@click.group()
@click.version_option(package_name="sensormeter")
def main() -> None:
    """Report active-sensor counts to a Stripe Billing Meter through RQ.

    Configuration comes from the environment: REDIS_URL, DATABASE_URL, STRIPE_API_KEY,
    STRIPE_API_BASE, SENSORMETER_* (see docs/configuration.md).
    """


@main.command("init-db")
@friendly_errors
def init_db() -> None:
    """Create the missing tables and migrate existing ones in place (safe to run again)."""
    from ..migrations import MIGRATIONS, applied_versions
    from ..models import MeterReport, create_tables, open_database

    settings = load_settings()
    database = open_database(settings.database_url)
    had_ledger = MeterReport._meta.table_name in database.get_tables()
    done = applied_versions(database)
    created = create_tables(database)
    where = redact_url(settings.database_url)
    click.echo(
        f"created tables {', '.join(created)} in {where}" if created else f"tables exist in {where}"
    )
    if had_ledger:
        for migration in MIGRATIONS:
            if migration.version not in done:
                click.echo(
                    f"migrated to schema version {migration.version}: {migration.description}"
                )


@main.command("report")
@click.argument("organization_id")
@friendly_errors
def report(organization_id: str) -> None:
    """Queue a report of ORGANIZATION_ID's count now (coalesced with one already waiting)."""
    from ..ledger import validate_organization_id
    from ..tasks.report import enqueue_sensor_report

    validate_organization_id(organization_id)
    settings = load_settings()
    job_id = enqueue_sensor_report(
        organization_id, settings=settings, connection=connect_redis(settings)
    )
    click.echo(f"queued {job_id} on {settings.queue_name}")


@main.command("report-all")
@click.option("--hour", default=None, help="UTC hour to report, YYYY-MM-DDTHH (default: now).")
@friendly_errors
def report_all(hour: str | None) -> None:
    """Queue the fan-out that reports every billable organization now."""
    from ..hours import check_reportable_hour
    from ..models import utcnow
    from ..tasks.fanout import enqueue_fanout

    if hour is not None:
        try:
            check_reportable_hour(hour, utcnow())
        except ValueError as exc:
            raise BadArgument(str(exc), param_hint="--hour") from None
    settings = load_settings()
    job_id = enqueue_fanout(settings, connect_redis(settings), hour)
    click.echo(f"queued {job_id} on {settings.queue_name}")


@main.command("worker")
@click.option(
    "-n",
    "--workers",
    default=1,
    show_default=True,
    type=WholeNumber(1, 64),
    help="Number of RQ workers in the pool.",
)
@click.option("--burst", is_flag=True, help="Return once nothing is queued or waiting for a retry.")
@friendly_errors
def worker(workers: int, burst: bool) -> None:
    """Run RQ workers (HerokuWorker) on the reporting queue."""
    from ..runtime import Runtime
    from ..tasks.worker import run_workers

    settings = load_settings()
    settings.require_stripe_key()
    connection = connect_redis(settings)
    # Fail at start, not in the first job: check the database and the Stripe settings now.
    Runtime.build(settings).close()
    run_workers(settings, connection, workers, burst)


@main.command("scheduler")
@click.option("--burst", is_flag=True, help="Move due jobs once, then exit.")
@click.option(
    "--interval",
    default=5,
    show_default=True,
    type=WholeNumber(1, 3600),
    help="Seconds between checks for due jobs.",
)
@friendly_errors
def scheduler(burst: bool, interval: int) -> None:
    """Register the scheduled jobs (hourly at minute 0 UTC), catch up, then run rq-scheduler."""
    from ..tasks.schedule import ReportingScheduler, use_utc_clock

    use_utc_clock()
    # rq-scheduler's crontab dependency warns about its own future defaults on every start.
    warnings.filterwarnings("ignore", category=FutureWarning, module="rq_scheduler")
    settings = load_settings()
    connection = connect_redis(settings)
    # Registration and the start-up catch-up happen inside run(), which waits out Redis
    # outages; the "scheduler.started" line gives the next hourly run.
    ReportingScheduler(settings, connection, interval=interval).run(burst=burst)


@main.command("status")
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


@main.command("failed")
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


@main.command("reconcile")
@click.option(
    "--since",
    default=None,
    help="First UTC hour: YYYY-MM-DDTHH, or a day YYYY-MM-DD; default: 48 hours ago.",
)
@click.option("--until", default=None, help="Last UTC hour (included); default: the current hour.")
@click.option("--org", default=None, help="Only this organization (its customer from the ledger).")
@friendly_errors
def reconcile(since: str | None, until: str | None, org: str | None) -> None:
    """Compare the ledger with Stripe's hourly meter summaries; exit 1 on any mismatch."""
    from ..hours import format_hour
    from ..ledger import validate_organization_id
    from ..models import open_database, utcnow
    from ..reconcile import HOUR, window
    from ..reconcile import reconcile as run_reconcile

    start, end = window(since, until, utcnow())
    if org is not None:
        validate_organization_id(org)
    settings = load_settings()
    open_database(settings.database_url, create=False)
    result = run_reconcile(settings, start, end, org)
    for mismatch in result.mismatches:
        click.echo(mismatch.describe())
    click.echo(
        f"reconcile {format_hour(start)}..{format_hour(end - HOUR)} UTC: "
        f"{result.customers} customer(s) checked, {result.hours} hour(s) compared, "
        f"{len(result.mismatches)} mismatch(es)"
    )
    sys.exit(0 if result.clean else 1)


@main.command("retry-failed")
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


@main.command("backfill")
@click.option("--since", required=True, help="First UTC hour: YYYY-MM-DDTHH, or a day YYYY-MM-DD.")
@click.option("--until", default=None, help="Last UTC hour (included); default: the current hour.")
@click.option("--org", default=None, help="Only this organization.")
@click.option("--dry-run", is_flag=True, help="Show what would be reported; send nothing.")
@friendly_errors
def backfill(since: str, until: str | None, org: str | None, dry_run: bool) -> None:
    """Report hours that have no delivered hourly report, with the count as it was then.

    The same search as the scheduler's catch-up: only billable organizations, never before
    the first hour sensormeter reported for an organization, within Stripe's 35 days.
    """
    from .. import ledger
    from ..hours import format_hour, hour_start, parse_hour_option
    from ..models import utcnow
    from ..report import Report
    from ..reporter import Reporter
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
        if org is not None and not runtime.source.billable_customers([org]):
            _fail(
                f"{org} is not billable ({runtime.source.explain_not_billable(org)}): nothing to do"
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
        reporter = Reporter(runtime.source, runtime.meter, settings.meter_event_name)
        outcomes: dict[str, int] = {}
        with click.progressbar(
            length=total, label="backfilling", file=sys.stderr, show_pos=True
        ) as bar:
            for label, orgs in plan:
                result = reporter.run(
                    runtime.database, orgs, Report.hourly(label), job_id="backfill"
                )
                for status in result.outcomes.values():
                    outcomes[status] = outcomes.get(status, 0) + 1
                bar.update(len(orgs))
    click.echo(
        "backfill: "
        + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "nothing to do")
    )
    if outcomes.get("failed"):
        _fail("some reports failed; see 'sensormeter failed', then 'sensormeter retry-failed'")


@main.command("stripe-emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=12111, show_default=True, type=WholeNumber(0, 65535))
@click.option(
    "--rate-limit",
    default=None,
    type=Number(min=0, min_open=True),
    help="Answer 429 beyond this many meter events per second.",
)
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=Number(min=0),
    help="Seconds to wait before answering each meter-event request.",
)
def stripe_emulator(host: str, port: int, rate_limit: float | None, latency: float) -> None:
    """Run the bundled Stripe meter emulator (for development and tests only)."""
    from ..emulator import serve

    serve(host, port, rate_limit=rate_limit, latency=latency)


@main.command("demo")
@click.option("-n", "--workers", default=5, show_default=True, type=WholeNumber(1, 16))
@friendly_errors
def demo_command(workers: int) -> None:
    """Seed demo data, run the Procfile's workers and scheduler once, show what was reported."""
    from .demo import run_demo

    settings = Settings.from_env()
    configure_logging(level="WARNING")
    sys.exit(run_demo(settings, click.echo, workers=workers))


if __name__ == "__main__":
    main()
