"""The processor: count a chunk of organizations, record the reports, send them to Stripe."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from . import ledger
from .errors import ReportsFailed, RetryableReportError
from .ledger import LedgerRow, NewReport
from .meter import MeterClient
from .models import MeterReport, utcnow
from .usage import UsageSource

log = structlog.get_logger("sensormeter.reporter")

# Rows in these states are (re)sent when their job runs; sent and rejected rows never are.
_SENDABLE = (MeterReport.PENDING, MeterReport.FAILED)


@dataclass
class ChunkResult:
    """What one run of the processor did, per organization."""

    values: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    send_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def retryable(self) -> list[str]:
        """Organizations whose report met a transient failure and is still pending."""
        return sorted(o for o, s in self.outcomes.items() if s == MeterReport.PENDING)

    @property
    def failed(self) -> list[str]:
        """Organizations whose report failed in this run after its last retry."""
        return sorted(
            o for o, s in self.outcomes.items() if s == MeterReport.FAILED and o in self.errors
        )

    def raise_for_retry(self) -> None:
        """Raise so RQ retries the job (transient failures) or records it failed (retries spent)."""
        if self.retryable:
            raise RetryableReportError(self.retryable, self.errors[self.retryable[0]])
        if self.failed:
            raise ReportsFailed(self.failed, self.errors[self.failed[0]])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the RQ job's result)."""
        return {
            "values": self.values,
            "outcomes": self.outcomes,
            "skipped": self.skipped,
            "counts": dict(Counter(self.outcomes.values())),
            "send_seconds": round(self.send_seconds, 4),
            # Everything but sending: the ledger and count queries, bookkeeping.
            "db_seconds": round(self.total_seconds - self.send_seconds, 4),
        }


def _count_problem(count: object) -> str | None:
    """Why a count from the usage source cannot be reported, or None when it can."""
    if isinstance(count, bool) or not isinstance(count, int):
        return f"invalid count from the usage source: {count!r} is not a whole number"
    if count < 0:
        return f"invalid count from the usage source: {count} is negative"
    if count >= 10**15:
        return f"invalid count from the usage source: {count} is implausibly large"
    return None


