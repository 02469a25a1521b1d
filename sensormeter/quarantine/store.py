"""The open quarantines: which Stripe codes blame a customer or a meter, opening, closing, finding.

A quarantine is a row of ``sensormeter_quarantine`` whose ``released_at`` is null. Every query
here takes the database as an argument, so the webhook of a host process and the reporter
read and write the database they were given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee

from ..logs import get_logger
from ..models import MeterReport, Quarantine, utcnow

log = get_logger(__name__)

CUSTOMER, METER = Quarantine.CUSTOMER, Quarantine.METER
# Stripe's error-report codes that blame the customer itself, or the whole meter
# (../shared/reference/stripe-meters.md): no retry and no later hour can succeed until a
# person fixes the customer or the meter in Stripe.
CUSTOMER_CODES = frozenset({"meter_event_customer_not_found", "meter_event_no_customer_defined"})
METER_CODES = frozenset({"archived_meter", "no_meter"})
# Stripe's code for "no such object"; it blames the customer when its param names the customer.
MISSING_CODE = "resource_missing"


def blame(code: str | None, param: str | None = None, customer_key: str = "") -> str | None:
    """Whom a Stripe error code blames: ``customer``, ``meter``, or None (the event itself)."""
    if code in CUSTOMER_CODES:
        return CUSTOMER
    if code in METER_CODES:
        return METER
    if code == MISSING_CODE and param in {"customer", f"payload[{customer_key}]"}:
        return CUSTOMER
    return None


@dataclass(frozen=True)
class OpenQuarantine:
    """One open quarantine: a customer (or a meter's event name), Stripe's code and message."""

    scope: str
    subject: str
    code: str
    reason: str
    since: datetime

    def evidence(self) -> dict[str, Any]:
        """What a kept-back ledger row records about why it was not sent."""
        return {
            "quarantine": self.scope,
            "subject": self.subject,
            "code": self.code,
            "reason": self.reason,
            "since": self.since.isoformat(sep=" "),
        }


def rows_of(query: Any, database: peewee.Database) -> list[tuple[Any, ...]]:
    """Run a select on ``database`` (not the models' binding) and return plain tuples."""
    return [tuple(row) for row in query.tuples().execute(database)]


def _open_rows(database: peewee.Database, condition: Any = None) -> list[OpenQuarantine]:
    query = Quarantine.select(
        Quarantine.scope, Quarantine.subject, Quarantine.code, Quarantine.reason, Quarantine.since
    ).where(Quarantine.released_at.is_null())
    if condition is not None:
        query = query.where(condition)
    found: dict[tuple[str, str], OpenQuarantine] = {}
    for scope, subject, code, reason, since in rows_of(query.order_by(Quarantine.id), database):
        # Two processes may open the same quarantine at once: the first one stands.
        found.setdefault((scope, subject), OpenQuarantine(scope, subject, code, reason, since))
    return list(found.values())


def open_quarantines(database: peewee.Database) -> list[OpenQuarantine]:
    """Every open quarantine, oldest first."""
    return _open_rows(database)


def find_open(
    database: peewee.Database, customers: Iterable[str], event_names: Iterable[str]
) -> dict[tuple[str, str], OpenQuarantine]:
    """The open quarantines of these customers and meters, by (scope, subject): one query."""
    wanted_customers, wanted_meters = sorted(set(customers)), sorted(set(event_names))
    if not wanted_customers and not wanted_meters:
        return {}
    condition = ((Quarantine.scope == CUSTOMER) & Quarantine.subject.in_(wanted_customers)) | (
        (Quarantine.scope == METER) & Quarantine.subject.in_(wanted_meters)
    )
    return {(q.scope, q.subject): q for q in _open_rows(database, condition)}


def organizations_of(database: peewee.Database, customer: str) -> list[str]:
    """The organizations the ledger has reported under a customer, ascending."""
    query = (
        MeterReport.select(MeterReport.organization_id)
        .where(MeterReport.stripe_customer_id == customer)
        .distinct()
        .order_by(MeterReport.organization_id)
    )
    return [str(org) for (org,) in rows_of(query, database)]


def start(database: peewee.Database, scope: str, subject: str, code: str, reason: str) -> bool:
    """Open a quarantine unless one is open already; True when this call opened it.

    Opening logs the one warning ``quarantine.started``: the reports kept back afterwards
    are logged at info, so a refused customer is one alert, not one every hour.
    """
    with database.atomic():
        if _open_rows(database, (Quarantine.scope == scope) & (Quarantine.subject == subject)):
            return False
        Quarantine.insert(
            scope=scope, subject=subject, code=code, reason=reason, since=utcnow()
        ).execute(database)
    if scope == CUSTOMER:
        log.warning(
            "quarantine.started",
            customer=subject,
            organizations=organizations_of(database, subject),
            code=code,
            reason=reason,
            action="reports for this customer are kept in the ledger, not sent, until "
            "'sensormeter quarantine release' (docs/operations.md)",
        )
    else:
        log.warning(
            "quarantine.meter_paused",
            event_name=subject,
            code=code,
            reason=reason,
            action="no report is sent until 'sensormeter quarantine release --meter' "
            "(docs/operations.md)",
        )
    return True


def close(database: peewee.Database, scope: str, subject: str) -> int:
    """Release every open quarantine of a subject; the number closed (0: none was open)."""
    return int(
        Quarantine.update(released_at=utcnow())
        .where(
            (Quarantine.scope == scope)
            & (Quarantine.subject == subject)
            & Quarantine.released_at.is_null()
        )
        .execute(database)
    )


# Stripe's codes in words, for the person who reads ``sensormeter quarantine`` and the logs.
EXPLANATIONS = {
    "meter_event_customer_not_found": "Stripe has no customer with this id (deleted in Stripe, "
    "or the host app holds a wrong id)",
    "meter_event_no_customer_defined": "the events name no customer (the payload has no "
    "customer id under the meter's customer key)",
    "archived_meter": "the meter is archived (inactive) in Stripe",
    "no_meter": "Stripe has no active meter for this event name",
    MISSING_CODE: "Stripe has no such customer",
}


def explain(code: str) -> str:
    """Stripe's error code in words (the code itself when it is not one of ours)."""
    return EXPLANATIONS.get(code, code)
