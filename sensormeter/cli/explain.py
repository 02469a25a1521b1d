"""``sensormeter explain ORG``: why an organization was billed what it was, hour by hour."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import click

from .common import BadArgument, friendly_errors, load_settings

LOOKBACK = timedelta(hours=48)


def _hour_option(text: str | None, name: str) -> datetime | None:
    from ..hours import parse_hour_option

    if text is None:
        return None
    try:
        return parse_hour_option(text)
    except ValueError as exc:
        raise BadArgument(str(exc), param_hint=name) from None


@click.command("explain")
@click.argument("organization_id")
@click.option(
    "--since", default=None, help="First UTC hour, YYYY-MM-DDTHH or a day; default: 48 h ago."
)
@click.option("--until", default=None, help="Last UTC hour (included); default: the current hour.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@friendly_errors
def explain(organization_id: str, since: str | None, until: str | None, as_json: bool) -> None:
    """Explain ORGANIZATION_ID's reports hour by hour: what was sent, or why nothing was.

    Each UTC hour shows the hourly report (sensors, when sent, Stripe's request id,
    identifier) or why there is none: not billable then, held by the guard, customer
    quarantined, not reported yet and whether catch-up will reach it, beyond Stripe's
    35 days, or before the hours the ledger keeps (SENSORMETER_RETENTION_DAYS). On-demand
    and period-close reports follow the hour they were stamped in.
    """
    from ..hours import format_hour, hour_start
    from ..ledger import validate_organization_id
    from ..ledger.explanation import Context
    from ..ledger.explanation import explain as explain_hours
    from ..ledger.retention import Reach
    from ..migrations import check_schema
    from ..models import open_database, utcnow
    from ..tasks.catchup import catchup_window
    from ..usage.loader import load_usage_source

    validate_organization_id(organization_id)
    now = utcnow()
    current = hour_start(now)
    first = _hour_option(since, "--since") or current - LOOKBACK
    last = min(_hour_option(until, "--until") or current, current)  # nothing after now
    if first > current:
        raise BadArgument(
            f"{format_hour(first)} is in the future (now is {format_hour(current)} UTC)",
            param_hint="--since",
        )
    if first > last:
        raise BadArgument(
            f"--since {format_hour(first)} is after --until {format_hour(last)}",
            param_hint="--since",
        )
    settings = load_settings()
    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
        source = load_usage_source(settings, database)
        billable = organization_id in source.billable_customers([organization_id])
        reason = None if billable else source.explain_not_billable(organization_id)
        window = catchup_window(settings, now, include_current=False)
        context = Context(
            now=now,
            event_name=settings.meter_event_name,
            catchup=(window[0], window[-1]) if window else None,
            catchup_hours=settings.catchup_hours,
            not_billable_now=reason,
            reach=Reach.at(settings.retention_days, now),
        )
        found = explain_hours(database, organization_id, first, last, context)
    finally:
        database.close()
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    now_text = "billable now" if reason is None else f"not billable now: {reason}"
    click.echo(f"{organization_id}, {format_hour(first)} to {format_hour(last)} UTC ({now_text})")
    if found.notice is not None:
        click.echo(f"note: {found.notice}")
    day = None
    for line in found.lines:
        if line.hour.date() != day:
            day = line.hour.date()
            click.echo(f"{day:%Y-%m-%d}")
        click.echo(f"  {line.hour:%H:%M}  {line.text}")
        for note in line.notes:
            click.echo(f"         + {note}")
