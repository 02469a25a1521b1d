"""The sentences of ``sensormeter explain``: what became of a ledger row, in plain words.

Written for the support engineer who has a customer on the phone, not for the developer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..hours import hour_start
from ..models import MeterReport, Quarantine
from .retention import Reach


@dataclass(frozen=True)
class Reported:
    """One ledger row, as the explanation shows it."""

    id: int
    kind: str
    identifier: str
    event_name: str
    value: int
    status: str
    customer: str
    measured_at: datetime
    sent_at: datetime | None
    stripe_request_id: str | None
    attempts: int
    last_error: str | None
    evidence: dict[str, Any] | None
    event_identifier: str | None
    event_value: int | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts (times in ISO 8601 UTC)."""
        facts = dict(self.__dict__)
        facts["measured_at"] = iso(self.measured_at)
        facts["sent_at"] = iso(self.sent_at)
        return facts


def iso(moment: datetime | None) -> str | None:
    """A naive UTC datetime in ISO 8601 with its offset, or None."""
    return None if moment is None else moment.isoformat() + "+00:00"


def naive(value: Any) -> datetime | None:
    """A column value as a naive UTC datetime (SQLite may hand back text), or None."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def clock(moment: datetime | None, hour: datetime | None = None) -> str:
    """A time of day, with its date when it is not in ``hour``'s day."""
    if moment is None:
        return "?"
    if hour is not None and moment.date() == hour.date():
        return f"{moment:%H:%M:%S}"
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def day_hour(hour: datetime) -> str:
    """An hour as ``2026-11-30 10:00``."""
    return f"{hour:%Y-%m-%d %H:00}"


def _values(readings: Any) -> str:
    """Readings as ``15, 15, 14``: each a number or a ``{"value": ...}`` of the guard's."""
    items = readings if isinstance(readings, list | tuple) else [readings]
    return ", ".join(str(r.get("value") if isinstance(r, dict) else r) for r in items)


def evidence_text(evidence: dict[str, Any] | None) -> str:
    """The evidence of a kept-back row in a few words: the guard's rule and readings, or
    Stripe's code, or else each field."""
    if not evidence:
        return "no evidence recorded"
    if "rule" in evidence or "explanation" in evidence:
        rule, why = evidence.get("rule"), evidence.get("explanation")
        parts = [f"{rule}: {why}" if rule and why else str(rule or why)]
        if evidence.get("previous"):
            parts.append(f"previous {_values(evidence['previous'])}")
        if "reading" in evidence:
            parts.append(f"reading {_values(evidence['reading'])}")
        recount = evidence.get("recount")
        if isinstance(recount, dict) and "value" in recount:
            parts.append(f"recounted {recount['value']} ({recount.get('outcome', '?')})")
        return "; ".join(parts)
    parts = [f"code {evidence['code']}"] if "code" in evidence else []
    for key in sorted(k for k in evidence if k != "code"):
        value = evidence[key]
        shown = _values(value) if isinstance(value, list | tuple) else value
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return "; ".join(parts)


def quarantine_of(
    quarantines: Sequence[Quarantine], customer: str, event_name: str, *, open_only: bool
) -> Quarantine | None:
    """The newest quarantine of the customer or of the meter (open ones only, if asked)."""
    for q in quarantines:  # newest first
        if open_only and q.released_at is not None:
            continue
        if (q.scope == Quarantine.CUSTOMER and q.subject == customer) or (
            q.scope == Quarantine.METER and q.subject == event_name
        ):
            return q
    return None


def quarantine_text(q: Quarantine) -> str:
    """Who is quarantined, since when, and Stripe's code and reason."""
    whom = f"customer {q.subject}" if q.scope == Quarantine.CUSTOMER else f"meter {q.subject}"
    since = naive(q.since)
    when = f" since {since:%Y-%m-%d %H:%M}" if since else ""
    return f"{whom} quarantined{when} ({q.code}: {q.reason})"


def removed_text(reach: Reach) -> str:
    """Why an hour before the first kept hour shows nothing: the retention removed it."""
    first = reach.first_kept
    since = f"{first:%Y-%m-%d %H:00}" if first is not None else "?"
    return (
        f"the ledger keeps {reach.retention_days} days and removed the hours before {since} "
        "(whatever was reported then, and the billable history of then)"
    )


def describe_report(
    report: Reported, quarantines: Sequence[Quarantine], organization_id: str
) -> str:
    """What became of one ledger row, in a sentence for the person who asks."""
    hour = hour_start(report.measured_at)
    what = f"{report.value} sensors"
    if report.event_identifier is not None and report.event_value is not None:
        what += f" (in {report.customer}'s event of {report.event_value})"
    if report.status == MeterReport.SENT:
        request = report.stripe_request_id or "no request id"
        return f"{what}  sent {clock(report.sent_at, hour)} ({request})  {report.identifier}"
    if report.status == MeterReport.PENDING:
        return f"{what}  pending: counted {clock(report.measured_at, hour)}, not delivered yet"
    if report.status == MeterReport.FAILED:
        return f"{what}  failed after {report.attempts} attempt(s): {report.last_error}"
    if report.status == MeterReport.REJECTED:
        return f"{what}  rejected by Stripe for good: {report.last_error}"
    if report.status == MeterReport.HELD:
        return (
            f"{what}  held by the guard, not sent ({evidence_text(report.evidence)}); "
            f"'sensormeter held release {report.id}' sends it as it is"
        )
    if report.status == MeterReport.QUARANTINED:
        q = quarantine_of(quarantines, report.customer, report.event_name, open_only=False)
        why = quarantine_text(q) if q is not None else evidence_text(report.evidence)
        # The row's evidence names the quarantine that kept it back: the customer's or the meter's.
        scope = (report.evidence or {}).get("quarantine") or (q.scope if q else None)
        release = "--meter" if scope == Quarantine.METER else report.customer
        command = f"'sensormeter quarantine release {release}'"
        return f"{what}  kept back, not sent: {why}; {command} sends it"
    if report.status == MeterReport.SUPERSEDED:
        return f"{what}  superseded, never sent: a newer report of {report.customer} went first"
    return f"{what}  {report.status}"


def describe_other(
    report: Reported, quarantines: Sequence[Quarantine], organization_id: str
) -> str:
    """An on-demand or period-close report: its kind, its stamp, what became of it."""
    kind = {MeterReport.PERIOD_CLOSE: "period close", MeterReport.ON_DEMAND: "on demand"}.get(
        report.kind, report.kind
    )
    return (
        f"{kind} ({report.event_name}), stamped {report.measured_at:%H:%M:%S}: "
        + describe_report(report, quarantines, organization_id)
    )
