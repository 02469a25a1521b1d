"""``sensormeter unbilled``: organizations with active sensors that nobody is billed for."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from .common import WholeNumber, friendly_errors, load_settings


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:00:00+00:00")


@click.command("unbilled")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=WholeNumber(0, 1_000_000),
    help="Organizations listed per reason (0: all); --json lists all.",
)
@friendly_errors
def unbilled(as_json: bool, limit: int) -> None:
    """List organizations with active sensors that are not billed, grouped by reason.

    A reason is the status of the subscription (past_due, canceled, ...), no Stripe customer
    id, or no subscription; since when is the end of the organization's last billable hour in
    the billable history. Exit 1 when the usage source cannot tell.
    """
    from ..migrations import check_schema
    from ..models import open_database
    from ..usage.loader import load_usage_source
    from ..usage.unbilled import describe_reason, find_unbilled, totals

    settings = load_settings()
    database = open_database(settings.database_url, create=False)
    try:
        check_schema(database)
        found = find_unbilled(load_usage_source(settings, database), database)
    finally:
        database.close()
    summed = totals(found, time.time())
    if as_json:
        facts: dict[str, Any] = {
            "organizations": sum(summed.organizations.values()),
            "sensors": sum(summed.sensors.values()),
            "by_reason": {
                reason: {"organizations": summed.organizations[reason], "sensors": n}
                for reason, n in summed.sensors.items()
            },
            "unbilled": [
                {
                    "organization_id": o.organization_id,
                    "reason": o.reason,
                    "sensors": o.sensors,
                    "last_billable_hour": _when(o.last_billable_hour),
                    "since": _when(o.since),
                }
                for o in found
            ],
        }
        click.echo(json.dumps(facts, indent=2))
        return
    if not found:
        click.echo("every organization with active sensors is billed")
        return
    click.echo(
        f"{len(found)} organization(s) with {sum(summed.sensors.values())} active sensor(s) "
        "are not billed:"
    )
    width = max(len(o.organization_id) for o in found)
    for reason in sorted(summed.sensors, key=lambda r: (-summed.sensors[r], r)):
        group = [o for o in found if o.reason == reason]
        click.echo(
            f"\n{describe_reason(reason)}: {len(group)} organization(s), "
            f"{summed.sensors[reason]} sensor(s)"
        )
        shown = group if limit == 0 else group[:limit]
        for o in shown:
            since = (
                f"not billed since {o.since:%Y-%m-%d %H:00} UTC"
                if o.since is not None
                else "never billed"
            )
            click.echo(f"  {o.organization_id:<{width}}  {o.sensors:>7} sensors  {since}")
        if len(group) > len(shown):
            click.echo(f"  ... and {len(group) - len(shown)} more (--limit 0 lists all)")
