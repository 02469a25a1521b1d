"""Releasing a quarantine: re-read the customer, send what is still billable, let reports flow.

A release sends, through the normal send path (ledger attempts, gates), the newest kept-back
report of each hour that Stripe still accepts (35 days), oldest first, so a ``last`` meter sees
the customer's reports in order. A kept-back report older than one already delivered for the
customer, or than the hour's newest, would bill an old count: it becomes ``superseded``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee
import stripe

from ..errors import SensormeterError
from ..hours import hour_start
from ..logs import get_logger
from ..models import MeterReport, utcnow
from ..reporter import Reporter
from ..tasks.period_close import period_end_of
from . import store

log = get_logger(__name__)

# Stripe takes events up to 35 days old; a few minutes less, so a report chosen now is still
# inside the window when it arrives.
STRIPE_WINDOW = timedelta(days=35) - timedelta(minutes=10)


class NotQuarantined(SensormeterError):
    """Raised when a release names a customer or meter that is not quarantined."""


class CustomerStillMissing(SensormeterError):
    """Raised when Stripe still has no usable customer: nothing is sent, the quarantine stays."""

    def __init__(self, customer: str, state: str) -> None:
        super().__init__(
            f"{customer} is still {state} in Stripe: nothing was sent and the quarantine stays. "
            "Restore or recreate the customer in Stripe (or give its organizations their new "
            "Stripe customer id in the host app), then release again"
        )
        self.customer = customer
        self.state = state


@dataclass(frozen=True)
class LateClose:
    """A period whose invoice Stripe finalized while its close report was kept back."""

    organization_id: str
    period_end: datetime
    value: int
    status: str  # the close report's ledger status after the release


@dataclass
class Release:
    """What a release did: rows sent (by status), superseded, and periods to correct by hand."""

    subject: str
    statuses: dict[str, str] = field(default_factory=dict)  # identifier -> status after sending
    superseded: dict[str, str] = field(default_factory=dict)  # identifier -> why
    late_closes: list[LateClose] = field(default_factory=list)


def customer_state(client: stripe.StripeClient, customer: str) -> str | None:
    """Why Stripe cannot bill the customer (``deleted``, ``unknown``), or None when it can.

    Raises:
        SensormeterError: Stripe could not be asked (the release is refused, nothing changes).
    """
    try:
        found = client.v1.customers.retrieve(customer)
    except stripe.StripeError as exc:
        if isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404:
            return "unknown (Stripe has no such customer)"
        raise SensormeterError(
            f"could not read {customer} from Stripe: {type(exc).__name__}: {exc.user_message}"
        ) from None
    return "deleted" if getattr(found, "deleted", False) else None


def meter_state(client: stripe.StripeClient, event_name: str) -> str | None:
    """Why Stripe cannot take events of ``event_name`` (archived, no meter), or None when it can.

    Raises:
        SensormeterError: Stripe could not be asked (the release is refused, nothing changes).
    """
    try:
        meters = list(client.v1.billing.meters.list({"limit": 100}).auto_paging_iter())
    except stripe.StripeError as exc:
        raise SensormeterError(
            f"could not list the meters in Stripe: {type(exc).__name__}: {exc.user_message}"
        ) from None
    statuses = {str(m.status) for m in meters if m.event_name == event_name}
    if "active" in statuses:
        return None
    return "archived (inactive)" if statuses else "missing (Stripe has no meter for it)"


class MeterStillRefused(SensormeterError):
    """Raised when Stripe still has no active meter for the event name: the pause stays."""

    def __init__(self, event_name: str, state: str) -> None:
        super().__init__(
            f"the meter for {event_name} is still {state} in Stripe: nothing was sent and "
            "the pause stays. Reactivate the meter in Stripe (or create one and set "
            "SENSORMETER_METER_EVENT_NAME to its event name), then release again"
        )
        self.event_name = event_name
        self.state = state


def _hour_of(kind: str, period_hour: datetime | None, measured_at: datetime) -> datetime:
    return period_hour if kind == MeterReport.HOURLY and period_hour else hour_start(measured_at)


def _newest_delivered(database: peewee.Database, customer: str) -> dict[str, datetime]:
    """Per event name, the stamp of the newest report delivered for the customer."""
    query = (
        MeterReport.select(MeterReport.event_name, peewee.fn.MAX(MeterReport.measured_at))
        .where(
            (MeterReport.stripe_customer_id == customer) & (MeterReport.status == MeterReport.SENT)
        )
        .group_by(MeterReport.event_name)
    )
    return {
        name: moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))
        for name, moment in store.rows_of(query, database)
    }


def plan(
    database: peewee.Database, condition: Any, now: datetime, newest: dict[str, datetime]
) -> tuple[list[list[int]], dict[int, str], list[Any]]:
    """Choose the kept-back rows to send (grouped by event, oldest first) and those superseded.

    Returns (row ids per event to send, {row id: why superseded}, the kept-back rows read).
    """
    query = MeterReport.select(
        MeterReport.id,
        MeterReport.organization_id,
        MeterReport.identifier,
        MeterReport.event_identifier,
        MeterReport.event_name,
        MeterReport.kind,
        MeterReport.period_hour,
        MeterReport.measured_at,
        MeterReport.value,
        MeterReport.stripe_customer_id,
    ).where((MeterReport.status == MeterReport.QUARANTINED) & condition)
    rows = store.rows_of(query.order_by(MeterReport.measured_at, MeterReport.id), database)
    events: dict[str, list[Any]] = {}
    for row in rows:
        events.setdefault(row[3] or row[2], []).append(row)
    # The newest event of each (customer, meter, hour) is the one a `last` meter keeps.
    newest_of_hour: dict[tuple[str, str, datetime], str] = {}
    for key, parts in events.items():
        first = parts[0]
        newest_of_hour[(first[9], first[4], _hour_of(first[5], first[6], first[7]))] = key
    send: list[list[int]] = []
    superseded: dict[int, str] = {}
    for key, parts in events.items():
        _, _, _, _, name, kind, period_hour, measured_at, _, customer = parts[0]
        delivered = newest.get(f"{customer}\0{name}")
        if measured_at < now - STRIPE_WINDOW:
            why = "older than Stripe's 35-day window: Stripe would refuse it"
        elif delivered is not None and measured_at <= delivered:
            why = f"a newer report of the customer was delivered (stamped {delivered})"
        elif newest_of_hour[(customer, name, _hour_of(kind, period_hour, measured_at))] != key:
            why = "a newer report of the same hour was sent instead"
        else:
            send.append([part[0] for part in parts])
            continue
        superseded.update({part[0]: why for part in parts})
    return send, superseded, rows


def _set_status(database: peewee.Database, reasons: dict[int, str], status: str) -> None:
    """Move kept-back rows to ``status``, adding the release's reason to their evidence."""
    now = utcnow()
    with database.atomic():
        for row_id, why in reasons.items():
            (evidence_text,) = store.rows_of(
                MeterReport.select(MeterReport.evidence).where(MeterReport.id == row_id), database
            )[0]
            evidence = json.loads(evidence_text) if evidence_text else {}
            evidence["released"] = {"at": now.isoformat(sep=" "), "outcome": status, "why": why}
            MeterReport.update(
                status=status, evidence=json.dumps(evidence, sort_keys=True), updated_at=now
            ).where(
                (MeterReport.id == row_id) & (MeterReport.status == MeterReport.QUARANTINED)
            ).execute(database)


