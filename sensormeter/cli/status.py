"""What an operator looks at: ``sensormeter status`` and ``sensormeter failed``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ..settings import Settings
from ..usage import UsageSource
from .common import WholeNumber, connect_redis, friendly_errors, load_settings


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@friendly_errors
def status(as_json: bool) -> None:
    """Summarize the ledger, the queue and the schedule; exit 1 if there is a problem.

    The problems are those of 'sensormeter check' (exit 1); Redis or the database out of
    reach exits 2.
    """
    from .. import ledger
    from ..models import MeterReport, open_database, utcnow
    from ..ops.health import PROBLEMS, find_problems
    from ..ops.readings import registrations
    from ..tasks.queue import make_queue
    from ..tasks.skipped import skipped_ids
    from ..tasks.worker import pending_work
    from ..usage import load_usage_source

    settings = load_settings()
    database = open_database(settings.database_url, create=False)
    facts: dict[str, Any] = {"ledger": ledger.summary()}
    last = (
        MeterReport.select()
        .where(MeterReport.status == MeterReport.SENT)
        .order_by(MeterReport.sent_at.desc())
        .first()
    )
    facts["last_sent"] = last and {
        "organization_id": last.organization_id,
        "value": last.value,
        "sent_at": _iso(last.sent_at),
    }
    if not as_json:
        # Printed before Redis is reached: with Redis down, the ledger still shows.
        click.echo("ledger: " + ", ".join(f"{k} {v}" for k, v in facts["ledger"].items()))
        if last is not None:
            click.echo(
                f"last sent: {last.organization_id} value {last.value} at {last.sent_at} UTC"
            )
    connection = connect_redis(settings)
    queued, scheduled = pending_work(make_queue(settings, connection))
    facts["queue"] = {"name": settings.queue_name, "queued": queued, "waiting_for_retry": scheduled}
    facts["skipped_ids"] = [
        {"id": s.shown, "reason": s.reason, "last_seen": s.last_seen}
        for s in skipped_ids(connection, settings.queue_name)
    ]
    facts["schedule"] = {
        job: _iso(run) for job, run in registrations(connection, settings.queue_name).items()
    }
    facts["problem_reports"] = [
        {
            "status": row.status,
            "organization_id": row.organization_id,
            "identifier": row.identifier,
            "last_error": row.last_error,
        }
        for row in MeterReport.select()
        .where(MeterReport.status.in_([MeterReport.FAILED, MeterReport.REJECTED]))
        .order_by(MeterReport.updated_at.desc())
        .limit(10)
    ]
    facts["stale_pending"] = _stale_pending(settings, limit=10)
    source = load_usage_source(settings, database)
    facts["shared_customers"] = _shared_customers(source)
    facts["late_closes"] = _late_closes(settings, limit=20)
    facts["held"] = _held()
    facts["retention"] = _retention(settings, connection)
    problems = find_problems(settings, database, connection, source, utcnow())
    facts["problems"] = [problem.as_dict() for problem in problems]
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _echo_text(facts)
    if problems:
        sys.exit(PROBLEMS)


def _iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset (the ledger stores naive UTC)."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _echo_text(facts: dict[str, Any]) -> None:
    """The text form of the facts after the ledger lines, one fact a line."""
    queue = facts["queue"]
    click.echo(
        f"queue {queue['name']}: {queue['queued']} queued, "
        f"{queue['waiting_for_retry']} waiting for retry"
    )
    skipped = facts["skipped_ids"]
    if skipped:
        more = f", and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        click.echo(
            f"{len(skipped)} organization id(s) from the usage source cannot be reported: "
            + ", ".join(f"{s['id']} ({s['reason']})" for s in skipped[:10])
            + more
        )
    schedule = facts["schedule"]
    next_run = schedule["hourly"] and datetime.fromisoformat(schedule["hourly"])
    click.echo(f"next hourly run: {next_run or 'not scheduled (is the scheduler running?)'}")
    missing = [job for job, run in schedule.items() if run is None and job != "hourly"]
    if missing:
        click.echo(f"not scheduled: {', '.join(missing)} (is the scheduler running?)")
    for row in facts["problem_reports"]:
        click.echo(
            f"  {row['status']}: {row['organization_id']} {row['identifier']}: {row['last_error']}"
        )
    _echo_stale_pending(facts["stale_pending"])
    if facts["shared_customers"]:
        click.echo(
            "warning: Stripe customer(s) with more than one billable subscription (their "
            "organizations are billed as one meter value; check in Stripe how the invoice "
            "splits it): " + ", ".join(f"{c} ({n})" for c, n in facts["shared_customers"].items())
        )
    late = facts["late_closes"]
    click.echo(
        f"period closes after the {late['grace_hours']} h invoice grace: {late['count']}"
        + (" (correct these invoices in Stripe; see docs/operations.md)" if late["count"] else "")
    )
    for close in late["closes"]:
        when = (
            f"sent {datetime.fromisoformat(close['sent_at']):%Y-%m-%d %H:%M:%S} UTC"
            if close["sent_at"]
            else f"not delivered ({close['status']})"
        )
        end = datetime.fromisoformat(close["period_end"]).replace(tzinfo=None)
        click.echo(
            f"  late close: {close['organization_id']} period end {end} UTC "
            f"value {close['value']}: {when}"
        )
    held = facts["held"]
    if held["count"]:
        click.echo(
            f"held by the anomaly guard: {held['count']} report(s), {held['period_close']} of "
            "them closing a period (see 'sensormeter held')"
        )
    _echo_retention(facts["retention"])
    codes = list(dict.fromkeys(problem["code"] for problem in facts["problems"]))
    click.echo(
        f"problems: {', '.join(codes)} (see 'sensormeter check')" if codes else "problems: none"
    )


def _retention(settings: Settings, connection: Any) -> dict[str, Any]:
    """How long the ledger keeps reports, and what the last prune did (kept in Redis)."""
    from ..tasks.retention import last_prune

    return {
        "days": settings.retention_days,
        "last_prune": last_prune(connection, settings.queue_name),
    }


def _echo_retention(facts: dict[str, Any]) -> None:
    """One line: the retention, and the last prune's figures."""
    if not facts["days"]:
        click.echo("ledger retention: off (the ledger keeps everything)")
        return
    last = facts["last_prune"]
    done = (
        "no prune has run yet"
        if last is None
        else f"last prune {last['at']}: removed {last['reports']} report(s) in "
        f"{last['seconds']} s" + ("" if last["complete"] else " (more to remove)")
    )
    click.echo(f"ledger retention: {facts['days']} days; {done}")


