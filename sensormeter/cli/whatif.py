"""``sensormeter whatif``: what other pricing would have billed, from the delivered reports."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import click

from .common import BadArgument, fail, friendly_errors, load_settings

DAY = timedelta(days=1)


def _day(text: str, name: str) -> datetime:
    from ..hours import parse_day

    try:
        return parse_day(text)
    except ValueError as exc:
        raise BadArgument(str(exc), param_hint=name) from None


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


@click.command("whatif")
@click.option("--since", required=True, help="First UTC day, YYYY-MM-DD.")
@click.option("--until", required=True, help="Last UTC day, YYYY-MM-DD (its whole day).")
@click.option("--org", default=None, help="Only this organization.")
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--plot", default=None, metavar="FILE.png", help="Draw --org's hourly counts.")
@friendly_errors
def whatif(since: str, until: str, org: str | None, form: str, plot: str | None) -> None:
    """Per organization: last (what a 'last' meter bills), max, mean and device_hours.

    From the delivered reports of the UTC days --since to --until (both whole): 'last' is the
    value of the latest delivered report (any kind); max, mean and device_hours (the sum of
    the hourly counts) are over the delivered hourly reports. A final TOTAL row sums last,
    max and device_hours. A range reaching back before the hours the ledger keeps
    (SENSORMETER_RETENTION_DAYS) says so: its figures cover the kept hours only.
    """
    from ..hours import format_hour
    from ..ledger import validate_organization_id
    from ..ledger.retention import Reach
    from ..ledger.whatif import COLUMNS, hourly_counts, total, what_if
    from ..migrations import check_schema
    from ..models import open_database, utcnow

    start, end = _day(since, "--since"), _day(until, "--until") + DAY
    if start >= end:
        raise BadArgument(f"--since {since} is after --until {until}", param_hint="--since")
    if org is not None:
        validate_organization_id(org)
    if plot is not None and org is None:
        raise BadArgument("--plot draws one organization: give --org too", param_hint="--plot")
    if plot is not None:
        from ..ops.chart import require_matplotlib

        require_matplotlib()  # before reading anything: no figures, then an error
    settings = load_settings()
    event = settings.meter_event_name
    reach = Reach.at(settings.retention_days, utcnow())
    notice = reach.notice(start)
    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
        figures = what_if(database, event, start, end, org)
        counts = hourly_counts(database, event, start, end, org) if plot and org else []
    finally:
        database.close()
    rows = [f.row() for f in [*figures, total(figures)]]
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([_cell(row[c]) for c in COLUMNS] for row in rows)
        click.echo(out.getvalue(), nl=False)
        if notice is not None:
            click.echo(f"note: {notice}; the figures cover the kept hours only", err=True)
    elif form == "json":
        window = {"since": format_hour(start), "until": format_hour(end - timedelta(hours=1))}
        facts = {**window, **reach.as_dict(start), "event_name": event, "rows": rows}
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(
            f"delivered reports of {event}, {start:%Y-%m-%d} to {end - DAY:%Y-%m-%d} UTC "
            f"({len(figures)} organization(s))"
        )
        if notice is not None:
            click.echo(f"note: {notice}; the figures cover the kept hours only")
        width = max([len("organization_id"), *(len(r["organization_id"]) for r in rows)])
        click.echo(
            f"{'organization_id':<{width}} {'last':>10} {'max':>10} {'mean':>12} "
            f"{'device_hours':>14}"
        )
        for row in rows:
            mean = "-" if row["mean"] is None else f"{row['mean']:.2f}"
            click.echo(
                f"{row['organization_id']:<{width}} {_cell(row['last']) or '-':>10} "
                f"{_cell(row['max']) or '-':>10} {mean:>12} {row['device_hours']:>14}"
            )
    if plot is not None and org is not None:
        from ..ops.chart import plot_hourly

        mine = next((f for f in figures if f.organization_id == org), None)
        if mine is None:
            fail(f"no delivered report of {org} from {since} to {until}: nothing to plot")
            return
        plot_hourly(
            plot,
            org,
            counts,
            mine.last,
            (start, end),
            f"{org}: hourly active sensors, {since} to {until} (UTC)",
        )
        click.echo(f"wrote {plot}", err=True)
