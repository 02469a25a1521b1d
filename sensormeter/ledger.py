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
from .meter import MeterEvent, Outcome, SendResult
from .models import MeterReport, tuples, utcnow

MAX_IDENTIFIER = 100  # Stripe's limit on a meter event identifier.
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,63}$")
_ERROR_LIMIT = 500


def validate_organization_id(organization_id: object) -> str:
    """Return the id if it is a non-empty string of 1-64 safe characters, else raise."""
    if not isinstance(organization_id, str):
        raise InvalidOrganizationId(
            organization_id, f"must be a string, got {type(organization_id).__name__}"
        )
    if organization_id.strip() == "":
        raise InvalidOrganizationId(organization_id, "must not be empty")
    if not _ORG_ID.match(organization_id):
        raise InvalidOrganizationId(
            organization_id,
            "use 1-64 letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit",
        )
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
        return datetime.strptime(label, "%Y-%m-%dT%H")
    except ValueError:
        raise ValueError(f"hour {label!r} is not of the form YYYY-MM-DDTHH (UTC)") from None


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


@dataclass(frozen=True)
class NewReport:
    """What a pending ledger row is created from, before its first attempt."""

    organization_id: str
    identifier: str
    customer: str
    value: int
    measured_at: datetime
    kind: str
    period_hour: datetime | None


def find(identifiers: Sequence[str]) -> dict[str, MeterReport]:
    """Existing ledger rows by identifier (one query)."""
    if not identifiers:
        return {}
    rows = MeterReport.select().where(MeterReport.identifier.in_(list(identifiers)))
    return {row.identifier: row for row in rows}


def create_pending(
    database: peewee.Database, reports: Iterable[NewReport], event_name: str, job_id: str | None
) -> None:
    """Insert pending rows in bulk; an identifier already in the ledger is left as it is."""
    now = utcnow()
    rows = [
        {
            "organization_id": r.organization_id,
            "event_name": event_name,
            "value": r.value,
            "identifier": r.identifier,
            "kind": r.kind,
            "period_hour": r.period_hour,
            "stripe_customer_id": r.customer,
            "measured_at": r.measured_at,
            "status": MeterReport.PENDING,
            "attempts": 0,
            "job_id": job_id,
            "created_at": now,
            "updated_at": now,
        }
        for r in reports
    ]
    if not rows:
        return
    with database.atomic():
        # A concurrent run of the same job may insert the same identifiers: first one wins,
        # and both then send the stored value, so Stripe sees one event.
        MeterReport.insert_many(rows).on_conflict_ignore().execute()


def event_for(row: MeterReport) -> MeterEvent:
    """The Stripe event a ledger row stands for (the same on every attempt)."""
    return MeterEvent(
        identifier=row.identifier,
        event_name=row.event_name,
        customer=row.stripe_customer_id,
        value=int(row.value),
        timestamp=int((row.measured_at - datetime(1970, 1, 1)) / timedelta(seconds=1)),
    )


def apply_attempt(row: MeterReport, result: SendResult, *, final_attempt: bool) -> str:
    """Set one attempt's outcome on the row (not saved) and return its new status."""
    now = utcnow()
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
        row.last_error = result.error[:_ERROR_LIMIT]
    if result.request_id:
        row.stripe_request_id = result.request_id
    return str(row.status)


_UPDATE_BATCH = 500


def record_attempts(
    database: peewee.Database,
    rows: Sequence[MeterReport],
    results: Sequence[SendResult],
    *,
    final_attempt: bool,
) -> list[str]:
    """Write a batch of attempts in one transaction.

    Delivered rows (nearly all of them) share one UPDATE per 500 rows; rows that failed carry
    their own error and are saved one by one.
    """
    statuses = [
        apply_attempt(row, result, final_attempt=final_attempt)
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
            row.save()
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
