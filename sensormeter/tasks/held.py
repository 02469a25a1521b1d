"""Held reports leave here: recounted after a short wait (a scheduled job) or released.

Both paths end the same way: a row overtaken by a newer delivery for its customer is marked
``superseded``; the others become ``pending`` with the decision in their evidence (the guard
then lets them pass) and are sent at once through the reporter, each attempt in the ledger.
What Stripe did not take yet is queued as an ordinary resend job, with RQ's retries. All the
state is in the ledger: a Redis flush loses nothing, the next minute's job finds the rows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import ledger
from ..guard import (
    HeldRow,
    Thresholds,
    by_event,
    held_rows,
    judge,
    newest_deliveries,
    release,
    replace_reading,
    supersede,
)
from ..hours import format_hour
from ..logs import get_logger
from ..models import MeterReport, utcnow
from ..report import Report
from ..runtime import Runtime
from .envelope import JobRun, run_job
from .period_close import period_end_of
from .recovery import enqueue_resend

log = get_logger(__name__)

CONFIRMED, BACK_TO_NORMAL = "confirmed", "back_to_normal"
# How long one run of the recount job may go on; the next minute's run takes the rest.
RECOUNT_BUDGET = timedelta(minutes=4)


def period_end(row: HeldRow) -> datetime | None:
    """The end of the billing period a held closing report stands for (None for others)."""
    if row.kind != MeterReport.PERIOD_CLOSE:
        return None
    first = row.evidence.get("reading", {}).get("measured_at")
    stamp = datetime.fromisoformat(first) if first else row.measured_at
    return period_end_of(row.organization_id, row.event_name, row.identifier, stamp)


def label(row: HeldRow) -> str:
    """What the report stands for, for people: an hour, a period's close, or a moment."""
    if row.kind == MeterReport.HOURLY and row.period_hour is not None:
        return f"hour {format_hour(row.period_hour)}"
    end = period_end(row)
    if end is not None:
        return f"closing report of the period ending {end:%Y-%m-%d %H:%M} UTC"
    return f"report of {row.measured_at:%Y-%m-%d %H:%M:%S} UTC"


def deadline(row: HeldRow) -> datetime | None:
    """The last moment the report may stand for (as its Report's deadline); None on demand."""
    if row.kind == MeterReport.HOURLY and row.period_hour is not None:
        return Report.hourly(row.period_hour).deadline
    end = period_end(row)
    return None if end is None else Report.period_close(end).deadline


@dataclass
class Decided:
    """What became of held rows: sent, superseded, still to be sent (queued), or refused."""

    rows: list[HeldRow] = field(default_factory=list)  # every row decided, shared parts too
    statuses: dict[int, str] = field(default_factory=dict)  # row id -> ledger status now
    superseded_by: dict[int, datetime] = field(default_factory=dict)  # row id -> newer stamp
    errors: dict[int, str] = field(default_factory=dict)
    request_ids: dict[int, str | None] = field(default_factory=dict)
    queued_jobs: int = 0


def send_now(
    runtime: Runtime, report_ids: Sequence[int], decided: Decided, job_id: str | None
) -> None:
    """Send sendable rows now; queue a resend job (RQ retries) for what Stripe did not take."""
    if not report_ids:
        return
    runtime.reporter().resend(runtime.database, report_ids, job_id=job_id, final_attempt=False)
    rows = ledger.find_by_ids(report_ids)
    for row in rows:
        decided.statuses[row.id] = str(row.status)
        decided.request_ids[row.id] = row.stripe_request_id
        if row.status != MeterReport.SENT and row.last_error:
            decided.errors[row.id] = row.last_error
    waiting = [row.id for row in rows if row.status == MeterReport.PENDING]
    if waiting:
        decided.queued_jobs = enqueue_resend(runtime.settings, runtime.redis, waiting)


def _overtaken(
    database: Any, events: dict[str, list[HeldRow]], stamps: dict[str, datetime], decided: Decided
) -> dict[str, list[HeldRow]]:
    """Mark the events a newer delivery overtook superseded; return the others."""
    newest = newest_deliveries(events)
    rest = {}
    for key, parts in events.items():
        newer = newest.get(key)
        if newer is not None and newer > stamps[key]:
            for row_id in supersede(database, parts, newer):
                decided.statuses[row_id] = MeterReport.SUPERSEDED
                decided.superseded_by[row_id] = newer
            log.warning(
                "report.superseded",
                identifier=key,
                organizations=sorted(row.organization_id for row in parts),
                measured_at=stamps[key].isoformat(),
                newer_delivery=newer.isoformat(),
            )
        else:
            rest[key] = parts
    return rest


