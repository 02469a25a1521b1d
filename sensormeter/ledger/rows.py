"""The ``meter_reports`` rows: create pending, find, record attempts, summarize."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from ..defaults import ERROR_LIMIT
from ..logs import scrub
from ..meters.base import MeterEvent, Outcome, SendResult
from ..models import MeterReport, tuples, utcnow


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
_TABLE = MeterReport._meta.table_name
_SELECT = ", ".join(column.column_name for column in _ROW_COLUMNS)
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


def _postgres(database: peewee.Database) -> bool:
    return isinstance(database, peewee.PostgresqlDatabase)


def find(identifiers: Sequence[str]) -> dict[str, LedgerRow]:
    """Existing ledger rows by identifier (one query)."""
    if not identifiers:
        return {}
    database = MeterReport._meta.database
    if _postgres(database):
        # One array parameter: peewee building, and PostgreSQL parsing, a 500-value IN list
        # cost more than the lookup itself (see docs/performance.md).
        cursor = database.execute_sql(
            f"SELECT {_SELECT} FROM {_TABLE} WHERE identifier = ANY(%s)", [list(identifiers)]
        )
        return {row[2]: LedgerRow(*row) for row in cursor.fetchall()}
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
) -> dict[str, LedgerRow]:
    """Insert pending rows in bulk and return the stored rows of their identifiers.

    An identifier already in the ledger is left as it is, and its stored row is returned: a
    concurrent run of the same job may insert the same identifiers, the first one wins, and
    both then send the stored value, so Stripe sees one event.
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
        return {}
    columns = ", ".join(_INSERT_COLUMNS)
    identifiers = [row[3] for row in rows]
    # Straight to the driver: peewee builds a large multi-row INSERT value by value, which
    # cost more CPU than everything else in a chunk job (see docs/performance.md).
    with database.atomic():
        cursor: Any = database.cursor()
        if _postgres(database):
            stored = _insert_postgres(cursor, columns, rows)
        else:
            marks = ", ".join("?" * len(_INSERT_COLUMNS))
            cursor.executemany(f"INSERT OR IGNORE INTO {_TABLE} ({columns}) VALUES ({marks})", rows)
            stored = {}
    # Rows another run had stored (or, on SQLite, every row): read back as they are.
    stored.update(find([i for i in identifiers if i not in stored]))
    return stored


# Each insert column's PostgreSQL type: one array parameter per column for unnest().
_POSTGRES_TYPES = (
    "text", "text", "bigint", "text", "text", "timestamp", "text", "timestamp",
    "text", "integer", "text", "timestamp", "timestamp", "text", "bigint",
)  # fmt: skip


def _insert_postgres(
    cursor: Any, columns: str, rows: list[tuple[Any, ...]]
) -> dict[str, LedgerRow]:
    """Insert the rows, skipping identifiers already there; the rows inserted, by identifier.

    One statement of one array parameter per column, whatever the number of rows (with
    psycopg2 or psycopg 3): PostgreSQL parses and plans it once, and RETURNING gives the new
    rows' ids without reading them back.
    """
    arrays = [list(column) for column in zip(*rows, strict=True)]
    unnest = ", ".join(f"%s::{kind}[]" for kind in _POSTGRES_TYPES)
    cursor.execute(
        f"INSERT INTO {_TABLE} ({columns}) SELECT * FROM unnest({unnest})"
        f" ON CONFLICT (identifier) DO NOTHING RETURNING {_SELECT}",
        arrays,
    )
    return {row[2]: LedgerRow(*row) for row in cursor.fetchall()}


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
        row.last_error = scrub(result.error)[:ERROR_LIMIT]
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
    if _postgres(database):
        with database.atomic():
            _record_postgres(database, sent, others)
        return statuses
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


def _record_postgres(
    database: peewee.Database, sent: Sequence[LedgerRow], others: Sequence[LedgerRow]
) -> None:
    """The attempts in at most two statements: the delivered rows, then all the others.

    Each an UPDATE ... FROM unnest() of one array parameter per column, whatever the number
    of rows; the same changes as the row-by-row path below.
    """
    if sent:
        database.execute_sql(
            f"UPDATE {_TABLE} AS m SET status = %s, sent_at = %s, updated_at = %s,"
            " attempts = m.attempts + 1,"
            " stripe_request_id = COALESCE(v.request_id, m.stripe_request_id)"
            " FROM unnest(%s::bigint[], %s::text[]) AS v(id, request_id) WHERE m.id = v.id",
            [
                MeterReport.SENT,
                sent[0].sent_at,
                sent[0].updated_at,
                [r.id for r in sent],
                [r.stripe_request_id or None for r in sent],
            ],
        )
    if others:
        database.execute_sql(
            f"UPDATE {_TABLE} AS m SET status = v.status, attempts = v.attempts,"
            " updated_at = %s, last_error = v.last_error, stripe_request_id = v.request_id"
            " FROM unnest(%s::bigint[], %s::text[], %s::integer[], %s::text[], %s::text[])"
            " AS v(id, status, attempts, last_error, request_id) WHERE m.id = v.id",
            [
                others[0].updated_at,
                [r.id for r in others],
                [str(r.status) for r in others],
                [int(r.attempts) for r in others],
                [r.last_error for r in others],
                [r.stripe_request_id for r in others],
            ],
        )


def keep_back(database: peewee.Database, kept: dict[int, tuple[str, dict[str, Any]]]) -> None:
    """Give rows that are not to be sent a status (held, quarantined, ...) and their evidence.

    ``kept`` maps a row's id to (status, evidence); the evidence is stored as JSON. A row
    another run sent meanwhile keeps ``sent``: only pending or failed rows change.
    """
    if not kept:
        return
    now = utcnow()
    with database.atomic():
        for row_id, (status, evidence) in kept.items():
            MeterReport.update(
                {
                    MeterReport.status: status,
                    MeterReport.evidence: json.dumps(evidence, sort_keys=True, default=str),
                    MeterReport.updated_at: now,
                }
            ).where(
                (MeterReport.id == row_id)
                & MeterReport.status.in_((MeterReport.PENDING, MeterReport.FAILED))
            ).execute()


def summary() -> dict[str, int]:
    """Count of ledger rows per status (every status present, zero when none)."""
    counts = {status: 0 for status in MeterReport.STATUSES}
    query = MeterReport.select(MeterReport.status, peewee.fn.COUNT(MeterReport.id)).group_by(
        MeterReport.status
    )
    for status, n in tuples(query):
        counts[status] = int(n)
    return counts
