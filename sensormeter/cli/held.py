"""``sensormeter held``: the reports the anomaly guard kept back, and releasing them."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from .common import BadArgument, WholeNumber, connect_redis, fail, friendly_errors, load_settings

if TYPE_CHECKING:
    from ..guard import HeldRow
    from ..settings import Settings
    from ..tasks.held import Decided

RELEASED_BY = "sensormeter held release"


def _sensors(value: int) -> str:
    return f"{value} sensor{'' if value == 1 else 's'}"


def describe(row: HeldRow) -> str:
    """One held report for a support engineer: who, which report, the reading, why held."""
    from ..tasks.held import label

    previous = ", ".join(str(v) for v in row.previous) or "none"
    return (
        f"{row.organization_id}, {label(row)}: {_sensors(int(row.value))}, held: "
        f"{row.explanation} (previous: {previous})"
    )


def _facts(row: HeldRow, settings: Settings) -> dict[str, Any]:
    """A held report as ``held --json`` prints it."""
    from ..tasks.held import period_end

    end = period_end(row)
    recount = settings.guard_recount_minutes
    return {
        "id": row.id,
        "organization_id": row.organization_id,
        "customer": row.customer,
        "kind": row.kind,
        "hour": row.period_hour.isoformat() if row.period_hour else None,
        "period_end": end.isoformat() if end else None,
        "invoice_finalized_at": (
            (end + timedelta(hours=settings.invoice_grace_hours)).isoformat() if end else None
        ),
        "value": int(row.value),
        "measured_at": row.measured_at.isoformat(),
        "identifier": row.identifier,
        "event_identifier": row.event_identifier,
        "rule": row.evidence.get("rule"),
        "explanation": row.explanation,
        "previous": row.previous,
        "recount_after": (
            (row.updated_at + timedelta(minutes=recount)).replace(microsecond=0).isoformat()
            if recount and row.by_guard
            else None
        ),
        "evidence": row.evidence,
        "text": describe(row),
    }


def _when(moment: str | None) -> str:
    return "" if moment is None else f"{datetime.fromisoformat(moment):%Y-%m-%d %H:%M} UTC"


@click.group("held", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=WholeNumber(1, 100_000),
    help="List at most this many (oldest reading first).",
)
@click.pass_context
@friendly_errors
def held(ctx: click.Context, as_json: bool, limit: int) -> None:
    """List the reports the anomaly guard held back, with why (ID is the ledger row's id).

    'sensormeter held release ID | --org ORG | --all' sends them as they are.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..guard import count_held, held_rows
    from ..models import open_database

    settings = load_settings()
    database = open_database(settings.database_url, create=False)
    with database.connection_context():
        facts = [_facts(row, settings) for row in held_rows(limit=limit)]
        total = sum(count_held().values()) if len(facts) == limit else len(facts)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    more = f", the oldest {len(facts)} listed" if total > len(facts) else ""
    click.echo(f"{total} held report(s){more}")
    for item in facts:
        line = f"  #{item['id']} {item['text']}"
        if item["invoice_finalized_at"]:
            line += f"; Stripe finalizes the invoice at {_when(item['invoice_finalized_at'])}"
        if item["recount_after"]:
            line += f"; the recount sends it after {_when(item['recount_after'])}"
        if item["event_identifier"]:
            line += f"; goes out with the other organizations of {item['customer']}"
        click.echo(line)
    if facts:
        click.echo(
            "send one as it is: sensormeter held release ID (or --org ORG, --all); "
            "see docs/operations.md, 'Held reports'"
        )


def _outcome(row: HeldRow, decided: Decided) -> tuple[str, bool]:
    """What became of one released row, and whether that is a success."""
    status = decided.statuses.get(row.id, "unchanged")
    error = decided.errors.get(row.id)
    if status == "sent":
        return (
            f"sent {_sensors(int(row.value))} to Stripe ({decided.request_ids.get(row.id)})",
            True,
        )
    if status == "superseded":
        newer = decided.superseded_by[row.id]
        return (
            f"not sent: superseded, a newer report of {row.customer} (stamped "
            f"{newer:%Y-%m-%d %H:%M:%S} UTC) was already delivered and Stripe bills that one",
            True,
        )
    if status == "pending":
        return f"not taken by Stripe yet ({error}); queued to be sent again with retries", True
    if status in ("rejected", "failed"):
        return f"{status} by Stripe: {error}", False
    return f"not sent: it is {status} now", False


@held.command("release")
@click.argument("report_id", required=False, type=WholeNumber(1, 2**63 - 1))
@click.option("--org", default=None, help="Release every held report of this organization.")
@click.option("--all", "release_all", is_flag=True, help="Release every held report.")
@friendly_errors
def release(report_id: int | None, org: str | None, release_all: bool) -> None:
    """Send held reports as they are now, past the guard (never older than a delivered one).

    Exit 0 when each was sent, superseded or queued for a retry (or --all found none); 1 when
    ID or --org names no held report, or Stripe refused one; 2 when a service is out of reach
    or the arguments are wrong.
    """
    from .. import ledger
    from ..guard import held_rows
    from ..runtime import Runtime
    from ..tasks.held import label, release_held

    if sum((report_id is not None, org is not None, release_all)) != 1:
        raise BadArgument("give exactly one of ID, --org ORG or --all")
    if org is not None:
        ledger.validate_organization_id(org)
    settings = load_settings()
    connect_redis(settings).close()  # fail before changing anything: retries are queued there
    runtime = Runtime.build(settings)
    try:
        with runtime.database.connection_context():
            if report_id is not None:
                rows = held_rows(ids=[report_id])
                if not rows:
                    found = next(iter(ledger.find_by_ids([report_id])), None)
                    status = f"it is {found.status}" if found else "there is no such ledger row"
                    fail(
                        f"report #{report_id} is not held ({status}); 'sensormeter held' lists them"
                    )
            else:
                rows = held_rows(organization_id=org)
                if not rows:
                    if org is not None:
                        fail(f"{org} has no held report; 'sensormeter held' lists them")
                    click.echo("no held report to release")
                    return
            decided = release_held(runtime, rows, RELEASED_BY)
            ok = True
            for row in decided.rows:
                text, good = _outcome(row, decided)
                ok &= good
                click.echo(f"#{row.id} {row.organization_id}, {label(row)}: {text}")
    finally:
        runtime.close()
    if not ok:
        sys.exit(1)
