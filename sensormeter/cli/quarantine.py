"""``sensormeter quarantine``: customers and meters Stripe refuses, and releasing them."""

from __future__ import annotations

import json
import sys

import click

from .common import fail, friendly_errors, load_settings

# Why a released report did not go out, by its status after the attempt.
_NOT_SENT = {
    "quarantined": "kept back again: the meter or the customer is still quarantined "
    "(see 'sensormeter quarantine')",
    "held": "held by the anomaly guard (see 'sensormeter held')",
    "rejected": "Stripe refused it (see 'sensormeter failed --rejected')",
}
_RETRY = "not delivered yet (see 'sensormeter failed', then 'sensormeter retry-failed')"


def _when(moment: object) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "-"


@click.group("quarantine", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_context
@friendly_errors
def quarantine(ctx: click.Context, as_json: bool) -> None:
    """List customers whose reports are kept back because Stripe refuses them, and paused meters.

    A quarantined customer's reports stay in the ledger (status quarantined) and cost no
    Stripe call; fix the customer in Stripe, then 'sensormeter quarantine release CUSTOMER'.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..models import open_database
    from ..quarantine import CUSTOMER
    from ..quarantine.listing import describe

    settings = load_settings()
    views = describe(open_database(settings.database_url, create=False))
    customers = [v for v in views if v.scope == CUSTOMER]
    meters = [v for v in views if v.scope != CUSTOMER]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "customers": [v.as_dict() for v in customers],
                    "paused_meters": [v.as_dict() for v in meters],
                },
                indent=2,
            )
        )
        return
    if not views:
        click.echo("No customer is quarantined and no meter is paused: every report is sent.")
        return
    if customers:
        click.echo("Quarantined customers (their reports are kept in the ledger, not sent):")
    for view in customers:
        orgs = ", ".join(view.organizations) or "none in the ledger"
        click.echo(f"  {view.subject} (organizations: {orgs})")
        click.echo(f"    why: {view.explanation}")
        click.echo(f"    Stripe said: {view.code}: {view.reason}")
        click.echo(f"    since: {_when(view.since)}")
        click.echo(
            f"    held back: {view.reports_held} report(s) over {view.hours_held} hour(s)"
            + (
                f", {_when(view.first_held)} to {_when(view.last_held)}"
                if view.reports_held
                else ""
            )
        )
        click.echo("    once fixed in Stripe: sensormeter quarantine release " + view.subject)
    if meters:
        click.echo("Paused meters (no report is sent at all):")
    for view in meters:
        click.echo(f"  {view.subject}: {view.explanation}")
        click.echo(f"    Stripe said: {view.code}: {view.reason}")
        click.echo(f"    since: {_when(view.since)}")
        click.echo(f"    held back: {view.reports_held} report(s) over {view.hours_held} hour(s)")
        click.echo("    once the meter is active in Stripe: sensormeter quarantine release --meter")


@quarantine.command("release")
@click.argument("customer", required=False)
@click.option(
    "--meter",
    is_flag=True,
    help="Release the paused meter (SENSORMETER_METER_EVENT_NAME) instead of a customer.",
)
@friendly_errors
def release(customer: str | None, meter: bool) -> None:
    """Check CUSTOMER in Stripe again; if it is there, send what was held back and let reports flow.

    Sends the newest held-back report of each hour Stripe still accepts (35 days), oldest
    first; older ones become superseded. Exits 1, changing nothing, while Stripe still
    refuses the customer (or the meter), and 1 when a report could not be sent (it is then
    failed: 'sensormeter retry-failed').
    """
    from ..meters.base import make_stripe_client
    from ..models import MeterReport
    from ..quarantine import CUSTOMER, METER
    from ..quarantine.release import (
        CustomerStillMissing,
        MeterStillRefused,
        customer_state,
        meter_state,
    )
    from ..quarantine.release import release as run_release
    from ..runtime import Runtime

    if (customer is None) == (not meter):
        fail("name a CUSTOMER (e.g. cus_123) or give --meter, not both")
    settings = load_settings()
    client = make_stripe_client(settings)
    if meter:
        scope, subject = METER, settings.meter_event_name
        state = meter_state(client, subject)
        if state is not None:
            raise MeterStillRefused(subject, state)
    else:
        scope, subject = CUSTOMER, str(customer)
        state = customer_state(client, subject)
        if state is not None:
            raise CustomerStillMissing(subject, state)
    runtime = Runtime.build(settings)
    try:
        done = run_release(
            runtime.database,
            runtime.reporter(),
            scope,
            subject,
            grace_hours=settings.invoice_grace_hours,
        )
    finally:
        runtime.close()
    sent = sorted(i for i, s in done.statuses.items() if s == MeterReport.SENT)
    unsent = {i: s for i, s in done.statuses.items() if s != MeterReport.SENT}
    click.echo(f"released {subject}: new reports are sent again")
    click.echo(f"sent {len(sent)} held-back report(s), the newest of each hour, oldest first")
    for identifier in sent:
        click.echo(f"  sent {identifier}")
    for identifier, why in sorted(done.superseded.items()):
        click.echo(f"  superseded {identifier}: {why}")
    for identifier, status in sorted(unsent.items()):
        click.echo(f"  NOT sent {identifier}: {status}, {_NOT_SENT.get(status, _RETRY)}")
    if done.late_closes:
        click.echo(
            "Periods whose invoice Stripe finalized while their close report was held back "
            "(a report now changes no bill: correct these invoices by hand in Stripe):"
        )
        for late in done.late_closes:
            click.echo(
                f"  {late.organization_id}: period ending {_when(late.period_end)}, "
                f"{late.value} sensor(s), close report {late.status}"
            )
    sys.exit(1 if unsent else 0)
