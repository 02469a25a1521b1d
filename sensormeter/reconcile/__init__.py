"""Reconciliation: compare the ledger with what Stripe's meter holds, per customer and UTC hour.

Stripe's meter event summaries, grouped by hour, give one value per customer and hour; with the
`last` formula it is the value of the event with the latest timestamp in that hour. The ledger
predicts that value from its ``sent`` rows. :func:`compare` works on plain data; the functions
around it read the ledger and Stripe.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import attrgetter
from typing import Any

import peewee
import stripe

from ..defaults import SUMMARY_PAGE_SIZE
from ..errors import SensormeterError, ServiceUnavailable
from ..hours import format_hour, hour_start, parse_hour_option
from ..ledger.retention import Reach
from ..meters.base import make_stripe_client
from ..models import MeterReport, utcnow
from ..settings import Settings
from .compare import (
    KINDS,
    MISSING_IN_STRIPE,
    NOT_DELIVERED,
    SAME_TIMESTAMP,
    UNEXPECTED_IN_STRIPE,
    VALUE_DIFFERS,
    LedgerEntry,
    Mismatch,
    Reconciliation,
    StripeHour,
    compare,
    format_value,
)

HOUR = timedelta(hours=1)
LOOKBACK = timedelta(hours=48)  # the default window: two days back
_FETCH_BATCH = 10_000  # ledger rows fetched from PostgreSQL at a time


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
    # The drivers' default cursors (psycopg2's and psycopg 3's) load the whole result at once
    # (about 250 bytes a row, and a fleet's window has millions); a named cursor fetches it
    # in batches. WITH HOLD, because
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
    settings: Settings,
    start: datetime,
    end: datetime,
    organization_id: str | None = None,
    now: datetime | None = None,
) -> Reconciliation:
    """Read the ledger (the database must be open) and Stripe's summaries, and compare them.

    Only customers with ledger rows in the window are asked for, one summaries list each.
    Hours before the first one the ledger keeps (SENSORMETER_RETENTION_DAYS) are not
    compared: Stripe's events of then would all look unexpected; ``compared_from`` says so.

    Raises:
        MeterNotFound: no meter has ``settings.meter_event_name``.
        ServiceUnavailable: Stripe could not be reached.
        StripeReadFailed: Stripe answered a read with an error.
    """
    client = make_stripe_client(settings)
    mismatches: list[Mismatch] = []
    customers = hours = 0
    reach = Reach.at(settings.retention_days, now or utcnow())
    compared_from = None
    if reach.notice(start) is not None and reach.first_kept is not None:
        compared_from = min(reach.first_kept, end)
        start = compared_from
    try:
        # The meter first, so a wrong event name or key is reported even for an empty window.
        meter_id = find_meter_id(client, settings.meter_event_name)
        if start >= end:  # the whole window is older than what the ledger keeps
            return Reconciliation([], 0, 0, compared_from)
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
    return Reconciliation(mismatches, customers, hours, compared_from)


__all__ = [
    "HOUR",
    "KINDS",
    "LOOKBACK",
    "MISSING_IN_STRIPE",
    "NOT_DELIVERED",
    "SAME_TIMESTAMP",
    "UNEXPECTED_IN_STRIPE",
    "VALUE_DIFFERS",
    "InvalidWindow",
    "LedgerEntry",
    "MeterNotFound",
    "Mismatch",
    "Reconciliation",
    "StripeHour",
    "StripeReadFailed",
    "compare",
    "find_meter_id",
    "format_value",
    "hourly_summaries",
    "ledger_entries",
    "parse_bound",
    "reconcile",
    "stripe_read_error",
    "window",
]