class Reporter:
    """Counts, records and sends the reports of one chunk; idempotent by identifier."""

    def __init__(self, source: UsageSource, meter: MeterClient, event_name: str) -> None:
        self.source = source
        self.meter = meter
        self.event_name = event_name

    def identifiers(
        self, organization_ids: Sequence[str], hour: str | None, request_id: str | None
    ) -> dict[str, str]:
        """Each organization's identifier for this report (fixed before any attempt)."""
        if hour is not None:
            period = ledger.parse_hour(hour)
            return {
                o: ledger.hourly_identifier(o, self.event_name, period) for o in organization_ids
            }
        if request_id is None:
            raise ValueError("a report needs an hour (hourly) or a request id (on demand)")
        return {
            o: ledger.on_demand_identifier(o, self.event_name, request_id) for o in organization_ids
        }

    def _count(
        self, organization_ids: list[str], deadline: datetime | None
    ) -> tuple[datetime, dict[str, int]]:
        """The counts and the moment they stand for.

        Normally the count is read now, when the job runs, not when it was queued. A report
        that must land by a ``deadline`` already past (the last second of a delayed hourly
        report's hour, or of a billing period) is stamped at the deadline instead, with the
        count as of that moment where the source keeps history (``count_active_sensors_at``).
        """
        now = utcnow().replace(microsecond=0)
        if deadline is not None and now > deadline:
            historical = getattr(self.source, "count_active_sensors_at", None)
            if historical is not None:
                return deadline, historical(organization_ids, deadline)
            return deadline, self.source.count_active_sensors(organization_ids)
        return now, self.source.count_active_sensors(organization_ids)

    def prepare(
        self,
        database: Any,
        organization_ids: Sequence[str],
        hour: str | None,
        request_id: str | None,
        job_id: str | None,
        deadline: datetime | None = None,
        kind: str | None = None,
    ) -> tuple[dict[str, LedgerRow], ChunkResult]:
        """Create pending rows for organizations not yet in the ledger; return all their rows."""
        if hour is not None:
            deadline = ledger.parse_hour(hour) + timedelta(hours=1) - timedelta(seconds=1)
            kind = MeterReport.HOURLY
        kind = kind or MeterReport.ON_DEMAND
        result = ChunkResult()
        identifiers = self.identifiers(organization_ids, hour, request_id)
        rows = ledger.find(list(identifiers.values()))
        missing = [o for o in organization_ids if identifiers[o] not in rows]
        if missing:
            customers = self.source.billable_customers(missing)
            for org in missing:
                if org not in customers:
                    result.skipped[org] = self.source.explain_not_billable(org)
            billable = [o for o in missing if o in customers]
            measured_at, counts = self._count(billable, deadline)
            for org in billable:
                problem = _count_problem(counts.get(org, 0))
                if problem:
                    # A host's source gave something no meter may be sent: log it, bill nothing.
                    result.skipped[org] = problem
            billable = [o for o in billable if o not in result.skipped]
            period = ledger.parse_hour(hour) if hour is not None else None
            ledger.create_pending(
                database,
                (
                    NewReport(
                        organization_id=o,
                        identifier=identifiers[o],
                        customer=customers[o],
                        value=counts.get(o, 0),
                        measured_at=measured_at,
                        kind=kind,
                        period_hour=period,
                    )
                    for o in billable
                ),
                self.event_name,
                job_id,
            )
            rows.update(ledger.find([identifiers[o] for o in billable]))
        by_org = {row.organization_id: row for row in rows.values()}
        return by_org, result

    def run(
        self,
        database: Any,
        organization_ids: Sequence[str],
        *,
        hour: str | None = None,
        request_id: str | None = None,
        job_id: str | None = None,
        final_attempt: bool = True,
        deadline: datetime | None = None,
        kind: str | None = None,
    ) -> ChunkResult:
        """Report every organization of the chunk once; the result says what is left to retry.

        ``deadline`` (naive UTC) is the last moment the report may stand for; hourly reports
        get their hour's last second.
        """
        started = time.perf_counter()
        rows, result = self.prepare(
            database, organization_ids, hour, request_id, job_id, deadline, kind
        )
        for org, reason in result.skipped.items():
            log.info("report.skipped", organization_id=org, reason=reason, job_id=job_id)
        self.send_rows(database, rows, result, job_id=job_id, final_attempt=final_attempt)
        result.total_seconds = time.perf_counter() - started
        return result

    def resend(
        self,
        database: Any,
        report_ids: Sequence[int],
        *,
        job_id: str | None = None,
        final_attempt: bool = True,
    ) -> ChunkResult:
        """Send existing ledger rows again, with their stored identifier and value.

        For failed rows and pending rows whose job was lost; the result is keyed by identifier.
        """
        started = time.perf_counter()
        result = ChunkResult()
        rows = {row.identifier: row for row in ledger.find_by_ids(report_ids)}
        self.send_rows(database, rows, result, job_id=job_id, final_attempt=final_attempt)
        result.total_seconds = time.perf_counter() - started
        return result

    def send_rows(
        self,
        database: Any,
        rows: dict[str, LedgerRow],
        result: ChunkResult,
        *,
        job_id: str | None,
        final_attempt: bool,
    ) -> None:
        """Send the sendable rows (pending or failed) and record each attempt in the ledger."""
        to_send: list[tuple[str, LedgerRow]] = []
        for key, row in rows.items():
            result.values[key] = int(row.value)
            if row.status in _SENDABLE:
                to_send.append((key, row))
            else:
                result.outcomes[key] = str(row.status)  # Done by an earlier run: nothing to send.
        sending = time.perf_counter()
        attempts = self.meter.send_many([ledger.event_for(row) for _, row in to_send])
        result.send_seconds += time.perf_counter() - sending
        statuses = ledger.record_attempts(
            database, [row for _, row in to_send], attempts, final_attempt=final_attempt
        )
        for (key, row), attempt, status in zip(to_send, attempts, statuses, strict=True):
            result.outcomes[key] = status
            if attempt.error and not attempt.outcome.delivered:
                result.errors[key] = attempt.error
            log.info(
                "report",
                organization_id=row.organization_id,
                value=int(row.value),
                identifier=row.identifier,
                outcome=attempt.outcome.value,
                status=status,
                attempts=int(row.attempts),
                stripe_request_id=attempt.request_id,
                error=attempt.error if not attempt.outcome.delivered else None,
                job_id=job_id,
            )