def release(
    database: peewee.Database,
    reporter: Reporter,
    scope: str,
    subject: str,
    *,
    grace_hours: int,
    now: datetime | None = None,
) -> Release:
    """Close the quarantine and send its still-billable kept-back reports.

    The caller checks the customer with Stripe first (:func:`customer_state`). The rows of
    a customer under a paused meter are kept back again by the gate, as the meter's.
    """
    now = now or utcnow()
    if scope == store.CUSTOMER:
        condition = MeterReport.stripe_customer_id == subject
        newest = {f"{subject}\0{k}": v for k, v in _newest_delivered(database, subject).items()}
    else:
        condition = MeterReport.event_name == subject
        newest = {}
        for customer, name, moment in _newest_per_customer(database, subject):
            newest[f"{customer}\0{name}"] = moment
    closed = store.close(database, scope, subject)
    send, superseded, rows = plan(database, condition, now, newest)
    if not closed and not rows:
        raise NotQuarantined(f"{subject} is not quarantined (see 'sensormeter quarantine')")
    _set_status(database, superseded, MeterReport.SUPERSEDED)
    _set_status(
        database,
        {i: "the newest report of its hour" for ids in send for i in ids},
        MeterReport.PENDING,
    )
    result = Release(subject)
    identifier_of = {row[0]: row[2] for row in rows}
    result.superseded = {identifier_of[i]: why for i, why in superseded.items()}
    for ids in send:  # one event at a time, oldest first: a `last` meter keeps the order
        chunk = reporter.resend(database, ids, job_id=f"quarantine-release:{subject}")
        result.statuses.update(chunk.statuses)
    statuses = {identifier_of[i]: s for i, s in superseded.items()} | result.statuses
    grace = timedelta(hours=grace_hours)
    for row in rows:
        row_id, org, identifier, _, name, kind, _, measured_at, value, _ = row
        if kind != MeterReport.PERIOD_CLOSE:
            continue
        end = period_end_of(org, name, identifier, measured_at)
        if end + grace < now:
            result.late_closes.append(LateClose(org, end, int(value), statuses[identifier]))
    log.info(
        "quarantine.released",
        scope=scope,
        subject=subject,
        sent=sum(1 for s in result.statuses.values() if s == MeterReport.SENT),
        not_sent=sorted(i for i, s in result.statuses.items() if s != MeterReport.SENT),
        superseded=len(result.superseded),
        late_closes=len(result.late_closes),
    )
    return result


def _newest_per_customer(
    database: peewee.Database, event_name: str
) -> list[tuple[str, str, datetime]]:
    """(customer, event name, stamp of the newest delivered report) for a meter's customers."""
    query = (
        MeterReport.select(
            MeterReport.stripe_customer_id,
            MeterReport.event_name,
            peewee.fn.MAX(MeterReport.measured_at),
        )
        .where((MeterReport.event_name == event_name) & (MeterReport.status == MeterReport.SENT))
        .group_by(MeterReport.stripe_customer_id, MeterReport.event_name)
    )
    return [
        (c, n, m if isinstance(m, datetime) else datetime.fromisoformat(str(m)))
        for c, n, m in store.rows_of(query, database)
    ]
