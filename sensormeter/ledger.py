"""The ledger of meter reports: identifiers, pending rows, attempts and their outcomes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from .errors import InvalidOrganizationId
from .logs import scrub
from .meter import MeterEvent, Outcome, SendResult
from .models import MeterReport, tuples, utcnow

MAX_IDENTIFIER = 100  # Stripe's limit on a meter event identifier.
# Matched with fullmatch: "$" alone would also match before a trailing newline ("acme\n").
_ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,63}", re.ASCII)
# ASCII digits only: strptime also takes other scripts' digits ("２０２６-...").
_HOUR = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}", re.ASCII)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_ERROR_LIMIT = 500


def organization_id_problem(organization_id: object) -> str | None:
    """Say what is wrong with an organization id, or None when it is well-formed."""
    if not isinstance(organization_id, str):
        return f"must be a string, got {type(organization_id).__name__}"
    if organization_id.strip() == "":
        return "must not be empty"
    if organization_id != organization_id.strip():
        return "has leading or trailing whitespace"
    if not _ORG_ID.fullmatch(organization_id):
        return (
            "use 1-64 letters, digits, '.', '_', ':', '@' or '-' (ASCII), "
            "starting with a letter or digit"
        )
    return None


def validate_organization_id(organization_id: object) -> str:
    """Return the id if it is a non-empty string of 1-64 safe ASCII characters, else raise."""
    problem = organization_id_problem(organization_id)
    if problem is not None or not isinstance(organization_id, str):
        raise InvalidOrganizationId(organization_id, problem or "must be a string")
    return organization_id


def hour_start(moment: datetime) -> datetime:
    """The start of the UTC hour that contains ``moment`` (naive UTC)."""
    return moment.replace(minute=0, second=0, microsecond=0)


def format_hour(hour: datetime) -> str:
    """The compact hour label used in identifiers and job arguments: ``2026-11-29T04``."""
    return hour.strftime("%Y-%m-%dT%H")


def parse_hour(label: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH`` (as made by :func:`format_hour`) into a naive UTC datetime."""
    try:
        if not isinstance(label, str) or not _HOUR.fullmatch(label):
            raise ValueError(label)
        return datetime.strptime(label, "%Y-%m-%dT%H")
    except ValueError:
        raise ValueError(
            f"hour {label!r} is not of the form YYYY-MM-DDTHH (UTC, digits 0-9)"
        ) from None


def parse_hour_option(text: str) -> datetime:
    """Parse a command-line hour: ``YYYY-MM-DDTHH`` or a day ``YYYY-MM-DD`` (its first hour)."""
    stripped = text.strip()
    for pattern, form in ((_HOUR, "%Y-%m-%dT%H"), (_DAY, "%Y-%m-%d")):
        if not pattern.fullmatch(stripped):
            continue
        try:
            return datetime.strptime(stripped, form)
        except ValueError:
            break  # the right shape, but no such date or hour (2026-02-30, T24)
    raise ValueError(
        f"{text!r} is not a UTC hour YYYY-MM-DDTHH or a day YYYY-MM-DD (digits 0-9)"
    )


MAX_PAST_HOURS = 35 * 24 - 1  # Stripe accepts timestamps up to 35 days old


def check_reportable_hour(label: str, now: datetime) -> datetime:
    """Parse an hour and refuse one in the future or beyond Stripe's 35-day window."""
    hour = parse_hour(label)
    if hour > hour_start(now):
        raise ValueError(f"hour {label} is in the future (now is {format_hour(now)} UTC)")
    if hour < hour_start(now) - timedelta(hours=MAX_PAST_HOURS):
        raise ValueError(f"hour {label} is older than Stripe's 35-day window for meter events")
    return hour


def _bounded(readable: str, *parts: str) -> str:
    if len(readable) <= MAX_IDENTIFIER:
        return readable
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"sm-{digest}"


def hourly_identifier(organization_id: str, event_name: str, hour: datetime) -> str:
    """The identifier of an hourly report: fixed by (organization, event name, UTC hour)."""
    label = format_hour(hour)
    return _bounded(
        f"{event_name}-{organization_id}-{label}", "hourly", event_name, organization_id, label
    )


def on_demand_identifier(organization_id: str, event_name: str, request_id: str) -> str:
    """The identifier of a report asked for by ``enqueue_sensor_report``: one per request."""
    return _bounded(
        f"{event_name}-{organization_id}-r{request_id}",
        "request",
        event_name,
        organization_id,
        request_id,
    )


def customer_hourly_identifier(customer: str, event_name: str, hour: datetime) -> str:
    """The identifier of a shared customer's hourly event: fixed by (customer, event, hour).

    ``+`` is in neither an organization id nor an event name, so it can never equal an
    organization's identifier.
    """
    label = format_hour(hour)
    return _bounded(
        f"{event_name}+{customer}-{label}", "customer-hourly", event_name, customer, label
    )