def release_held(
    runtime: Runtime, rows: Sequence[HeldRow], by: str, job_id: str | None = None
) -> Decided:
    """Send held rows as they are (their whole events), unless a newer delivery overtook them."""
    decided = Decided()
    events = by_event(rows)
    decided.rows = [row for parts in events.values() for row in parts]
    stamps = {key: max(row.measured_at for row in parts) for key, parts in events.items()}
    sendable: list[int] = []
    for key, parts in _overtaken(runtime.database, events, stamps, decided).items():
        sendable += release(runtime.database, parts, by)
        log.warning(
            "report.released",
            identifier=key,
            by=by,
            values={r.organization_id: r.value for r in parts},
        )
    send_now(runtime, sendable, decided, job_id)
    return decided


def _count(
    runtime: Runtime, orgs: list[str], until: datetime | None, now: datetime
) -> tuple[datetime, dict[str, int]]:
    """The counts now, or as of ``until`` once it is past (as the reporter counts a late report)."""
    source = runtime.source
    if until is not None and now > until:
        historical = getattr(source, "count_active_sensors_at", None)
        counts = (
            historical(orgs, until) if historical is not None else source.count_active_sensors(orgs)
        )
        return until, dict(counts)
    return now, dict(source.count_active_sensors(orgs))


def recount(runtime: Runtime, rows: Sequence[HeldRow], job_id: str | None = None) -> Decided:
    """Count held rows again and send the new reading: confirmed or back to normal."""
    decided = Decided()
    events = by_event(rows)
    decided.rows = [row for parts in events.values() for row in parts]
    now = utcnow().replace(microsecond=0)
    groups: dict[datetime | None, list[str]] = defaultdict(list)
    for parts in events.values():
        groups[deadline(parts[0])].extend(row.organization_id for row in parts)
    readings = {
        until: _count(runtime, sorted(set(orgs)), until, now) for until, orgs in groups.items()
    }
    stamps = {key: readings[deadline(parts[0])][0] for key, parts in events.items()}
    thresholds = Thresholds(runtime.settings.guard_min_count, runtime.settings.guard_factor)
    sendable: list[int] = []
    for key, parts in _overtaken(runtime.database, events, stamps, decided).items():
        measured_at, counts = readings[deadline(parts[0])]
        mine = {row.organization_id: counts.get(row.organization_id, 0) for row in parts}
        bad = [v for v in mine.values() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            log.error("report.recount_invalid", identifier=key, counts=repr(mine))
            continue
        tripped = parts[0].evidence.get("organization_id", parts[0].organization_id)
        first = next((row for row in parts if row.organization_id == tripped), parts[0])
        outcome = (
            CONFIRMED
            if judge(mine[first.organization_id], first.previous, thresholds)
            else BACK_TO_NORMAL
        )
        sendable += replace_reading(runtime.database, parts, mine, measured_at, outcome)
        log.warning(
            "report.recounted",
            identifier=key,
            organization_id=first.organization_id,
            first_value=first.value,
            value=mine[first.organization_id],
            measured_at=measured_at.isoformat(),
            outcome=outcome,
            job_id=job_id,
        )
    send_now(runtime, sendable, decided, job_id)
    return decided


def recount_held_reports() -> dict[str, Any]:
    """RQ job (every minute): recount the guard's held reports older than the wait, send them."""
    result: dict[str, Any] = run_job(
        "recount_held_reports", _recount_due, idle=lambda found: not found["held"]
    )
    return result


def _recount_due(run: JobRun) -> dict[str, Any]:
    """Recount the due held rows a chunk at a time, for at most RECOUNT_BUDGET a run."""
    settings = run.runtime.settings
    if not settings.guard_recount_minutes:
        return {"held": 0}
    cutoff = utcnow() - timedelta(minutes=settings.guard_recount_minutes)
    started = time.monotonic()
    tried: set[int] = set()
    counts: dict[str, int] = defaultdict(int)
    queued = 0
    # A fleet-wide glitch may hold every report of an hour: recount them a chunk at a time,
    # and leave what the budget does not reach to the next minute's run.
    while time.monotonic() - started < RECOUNT_BUDGET.total_seconds():
        due = held_rows(held_before=cutoff, limit=settings.chunk_size)
        fresh = [row for row in due if row.by_guard and row.id not in tried]
        if not fresh:
            break
        tried.update(row.id for row in due)
        decided = recount(run.runtime, fresh, run.job_id)
        queued += decided.queued_jobs
        for status in decided.statuses.values():
            counts[status] += 1
    if not tried:
        return {"held": 0}
    return {"held": len(tried), "outcomes": dict(counts), "queued_jobs": queued}
