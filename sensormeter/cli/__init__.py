"""The ``sensormeter`` command: the process edge where settings are read and logging is set up."""

from __future__ import annotations

import sys
import warnings

import click

from ..logs import configure_logging
from ..settings import Settings
from .common import (
    BadArgument,
    Number,
    WholeNumber,
    check_database,
    connect_redis,
    friendly_errors,
    load_settings,
    not_billable_reason,
)
from .explain import explain
from .held import held
from .ops import check, metrics
from .prune import prune
from .quarantine import quarantine
from .repair import backfill, reconcile, retry_failed
from .schema import init_db, migrate
from .status import failed, status
from .unbilled import unbilled
from .whatif import whatif


@click.group()
@click.version_option(package_name="sensormeter")
def main() -> None:
    """Report active-sensor counts to a Stripe Billing Meter through RQ.

    Configuration comes from the environment: REDIS_URL, DATABASE_URL, STRIPE_API_KEY,
    STRIPE_API_BASE, SENSORMETER_* (see docs/configuration.md).
    """


@main.command("report")
@click.argument("organization_id")
@friendly_errors
def report(organization_id: str) -> None:
    """Queue a report of ORGANIZATION_ID's count now (coalesced with one already waiting).

    An organization that is not billable now is refused at once, with the reason (exit 1):
    its job would only log that it skipped it.
    """
    from ..ledger import validate_organization_id
    from ..tasks.report import enqueue_sensor_report

    validate_organization_id(organization_id)
    settings = load_settings()
    connection = connect_redis(settings)
    reason = not_billable_reason(settings, organization_id)
    if reason is not None:
        click.echo(
            f"error: {organization_id} is not billable now ({reason}); nothing queued", err=True
        )
        sys.exit(1)
    job_id = enqueue_sensor_report(organization_id, settings=settings, connection=connection)
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
    from ..runtime import Runtime, share_runtime
    from ..tasks.worker import run_workers

    settings = load_settings()
    settings.require_stripe_key()
    connection = connect_redis(settings)
    # Fail at start, not in the first job: check the database and the Stripe settings now.
    # The work-horses RQ forks for each job then start from this runtime (runtime.py).
    share_runtime(Runtime.build(settings))
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
    # Fail at start, as the worker does: every job it queues reads this database.
    check_database(settings)
    connection = connect_redis(settings)
    # Registration and the start-up catch-up happen inside run(), which waits out Redis
    # outages; the "scheduler.started" line gives the next hourly run.
    ReportingScheduler(settings, connection, interval=interval).run(burst=burst)


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
    configure_logging(level="WARNING", log_format=settings.log_format)
    sys.exit(run_demo(settings, click.echo, workers=workers))


for command in (
    status,
    failed,
    held,
    reconcile,
    retry_failed,
    backfill,
    check,
    metrics,
    init_db,
    migrate,
    quarantine,
    unbilled,
    explain,
    whatif,
    prune,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
