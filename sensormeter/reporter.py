"""The processor: count a chunk of organizations, record the reports, send them to Stripe."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from . import ledger
from .errors import ReportsFailed, RetryableReportError
from .gate import Gate
from .ledger import LedgerRow, NewReport, past
from .logs import get_logger
from .meters.base import MeterClient, MeterEvent, SendResult, classify_error
from .models import MeterReport, utcnow
from .report import Report
from .usage import UsageSource

log = get_logger(__name__)

# Rows in these states are (re)sent when their job runs; sent and rejected rows never are.
_SENDABLE = (MeterReport.PENDING, MeterReport.FAILED)


@dataclass
class ChunkResult:
    """What one run of the processor did, per organization."""

    values: dict[str, int] = field(default_factory=dict)
    # The ledger status of each row after the run ("outcome" is an attempt's, in meters/base.py).
    statuses: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    send_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def retryable(self) -> list[str]:
        """Organizations whose report met a transient failure and is still pending."""
        return sorted(o for o, s in self.statuses.items() if s == MeterReport.PENDING)

    @property
    def failed(self) -> list[str]:
        """Organizations whose report failed in this run after its last retry."""
        return sorted(
            o for o, s in self.statuses.items() if s == MeterReport.FAILED and o in self.errors
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
            "outcomes": self.statuses,  # the job result keeps its documented key
            "skipped": self.skipped,
            "counts": dict(Counter(self.statuses.values())),
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

    def __init__(
        self,
        source: UsageSource,
        meter: MeterClient,
        event_name: str,
        gates: Sequence[Gate] = (),
    ) -> None:
        self.source = source
        self.meter = meter
        self.event_name = event_name
        # Asked in order before sending (see gate.py); a row the first keeps back is not
        # shown to the next.
        self.gates = list(gates)

    def identifiers(self, organization_ids: Sequence[str], report: Report) -> dict[str, str]:
        """Each organization's identifier for this report (fixed before any attempt)."""
        return {o: report.identifier(o, self.event_name) for o in organization_ids}

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

    def _customers(
        self, organization_ids: list[str], result: ChunkResult, hour: datetime | None = None
    ) -> dict[str, str]:
        """The billable organizations' customers; the others go to ``result.skipped``.

        For a past ``hour``, the billable history answers for the organizations it had
        recorded by then (billable then, under the customer of then); the usage source
        answers for the others, with who is billable now.
        """
        then = past.billable_then(organization_ids, hour) if hour is not None else None
        asked = [o for o in organization_ids if then is None or o not in then.known]
        customers = self.source.billable_customers(asked) if asked else {}
        if then is not None:
            customers = {**customers, **then.customers}
        usable: dict[str, str] = {}
        for org in organization_ids:
            customer = customers.get(org)
            if customer is None:
                if then is not None and org in then.known:
                    result.skipped[org] = then.reason(org)
                else:
                    result.skipped[org] = self.source.explain_not_billable(org)
            elif not isinstance(customer, str) or not customer.strip():
                # A host's source may hand back "  ": no meter can bill that customer.
                result.skipped[org] = f"blank Stripe customer id {customer!r}"
            else:
                usable[org] = customer
        return usable

    def _members(
        self, customers: dict[str, str], hour: datetime | None = None
    ) -> dict[str, list[str]]:
        """Every billable organization of each customer at hand, ascending.

        Stripe meters aggregate per customer, so organizations sharing one are reported
        together. A host source without ``organizations_of_customers`` only groups the
        organizations at hand (see docs/integrating.md). For a past ``hour``, the billable
        history corrects the source's members to those billable under the customer then.
        """
        members: dict[str, set[str]] = {}
        for org, customer in customers.items():
            members.setdefault(customer, set()).add(org)
        lookup = getattr(self.source, "organizations_of_customers", None)
        if lookup is not None:
            for customer, orgs in lookup(sorted(members)).items():
                if customer in members:
                    members[customer].update(
                        o for o in orgs if ledger.organization_id_problem(o) is None
                    )
        if hour is not None:
            members = past.members_then(members, hour)
        return {customer: sorted(orgs) for customer, orgs in members.items()}

    def prepare(
        self,
        database: Any,
        organization_ids: Sequence[str],
        report: Report,
        job_id: str | None = None,
    ) -> tuple[dict[str, LedgerRow], ChunkResult]:
        """Create pending rows for organizations not yet in the ledger; return all their rows.

        An organization that shares its Stripe customer brings the customer's other billable
        organizations along: their rows are created together, as parts of one event whose
        value is the sum of their counts.
        """
        result = ChunkResult()
        identifiers = self.identifiers(organization_ids, report)
        rows = ledger.find(list(identifiers.values()))
        missing = [o for o in organization_ids if identifiers[o] not in rows]
        if missing:
            hour = past.past_hour(report.hour)  # reported from the billable history
            customers = self._customers(missing, result, hour)
            members = self._members(customers, hour)
            others = [o for group in members.values() for o in group if o not in identifiers]
            identifiers.update(self.identifiers(others, report))
            rows.update(ledger.find([identifiers[o] for o in others]))
            todo = [o for group in members.values() for o in group if identifiers[o] not in rows]
            measured_at, counts = self._count(todo, report.deadline)
            for org in todo:
                problem = _count_problem(counts.get(org, 0))
                if problem:
                    # A host's source gave something no meter may be sent: log it, bill nothing.
                    result.skipped[org] = problem
            reports: list[NewReport] = []
            for customer, group in members.items():
                fresh = [o for o in group if o in todo and o not in result.skipped]
                if not fresh:
                    continue
                base = NewReport("", "", customer, 0, measured_at, report.kind, report.hour)
                if len(group) > 1:
                    base = self._shared_event(
                        base, group, identifiers, rows, counts, result, report
                    )
                reports.extend(
                    replace(
                        base, organization_id=o, identifier=identifiers[o], value=counts.get(o, 0)
                    )
                    for o in fresh
                )
            rows.update(ledger.create_pending(database, reports, self.event_name, job_id))
        by_org = {row.organization_id: row for row in rows.values()}
        return by_org, result

    def _shared_event(
        self,
        base: NewReport,
        group: list[str],
        identifiers: dict[str, str],
        rows: dict[str, LedgerRow],
        counts: dict[str, int],
        result: ChunkResult,
        report: Report,
    ) -> NewReport:
        """The event a shared customer's new rows join: one already fixed, or a new one."""
        earlier = sorted(
            (rows[identifiers[o]] for o in group if identifiers[o] in rows),
            key=lambda row: row.id,
        )
        earlier = [row for row in earlier if row.customer == base.customer]
        if earlier:
            # An earlier run fixed this report's event for the customer (its value and stamp
            # cannot change under its identifier): an organization that joined since goes
            # out in it, and counts in the customer's next report.
            first = earlier[0]
            value = first.value if first.event_value is None else first.event_value
            return replace(
                base,
                event_identifier=ledger.event_key(first),
                event_value=int(value),
                measured_at=first.measured_at,
            )
        total = sum(counts.get(o, 0) for o in group if o not in result.skipped)
        return replace(
            base,
            event_identifier=report.customer_identifier(base.customer, self.event_name),
            event_value=total,
        )

    def run(
        self,
        database: Any,
        organization_ids: Sequence[str],
        report: Report,
        *,
        job_id: str | None = None,
        final_attempt: bool = True,
    ) -> ChunkResult:
        """Report every organization of the chunk once; the result says what is left to retry.

        A run after the report's deadline (a late hourly job, a period already over) is
        stamped at the deadline, with the count as of then (see :meth:`_count`).
        """
        started = time.perf_counter()
        rows, result = self.prepare(database, organization_ids, report, job_id)
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
        """Send the sendable rows (pending or failed) and record each attempt in the ledger.

        Rows that share an event (a shared customer's parts) go out as one event, and its
        answer is recorded on each of them. Whatever goes wrong with one event is that
        event's outcome, recorded with its reason; the others go on.
        """
        to_send: list[tuple[str, LedgerRow]] = []
        for key, row in rows.items():
            result.values[key] = int(row.value)
            if row.status in _SENDABLE:
                to_send.append((key, row))
            else:
                result.statuses[key] = str(row.status)  # Done by an earlier run: nothing to send.
        to_send = self._pass_gates(database, to_send, result, job_id)
        events: dict[str, MeterEvent] = {}
        answers: dict[str, SendResult] = {}
        for _, row in to_send:
            identifier = ledger.event_key(row)
            if identifier in events or identifier in answers:
                continue
            try:
                events[identifier] = ledger.event_for(row)
            except Exception as exc:  # noqa: BLE001 (one malformed row costs only itself)
                answers[identifier] = classify_error(exc)
        sending = time.perf_counter()
        answers.update(zip(events, self._send(list(events.values())), strict=True))
        result.send_seconds += time.perf_counter() - sending
        attempts = [answers[ledger.event_key(row)] for _, row in to_send]
        statuses = ledger.record_attempts(
            database, [row for _, row in to_send], attempts, final_attempt=final_attempt
        )
        for gate in self.gates:
            try:
                gate.observe(database, [row for _, row in to_send], attempts)
            except Exception:  # noqa: BLE001 (the attempts are recorded; a gate costs only itself)
                log.exception("gate.observe_failed", gate=type(gate).__name__, job_id=job_id)
        # Asked once a chunk: a line the level drops still cost structlog's whole call.
        lines = log.isEnabledFor(logging.INFO)
        for (key, row), attempt, status in zip(to_send, attempts, statuses, strict=True):
            result.statuses[key] = status
            if attempt.error and not attempt.outcome.delivered:
                result.errors[key] = attempt.error
            if not lines:
                continue
            log.info(
                "report",
                organization_id=row.organization_id,
                value=int(row.value),
                identifier=row.identifier,
                event_identifier=row.event_identifier,
                event_value=row.event_value,
                outcome=attempt.outcome.value,
                status=status,
                attempts=int(row.attempts),
                stripe_request_id=attempt.request_id,
                error=attempt.error if not attempt.outcome.delivered else None,
                job_id=job_id,
            )

    def _pass_gates(
        self,
        database: Any,
        to_send: list[tuple[str, LedgerRow]],
        result: ChunkResult,
        job_id: str | None,
    ) -> list[tuple[str, LedgerRow]]:
        """The rows every gate lets through; the others get the gate's status and evidence.

        A shared customer's parts go out as one event: a gate that keeps one part back keeps
        back every part of that event, so the event never goes out with a partial sum.
        """
        for gate in self.gates:
            if not to_send:
                break
            try:
                kept = gate.keep_back(database, [row for _, row in to_send])
            except Exception:  # noqa: BLE001 (a broken gate must not stop billing: as before it)
                log.exception("gate.keep_back_failed", gate=type(gate).__name__, job_id=job_id)
                continue
            if not kept:
                continue
            events = {ledger.event_key(row) for _, row in to_send if row.id in kept}
            first = {ledger.event_key(row): kept[row.id] for _, row in to_send if row.id in kept}
            held = [(key, row) for key, row in to_send if ledger.event_key(row) in events]
            decisions = {row.id: first[ledger.event_key(row)] for _, row in held}
            ledger.keep_back(database, {i: (d.status, d.evidence) for i, d in decisions.items()})
            for key, row in held:
                decision = decisions[row.id]
                row.status = decision.status
                result.statuses[key] = decision.status
                # A quarantine said so once when it started (quarantine.started): a report
                # it keeps back every hour afterwards is news for nobody.
                quiet = decision.status == MeterReport.QUARANTINED
                (log.info if quiet else log.warning)(
                    "report.kept_back",
                    organization_id=row.organization_id,
                    identifier=row.identifier,
                    value=int(row.value),
                    status=decision.status,
                    evidence=decision.evidence,
                    job_id=job_id,
                )
            to_send = [(key, row) for key, row in to_send if ledger.event_key(row) not in events]
        return to_send

    def _send(self, events: list[MeterEvent]) -> list[SendResult]:
        """The meter client's answers, one per event, even when the client itself fails."""
        if not events:
            return []
        try:
            answers = self.meter.send_many(events)
            if len(answers) != len(events):
                raise RuntimeError(f"{len(answers)} answers for {len(events)} events")
        except Exception as exc:  # noqa: BLE001 (recorded on every row, never swallowed)
            return [classify_error(exc)] * len(events)
        return list(answers)