def customer_request_identifier(customer: str, event_name: str, request_id: str) -> str:
    """The identifier of a shared customer's on-demand or period-close event."""
    return _bounded(
        f"{event_name}+{customer}-r{request_id}",
        "customer-request",
        event_name,
        customer,
        request_id,
    )


@dataclass(frozen=True)
class NewReport:
    """What a pending ledger row is created from, before its first attempt.

    ``event_identifier``/``event_value`` are set when the organization shares its Stripe
    customer: the row is its part of that customer's event.
    """

    organization_id: str
    identifier: str
    customer: str
    value: int
    measured_at: datetime
    kind: str
    period_hour: datetime | None
    event_identifier: str | None = None
    event_value: int | None = None


@dataclass
class LedgerRow:
    """The columns of a ledger row the processor works with, read as plain tuples (fast)."""

    id: int
    organization_id: str
    identifier: str
    event_name: str
    value: int
    customer: str
    measured_at: datetime
    status: str
    attempts: int
    last_error: str | None
    stripe_request_id: str | None
    event_identifier: str | None = None
    event_value: int | None = None
    sent_at: datetime | None = None
    updated_at: datetime | None = None


_ROW_COLUMNS = (
    MeterReport.id,
    MeterReport.organization_id,
    MeterReport.identifier,
    MeterReport.event_name,
    MeterReport.value,
    MeterReport.stripe_customer_id,
    MeterReport.measured_at,
    MeterReport.status,
    MeterReport.attempts,
    MeterReport.last_error,
    MeterReport.stripe_request_id,
    MeterReport.event_identifier,
    MeterReport.event_value,
)
_INSERT_COLUMNS = (
    "organization_id",
    "event_name",
    "value",
    "identifier",
    "kind",
    "period_hour",
    "stripe_customer_id",
    "measured_at",
    "status",
    "attempts",
    "job_id",
    "created_at",
    "updated_at",
    "event_identifier",
    "event_value",
)


def find(identifiers: Sequence[str]) -> dict[str, LedgerRow]:
    """Existing ledger rows by identifier (one query)."""
    if not identifiers:
        return {}
    query = MeterReport.select(*_ROW_COLUMNS).where(MeterReport.identifier.in_(list(identifiers)))
    return {row[2]: LedgerRow(*row) for row in tuples(query)}


def find_by_event(event_identifiers: Sequence[str]) -> list[LedgerRow]:
    """Rows that went out in these events: their own, or a shared customer's (one query)."""
    if not event_identifiers:
        return []
    wanted = list(event_identifiers)
    query = MeterReport.select(*_ROW_COLUMNS).where(
        MeterReport.identifier.in_(wanted) | MeterReport.event_identifier.in_(wanted)
    )
    return [LedgerRow(*row) for row in tuples(query)]


def find_by_ids(report_ids: Sequence[int]) -> list[LedgerRow]:
    """Ledger rows by primary key (one query)."""
    if not report_ids:
        return []
    query = MeterReport.select(*_ROW_COLUMNS).where(MeterReport.id.in_(list(report_ids)))
    return [LedgerRow(*row) for row in tuples(query)]


def ids_to_resend(
    *,
    failed: bool,
    stale_before: datetime | None = None,
    organization_id: str | None = None,
) -> list[int]:
    """Ids of failed rows (if asked) and of pending rows untouched since ``stale_before``."""
    condition = MeterReport.status == (MeterReport.FAILED if failed else "-none-")
    if stale_before is not None:
        condition |= (MeterReport.status == MeterReport.PENDING) & (
            MeterReport.updated_at < stale_before
        )
    query = MeterReport.select(MeterReport.id).where(condition)
    if organization_id is not None:
        query = query.where(MeterReport.organization_id == organization_id)
    return [int(row[0]) for row in tuples(query.order_by(MeterReport.id))]


