"""Comparing the ledger with Stripe's hourly summaries, on plain data (no database, no Stripe).

The expected value of a customer's hour is that of its latest delivered event; see
:func:`compare` for the rules and docs/reconciliation.md for what each mismatch means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..hours import format_hour, hour_start
from ..models import MeterReport

MISSING_IN_STRIPE = "missing_in_stripe"
VALUE_DIFFERS = "value_differs"
UNEXPECTED_IN_STRIPE = "unexpected_in_stripe"
NOT_DELIVERED = "not_delivered"
SAME_TIMESTAMP = "same_timestamp"
# The order mismatches of one customer and hour are listed in.
KINDS = (MISSING_IN_STRIPE, VALUE_DIFFERS, SAME_TIMESTAMP, UNEXPECTED_IN_STRIPE, NOT_DELIVERED)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as reconciliation sees it."""

    id: int
    organization_id: str
    customer: str
    value: int
    identifier: str
    measured_at: datetime  # naive UTC, the event's timestamp
    status: str
    kind: str = MeterReport.HOURLY
    # Set on a shared customer's parts: the event they went out in, and its value (the sum).
    event_identifier: str | None = None
    event_value: int | None = None

    @property
    def event(self) -> str:
        """The identifier of the Stripe event this row went out in."""
        return self.event_identifier or self.identifier

    @property
    def event_amount(self) -> int:
        """The value of that event (the row's own value, or its customer's sum)."""
        return self.value if self.event_value is None else self.event_value


@dataclass(frozen=True, slots=True)
class StripeHour:
    """One hourly meter event summary: what Stripe will bill for a customer and hour."""

    customer: str
    hour: datetime  # naive UTC start of the hour
    value: float


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the ledger and Stripe, or one row Stripe never got."""

    kind: str
    organization_id: str
    customer: str
    hour: datetime
    ledger_value: int | None = None
    identifier: str | None = None
    stripe_value: float | None = None
    status: str | None = None

    def describe(self) -> str:
        """The mismatch as one line of ``key=value`` fields, the kind first."""
        ledger = "none" if self.ledger_value is None else str(self.ledger_value)
        parts = [
            self.kind,
            f"org={self.organization_id}",
            f"customer={self.customer}",
            f"hour={format_hour(self.hour)}",
            f"ledger={ledger}",
            f"identifier={self.identifier or '-'}",
        ]
        if self.status is not None:
            parts.append(f"status={self.status}")
        parts.append(f"stripe={format_value(self.stripe_value)}")
        return " ".join(parts)


@dataclass(frozen=True)
class Reconciliation:
    """The outcome of a comparison: the mismatches and how much was compared."""

    mismatches: list[Mismatch] = field(default_factory=list)
    customers: int = 0
    hours: int = 0
    # The hours before this were not compared: the ledger no longer keeps them (retention).
    # None: the whole window was compared.
    compared_from: datetime | None = None

    @property
    def clean(self) -> bool:
        """True when the ledger and Stripe agree and every row in the window was delivered."""
        return not self.mismatches


def format_value(value: float | None) -> str:
    """A Stripe value as printed: ``none``, a whole number without ``.0``, or the float."""
    if value is None:
        return "none"
    return str(int(value)) if float(value).is_integer() else str(value)


def compare(entries: Iterable[LedgerEntry], summaries: Iterable[StripeHour]) -> Reconciliation:
    """Compare ledger rows with Stripe's hourly summaries of the same customers and window.

    Stripe aggregates per customer, so the comparison is per customer and hour. The expected
    value is that of the event of the ``sent`` row with the latest ``measured_at`` in the
    hour (hourly and on-demand rows alike; a tie goes to the higher id): a shared customer's
    parts go out in one event whose value is their sum. Several delivered events at that same
    latest second are a ``same_timestamp`` mismatch: which of them Stripe bills is not
    documented. Rows still pending, failed, rejected, held or quarantined are listed as
    ``not_delivered``, whatever Stripe holds for their hour; a superseded row is not (it is
    never to be sent: a newer report of its customer was delivered instead). A Stripe value
    for an hour without a sent row, even 0, is ``unexpected_in_stripe``: under `last`, a
    stray 0 late in a period bills nothing.
    """
    rows = list(entries)
    latest: dict[tuple[str, datetime], LedgerEntry] = {}
    for row in rows:
        if row.status != MeterReport.SENT:
            continue
        key = (row.customer, hour_start(row.measured_at))
        best = latest.get(key)
        if best is None or (row.measured_at, row.id) > (best.measured_at, best.id):
            latest[key] = row
    parts: dict[str, set[str]] = {}
    tied: dict[tuple[str, datetime], set[str]] = {}
    for row in rows:
        parts.setdefault(row.event, set()).add(row.organization_id)
        key = (row.customer, hour_start(row.measured_at))
        best = latest.get(key)
        if row.status == MeterReport.SENT and best and row.measured_at == best.measured_at:
            tied.setdefault(key, set()).add(row.event)
    stripe_values = {(s.customer, hour_start(s.hour)): s.value for s in summaries}
    organizations: dict[str, set[str]] = {}
    for row in rows:
        organizations.setdefault(row.customer, set()).add(row.organization_id)

    def who(row: LedgerEntry) -> str:
        return ",".join(sorted(parts.get(row.event, {row.organization_id})))

    mismatches: list[Mismatch] = []
    compared = set(latest)
    for key, row in latest.items():
        found = stripe_values.get(key)
        if found is None or float(row.event_amount) != found:
            kind = MISSING_IN_STRIPE if found is None else VALUE_DIFFERS
            mismatches.append(
                Mismatch(kind, who(row), row.customer, key[1], row.event_amount, row.event, found)
            )
        if len(tied.get(key, ())) > 1:
            mismatches.append(
                Mismatch(
                    SAME_TIMESTAMP,
                    ",".join(sorted(o for e in tied[key] for o in parts[e])),
                    row.customer,
                    key[1],
                    row.event_amount,
                    ",".join(sorted(tied[key])),
                    found,
                )
            )
    for key, value in stripe_values.items():
        if key in latest:
            continue
        compared.add(key)
        customer, hour = key
        org = ",".join(sorted(organizations.get(customer, ()))) or "-"
        mismatches.append(Mismatch(UNEXPECTED_IN_STRIPE, org, customer, hour, stripe_value=value))
    for row in rows:
        if row.status in (MeterReport.SENT, MeterReport.SUPERSEDED):
            continue
        hour = hour_start(row.measured_at)
        mismatches.append(
            Mismatch(
                NOT_DELIVERED,
                row.organization_id,
                row.customer,
                hour,
                int(row.value),
                row.identifier,
                stripe_values.get((row.customer, hour)),
                row.status,
            )
        )
    mismatches.sort(key=lambda m: (m.customer, m.hour, KINDS.index(m.kind), m.identifier or ""))
    return Reconciliation(mismatches, customers=len(organizations), hours=len(compared))