def _stale_pending(settings: Settings, limit: int) -> dict[str, Any]:
    """Pending rows no job will finish (the sweep resends them every 10 minutes)."""
    from ..models import MeterReport, utcnow
    from ..tasks.recovery import stale_after

    cutoff = utcnow() - stale_after(settings)
    rows = MeterReport.select().where(
        (MeterReport.status == MeterReport.PENDING) & (MeterReport.updated_at < cutoff)
    )
    total = rows.count()
    return {
        "count": total,
        "before": _iso(cutoff),
        "reports": [
            {
                "organization_id": row.organization_id,
                "identifier": row.identifier,
                "attempts": row.attempts,
                "last_error": row.last_error,
            }
            for row in (rows.order_by(MeterReport.updated_at).limit(limit) if total else [])
        ],
    }


def _echo_stale_pending(stale: dict[str, Any]) -> None:
    """Say how many pending rows no job will finish, and list some."""
    if not stale["count"]:
        return
    before = datetime.fromisoformat(stale["before"])
    click.echo(
        f"{stale['count']} pending report(s) untouched since before "
        f"{before:%Y-%m-%d %H:%M} UTC: no job will finish them (the sweep resends them; "
        "or 'sensormeter retry-failed --include-stale-pending')"
    )
    for row in stale["reports"]:
        click.echo(
            f"  pending: {row['organization_id']} {row['identifier']} attempts "
            f"{row['attempts']}: {row['last_error'] or 'no attempt recorded'}"
        )


def _shared_customers(source: UsageSource) -> dict[str, int]:
    """Stripe customers with several billable subscriptions (see docs/integrating.md)."""
    several = getattr(source, "customers_with_several_subscriptions", None)
    return {} if several is None else dict(several())


def _late_closes(settings: Settings, limit: int) -> dict[str, Any]:
    """Closing reports Stripe got after it finalized the invoice, or not at all."""
    from ..models import MeterReport, utcnow
    from ..tasks.period_close import late_closes

    grace = settings.invoice_grace_hours
    late = late_closes(MeterReport._meta.database, grace, utcnow())
    return {
        "grace_hours": grace,
        "count": len(late),
        "closes": [
            {
                "organization_id": close.organization_id,
                "period_end": _iso(close.period_end),
                "value": close.value,
                "status": close.status,
                "sent_at": _iso(close.sent_at),
            }
            for close in late[:limit]
        ],
    }


def _held() -> dict[str, int]:
    """How many reports the anomaly guard holds, and how many of them close a period."""
    from ..guard import count_held
    from ..models import MeterReport

    by_kind = count_held()
    return {
        "count": sum(by_kind.values()),
        "period_close": by_kind.get(MeterReport.PERIOD_CLOSE, 0),
    }


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
        _echo_stale_pending(_stale_pending(settings, limit))