def create_pending(
    database: peewee.Database, reports: Iterable[NewReport], event_name: str, job_id: str | None
) -> None:
    """Insert pending rows in bulk; an identifier already in the ledger is left as it is.

    A concurrent run of the same job may insert the same identifiers: the first one wins,
    and both then send the stored value, so Stripe sees one event.
    """
    now = utcnow()
    rows = [
        (
            r.organization_id,
            event_name,
            r.value,
            r.identifier,
            r.kind,
            r.period_hour,
            r.customer,
            r.measured_at,
            MeterReport.PENDING,
            0,
            job_id,
            now,
            now,
            r.event_identifier,
            r.event_value,
        )
        # One order for every writer: two jobs inserting the same customer's rows at once
        # then meet on the same first row, and the first to commit wins the whole group.
        for r in sorted(reports, key=lambda report: report.identifier)
    ]
    if not rows:
        return
    columns = ", ".join(_INSERT_COLUMNS)
    table = MeterReport._meta.table_name
    # Straight to the driver: peewee builds a large multi-row INSERT value by value, which
    # cost more CPU than everything else in a chunk job (see docs/performance.md).
    with database.atomic():
        cursor: Any = database.cursor()
        if isinstance(database, peewee.PostgresqlDatabase):
            from psycopg2.extras import execute_values

            sql = f"INSERT INTO {table} ({columns}) VALUES %s ON CONFLICT (identifier) DO NOTHING"
            execute_values(cursor, sql, rows, page_size=1000)
        else:
            marks = ", ".join("?" * len(_INSERT_COLUMNS))
            cursor.executemany(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", rows)


def event_key(row: LedgerRow) -> str:
    """The identifier of the Stripe event a row goes out in (shared by a customer's parts)."""
    return row.event_identifier or row.identifier


def event_for(row: LedgerRow) -> MeterEvent:
    """The Stripe event a ledger row stands for (the same on every attempt)."""
    return MeterEvent(
        identifier=event_key(row),
        event_name=row.event_name,
        customer=row.customer,
        value=int(row.value if row.event_value is None else row.event_value),
        timestamp=int((row.measured_at - datetime(1970, 1, 1)) / timedelta(seconds=1)),
    )


def apply_attempt(row: LedgerRow, result: SendResult, *, final_attempt: bool, now: datetime) -> str:
    """Set one attempt's outcome on the row (not saved) and return its new status."""
    row.attempts = int(row.attempts) + 1
    row.updated_at = now
    if result.outcome.delivered:
        # A sent row keeps the last error it met on the way: it explains its attempt count.
        row.status = MeterReport.SENT
        row.sent_at = now
    elif result.outcome is Outcome.REJECTED:
        row.status = MeterReport.REJECTED
    else:
        row.status = MeterReport.FAILED if final_attempt else MeterReport.PENDING
    if result.error and not result.outcome.delivered:
        # An error text may quote a key or a URL with a password: never store those.
        row.last_error = scrub(result.error)[:_ERROR_LIMIT]
    if result.request_id:
        row.stripe_request_id = result.request_id
    return str(row.status)


_UPDATE_BATCH = 500


def record_attempts(
    database: peewee.Database,
    rows: Sequence[LedgerRow],
    results: Sequence[SendResult],
    *,
    final_attempt: bool,
) -> list[str]:
    """Write a batch of attempts in one transaction.

    Delivered rows (nearly all of them) share one UPDATE per 500 rows; rows that failed carry
    their own error and are saved one by one.
    """
    now = utcnow()
    statuses = [
        apply_attempt(row, result, final_attempt=final_attempt, now=now)
        for row, result in zip(rows, results, strict=True)
    ]
    sent = [row for row in rows if row.status == MeterReport.SENT]
    others = [row for row in rows if row.status != MeterReport.SENT]
    with database.atomic():
        for start in range(0, len(sent), _UPDATE_BATCH):
            batch = sent[start : start + _UPDATE_BATCH]
            request_ids = [(r.id, r.stripe_request_id) for r in batch if r.stripe_request_id]
            request_id: Any = (
                peewee.Case(MeterReport.id, request_ids, MeterReport.stripe_request_id)
                if request_ids
                else MeterReport.stripe_request_id
            )
            MeterReport.update(
                {
                    MeterReport.status: MeterReport.SENT,
                    MeterReport.sent_at: batch[0].sent_at,
                    MeterReport.updated_at: batch[0].updated_at,
                    MeterReport.attempts: MeterReport.attempts + 1,
                    MeterReport.stripe_request_id: request_id,
                }
            ).where(MeterReport.id.in_([r.id for r in batch])).execute()
        for row in others:
            MeterReport.update(
                {
                    MeterReport.status: row.status,
                    MeterReport.attempts: row.attempts,
                    MeterReport.updated_at: row.updated_at,
                    MeterReport.last_error: row.last_error,
                    MeterReport.stripe_request_id: row.stripe_request_id,
                }
            ).where(MeterReport.id == row.id).execute()
    return statuses


def summary() -> dict[str, int]:
    """Count of ledger rows per status (every status present, zero when none)."""
    counts = {status: 0 for status in MeterReport.STATUSES}
    query = MeterReport.select(MeterReport.status, peewee.fn.COUNT(MeterReport.id)).group_by(
        MeterReport.status
    )
    for status, n in tuples(query):
        counts[status] = int(n)
    return counts
