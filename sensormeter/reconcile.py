"""Reconciliation: compare the ledger with what Stripe's meter holds, per customer and UTC hour.

Stripe's meter event summaries, grouped by hour, give one value per customer and hour; with the
`last` formula it is the value of the event with the latest timestamp in that hour. The ledger
predicts that value from its ``sent`` rows. :func:`compare` works on plain data; the functions
around it read the ledger and Stripe.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import attrgetter
from typing import Any

import peewee
import stripe

from .defaults import SUMMARY_PAGE_SIZE
from .errors import SensormeterError, ServiceUnavailable
from .hours import format_hour, hour_start, parse_hour_option
from .meters.base import make_stripe_client
from .models import MeterReport
from .settings import Settings

HOUR = timedelta(hours=1)
LOOKBACK = timedelta(hours=48)  # the default window: two days back
_FETCH_BATCH = 10_000  # ledger rows fetched from PostgreSQL at a time

MISSING_IN_STRIPE = "missing_in_stripe"
VALUE_DIFFERS = "value_differs"
UNEXPECTED_IN_STRIPE = "unexpected_in_stripe"
NOT_DELIVERED = "not_delivered"
SAME_TIMESTAMP = "same_timestamp"
# The order mismatches of one customer and hour are listed in.
KINDS = (MISSING_IN_STRIPE, VALUE_DIFFERS, SAME_TIMESTAMP, UNEXPECTED_IN_STRIPE, NOT_DELIVERED)


class MeterNotFound(SensormeterError):
    """Raised when no Stripe meter has the configured event name."""

    def __init__(self, event_name: str) -> None:
        super().__init__(
            f"no Stripe meter has event_name {event_name!r} (create the meter in Stripe, "
            "or set SENSORMETER_METER_EVENT_NAME to the meter's event name)"
        )
        self.event_name = event_name


class StripeReadFailed(SensormeterError):
    """Raised when Stripe answers a read (meters, summaries) with an error."""

    def __init__(self, error: stripe.StripeError) -> None:
        kind = type(error).__name__
        message = getattr(error, "user_message", None) or str(error) or kind
        request_id = getattr(error, "request_id", None)
        status = getattr(error, "http_status", None)
        where = f" (HTTP {status}, request {request_id})" if request_id else f" (HTTP {status})"
        super().__init__(f"Stripe refused a meter read: {kind}: {message}{where}")
        self.request_id = request_id
        self.http_status = status


class InvalidWindow(SensormeterError, ValueError):
    """Raised when --since/--until is malformed or the window is empty."""


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
    documented. Rows still pending, failed or rejected are listed as ``not_delivered``,
    whatever Stripe holds for their hour. A Stripe value for an hour without a sent row, even
    0, is ``unexpected_in_stripe``: under `last`, a stray 0 late in a period bills nothing.
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
        if row.status == MeterReport.SENT:
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


def parse_bound(label: str, option: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH`` (a UTC hour) or ``YYYY-MM-DD`` (that day's first hour)."""
    try:
        return parse_hour_option(label)
    except ValueError as exc:
        raise InvalidWindow(f"{option} {exc}") from None


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The whole hours to reconcile as [start, end) in naive UTC; both options name hours.

    ``until`` is the last hour included, as in ``backfill``. Defaults: the hour 48 hours ago
    through the current hour.
    """
    first = parse_bound(since, "--since") if since is not None else hour_start(now) - LOOKBACK
    last = parse_bound(until, "--until") if until is not None else hour_start(now)
    if first > last:
        raise InvalidWindow(f"--since {format_hour(first)} is after --until {format_hour(last)}")
    return first, last + HOUR


def ledger_entries(
    event_name: str, start: datetime, end: datetime, organization_id: str | None = None
) -> Iterator[LedgerEntry]:
    """Ledger rows of the meter whose event timestamp is in [start, end), any status.

    Rows come customer by customer (then by id) and are read as they are used, so a caller
    that handles one customer at a time holds one customer's rows in memory.
    """
    query = (
        MeterReport.select(
            MeterReport.id,
            MeterReport.organization_id,
            MeterReport.stripe_customer_id,
            MeterReport.value,
            MeterReport.identifier,
            MeterReport.measured_at,
            MeterReport.status,
            MeterReport.kind,
            MeterReport.event_identifier,
            MeterReport.event_value,
        )
        .where(
            (MeterReport.event_name == event_name)
            & (MeterReport.measured_at >= start)
            & (MeterReport.measured_at < end)
        )
        .order_by(MeterReport.stripe_customer_id, MeterReport.id)
    )
    if organization_id is not None:
        query = query.where(MeterReport.organization_id == organization_id)
    for i, org, cus, value, ident, measured, status, kind, event, total in _stream(query):
        yield LedgerEntry(
            int(i),
            org,
            cus,
            int(value),
            ident,
            measured,
            status,
            kind,
            event,
            None if total is None else int(total),
        )


def _stream(query: Any) -> Iterator[tuple[Any, ...]]:
    """Rows of a select as tuples, read from the database a batch at a time."""
    database = MeterReport._meta.database
    if not isinstance(database, peewee.PostgresqlDatabase):
        yield from query.tuples().iterator()  # SQLite steps through the result row by row
        return
    # psycopg2's default cursor loads the whole result at once (about 250 bytes a row, and a
    # fleet's window has millions); a named cursor fetches it in batches. WITH HOLD, because
    # peewee's connections are in autocommit and a plain named cursor needs a transaction.
    sql, params = query.sql()
    cursor = database.connection().cursor(name=f"reconcile_{uuid.uuid4().hex}", withhold=True)
    cursor.itersize = _FETCH_BATCH
    try:
        cursor.execute(sql, params)
        yield from cursor
    finally:
        cursor.close()


def find_meter_id(client: stripe.StripeClient, event_name: str) -> str:
    """The id of the meter with this event name (an active one first), through all pages.

    Raises:
        MeterNotFound: no meter has this event name.
        stripe.StripeError: Stripe could not be read (see :func:`stripe_read_error`).
    """
    meters = [
        meter
        for meter in client.v1.billing.meters.list({"limit": SUMMARY_PAGE_SIZE}).auto_paging_iter()
        if meter.event_name == event_name
    ]
    if not meters:
        raise MeterNotFound(event_name)
    meters.sort(key=lambda meter: meter.status != "active")
    return meters[0].id


def _timestamp(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp())


def hourly_summaries(
    client: stripe.StripeClient,
    meter_id: str,
    customers: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    page_size: int = SUMMARY_PAGE_SIZE,
) -> list[StripeHour]:
    """Stripe's hourly `last` values of each customer in [start, end): one paged list each.

    Stripe lists only hours with events, newest first; every page is read.
    """
    found: list[StripeHour] = []
    for customer in customers:
        summaries = client.v1.billing.meters.event_summaries.list(
            meter_id,
            params={
                "customer": customer,
                "start_time": _timestamp(start),
                "end_time": _timestamp(end),
                "value_grouping_window": "hour",
                "limit": page_size,
            },
        )
        for summary in summaries.auto_paging_iter():
            hour = datetime.fromtimestamp(summary.start_time, UTC).replace(tzinfo=None)
            found.append(StripeHour(customer, hour, float(summary.aggregated_value)))
    return found


def stripe_read_error(exc: stripe.StripeError, settings: Settings) -> SensormeterError:
    """Turn a failed Stripe read into the error the CLI prints as one line."""
    if isinstance(exc, stripe.APIConnectionError):
        reason = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
        address = settings.stripe_api_base or "https://api.stripe.com"
        return ServiceUnavailable("Stripe", address, reason.strip().splitlines()[0])
    return StripeReadFailed(exc)


def reconcile(
    settings: Settings, start: datetime, end: datetime, organization_id: str | None = None
) -> Reconciliation:
    """Read the ledger (the database must be open) and Stripe's summaries, and compare them.

    Only customers with ledger rows in the window are asked for, one summaries list each.

    Raises:
        MeterNotFound: no meter has ``settings.meter_event_name``.
        ServiceUnavailable: Stripe could not be reached.
        StripeReadFailed: Stripe answered a read with an error.
    """
    client = make_stripe_client(settings)
    mismatches: list[Mismatch] = []
    customers = hours = 0
    try:
        # The meter first, so a wrong event name or key is reported even for an empty window.
        meter_id = find_meter_id(client, settings.meter_event_name)
        entries = ledger_entries(settings.meter_event_name, start, end, organization_id)
        # One customer at a time: memory holds one customer's rows and summaries, not the fleet's.
        for customer, rows in groupby(entries, key=attrgetter("customer")):
            summaries = hourly_summaries(client, meter_id, [customer], start, end)
            part = compare(list(rows), summaries)
            mismatches.extend(part.mismatches)
            customers += part.customers
            hours += part.hours
    except stripe.StripeError as exc:
        raise stripe_read_error(exc, settings) from None
    return Reconciliation(mismatches, customers, hours)
