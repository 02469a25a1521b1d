"""Catch-up: hours with no delivered hourly report are reported with the count as it was then.

Workers down for a while, a fan-out that failed, Redis losing its queued jobs: each leaves
hours with no hourly ledger row for some organizations. The scheduler queues a catch-up when
it starts (or finds its registrations gone) and the hourly fan-out queues one every hour; it
looks back ``SENSORMETER_CATCHUP_HOURS`` (never beyond Stripe's 35 days). Which hours an
organization owes comes from the billable history (ledger/history.py) where it has recorded
the organization: the hours it was billable, even if it is canceled since, and no others.
Before that (a database upgraded from schema 2), an organization billable now owes the hours
since the first one sensormeter reported for it, so a first deployment bills no history.
``sensormeter backfill`` runs the same search on demand.

An hour counts as covered when its row is sent, rejected (Stripe's answer is final) or
pending and touched recently enough that a live job may still own it; a failed row, and a
pending row older than any job and its retries can keep it (``recovery.stale_after``), are
sent again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee
import redis
from rq import Queue

from ..defaults import CATCHUP_TIMEOUT_SECONDS, ENQUEUE_BATCH
from ..hours import check_reportable_hour, format_hour, hour_start
from ..keys import catchup_found_key
from ..ledger import history, past
from ..logs import get_logger
from ..models import MeterReport, tuples, utcnow
from ..settings import Settings
from ..usage import UsageSource, iter_billable_chunks
from . import completeness
from .envelope import JobRun, run_job
from .queue import enqueue_batch, job_options, make_queue
from .recovery import stale_after
from .report import process_meter_report

log = get_logger(__name__)

# Decided hours: sent or rejected (Stripe's answer is final), held (a recount or a release
# sends it), quarantined (a release sends it) or superseded. Catch-up could not send them, and
# counting them as missing would report the hour unreported forever.
DONE = (
    MeterReport.SENT,
    MeterReport.REJECTED,
    MeterReport.HELD,
    MeterReport.QUARANTINED,
    MeterReport.SUPERSEDED,
)


def hours_between(first: datetime, last: datetime) -> list[datetime]:
    """Every UTC hour from ``first`` to ``last``, both included."""
    hours, hour = [], hour_start(first)
    while hour <= last:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def catchup_window(settings: Settings, now: datetime, *, include_current: bool) -> list[datetime]:
    """The hours catch-up looks at: the last ``catchup_hours``, the current one optionally."""
    current = hour_start(now)
    last = current if include_current else current - timedelta(hours=1)
    first = current - timedelta(hours=settings.catchup_hours)
    return hours_between(first, last) if settings.catchup_hours else []


def _as_datetime(value: Any) -> datetime:
    # SQLite hands aggregates back as text; PostgreSQL as datetimes.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def find_gaps(
    event_name: str,
    organization_ids: Sequence[str],
    hours: Sequence[datetime],
    stale_before: datetime | None = None,
    *,
    billable_now: Collection[str] | None = None,
    unsettled: set[datetime] | None = None,
) -> dict[datetime, list[str]]:
    """Hours (among ``hours``) each organization lacks a covered hourly report for.

    A pending row covers its hour only while it was updated at or after ``stale_before``
    (always, when None). One aggregate query for the chunk; only organizations it shows
    incomplete are read in detail.

    Which hours an organization owes: where the billable history answers for it
    (:meth:`past.Spans.knows`), the hours of its intervals, and no other; elsewhere, the
    hours since the first one sensormeter reported for it, if it is billable now
    (``billable_now``; None: all are). An organization with neither is never caught up
    (first deployment). The history is read for the incomplete organizations only.

    With ``unsettled`` (a set), the hours where some organization has a gap or a row not yet
    decided (a pending one: DONE says which are) are added to it, so that the others can be
    recorded as verified complete (tasks/completeness.py); organizations with a pending row
    are then read in detail too.
    """
    if not organization_ids or not hours:
        return {}
    first, last = hours[0], hours[-1]
    org = MeterReport.organization_id
    hourly = (
        (MeterReport.kind == MeterReport.HOURLY)
        & (MeterReport.event_name == event_name)
        & org.in_(list(organization_ids))
    )
    in_window = hourly & (MeterReport.period_hour >= first) & (MeterReport.period_hour <= last)
    live = MeterReport.status == MeterReport.PENDING
    if stale_before is not None:
        live &= MeterReport.updated_at >= stale_before
    is_covered = MeterReport.status.in_(DONE) | live
    covered = peewee.Case(None, [(is_covered, 1)], 0)
    decided = peewee.Case(None, [(MeterReport.status.in_(DONE), 1)], 0)
    summary = tuples(
        MeterReport.select(
            org,
            peewee.fn.MIN(MeterReport.period_hour),
            peewee.fn.SUM(covered),
            peewee.fn.SUM(decided),
        )
        .where(in_window)
        .group_by(org)
    )
    complete, settled = set(), set()
    for o, earliest, n, d in summary:
        if _as_datetime(earliest) == first:
            if n == len(hours):
                complete.add(o)
            if d == len(hours):
                settled.add(o)
    suspects = [o for o in organization_ids if o not in complete]
    detailed = suspects
    if unsettled is not None:
        detailed = [o for o in organization_ids if o not in settled]
    if not detailed:
        return {}
    seen: dict[str, dict[datetime, bool]] = defaultdict(dict)
    for o, hour, done, final in tuples(
        MeterReport.select(org, MeterReport.period_hour, covered, decided).where(
            in_window & org.in_(detailed)
        )
    ):
        seen[o][_as_datetime(hour)] = bool(done)
        if unsettled is not None and not final:
            unsettled.add(_as_datetime(hour))
    if not suspects:
        return {}
    earlier = {
        o
        for (o,) in tuples(
            MeterReport.select(org)
            .where(hourly & org.in_(suspects) & (MeterReport.period_hour < first))
            .group_by(org)
        )
    }
    spans = past.spans(suspects, first, last)
    gaps: dict[datetime, list[str]] = defaultdict(list)
    for o in suspects:
        floor: datetime | None = None
        if billable_now is None or o in billable_now:
            if o in earlier:
                floor = first
            elif seen[o]:
                floor = min(seen[o])  # the first hour sensormeter reported for it
        for hour in hours:
            if seen[o].get(hour):
                continue
            if spans.knows(o, hour):
                owed = spans.billable(o, hour)
            else:
                # Never reported: a first deployment does not bill history.
                owed = floor is not None and hour >= floor
            if owed:
                gaps[hour].append(o)
                if unsettled is not None:
                    unsettled.add(hour)
    return dict(gaps)


def _chunks(
    source: UsageSource,
    settings: Settings,
    first: datetime,
    last: datetime,
    organization_ids: Sequence[str] | None,
) -> Iterator[tuple[list[str], set[str]]]:
    """Chunks of organizations to search, each with those of them billable now.

    The organizations billable now, then those the billable history has billable at some
    hour of first..last that are not billable now (canceled since, say).
    """
    if organization_ids is not None:
        if organization_ids:
            yield list(organization_ids), set(source.billable_customers(list(organization_ids)))
        return
    for chunk in iter_billable_chunks(source, settings.chunk_size):
        yield chunk, set(chunk)
    after: str | None = None
    while True:
        chunk = history.organizations_between(first, last, after, settings.chunk_size)
        if not chunk:
            return
        now = source.billable_customers(chunk)
        gone = [o for o in chunk if o not in now]
        if gone:
            yield gone, set()
        if len(chunk) < settings.chunk_size:
            return
        after = chunk[-1]


def iter_gaps(
    source: UsageSource,
    settings: Settings,
    hours: Sequence[datetime],
    organization_ids: Sequence[str] | None = None,
    unsettled: set[datetime] | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """Yield (hour label, organizations) to report, chunk by chunk.

    The organizations billable now and those the billable history has billable in the
    window (all of ``organization_ids``, when given); see :func:`find_gaps` for which hours
    each one owes, and for ``unsettled``.
    """
    if not hours:
        return
    stale_before = utcnow() - stale_after(settings)
    for chunk, billable_now in _chunks(source, settings, hours[0], hours[-1], organization_ids):
        gaps = find_gaps(
            settings.meter_event_name,
            chunk,
            hours,
            stale_before,
            billable_now=billable_now,
            unsettled=unsettled,
        )
        for hour in sorted(gaps):
            yield format_hour(hour), gaps[hour]


def catch_up(include_current: bool = False) -> dict[str, Any]:
    """RQ job: queue a report job for every (hour, chunk) that lacks delivered reports."""
    result: dict[str, Any] = run_job(
        "catch_up", lambda run: _catch_up(run, include_current), include_current=include_current
    )
    return result


def _catch_up(run: JobRun, include_current: bool) -> dict[str, Any]:
    runtime = run.runtime
    settings = runtime.settings
    now = utcnow()
    hours = catchup_window(settings, now, include_current=include_current)
    queue = make_queue(settings, runtime.redis)
    batch: list[Any] = []
    jobs = reports = 0
    began = time.time()
    mark = completeness.max_ledger_id(runtime.database)
    record = None if include_current else completeness.load(runtime.redis, settings)
    check = None
    if record is not None and _incremental_allowed(settings, record, now, began):
        stale_before = now - stale_after(settings)
        check = completeness.IncrementalCheck(
            runtime.source, settings, runtime.database, record, hours, stale_before
        )
        found = check.gaps()
    else:
        unsettled: set[datetime] = set()
        found = iter_gaps(runtime.source, settings, hours, unsettled=unsettled)

    for label, orgs in found:
        batch.append(
            Queue.prepare_data(
                process_meter_report,
                args=(orgs,),
                kwargs={"hour": label},
                job_id=f"catchup-{label.replace(':', '')}-{uuid.uuid4().hex[:12]}",
                description=f"catch-up {label}, {len(orgs)} organizations",
                **job_options(settings, "timeout"),
            )
        )
        jobs += 1
        reports += len(orgs)
        log.warning("catchup.missing_hour", hour=label, organizations=len(orgs))
        if len(batch) >= ENQUEUE_BATCH:
            enqueue_batch(queue, batch)
            batch.clear()
    enqueue_batch(queue, batch)
    current = hour_start(now)
    if check is not None and record is not None:
        record.verified = check.verified
        scan = "incremental"
        checked = len(check.checked)
    else:
        # Only hours a complete run marked can be verified: elsewhere the history may still
        # bridge an interval over the hour, and so add an organization that owes it.
        ended = [h for h in hours if h < current]
        verified = completeness.marked_hours(ended) - unsettled
        record = completeness.Record(began, verified)
        scan, checked = "full", len(verified)
    record.note(began, mark)
    completeness.save(runtime.redis, settings, record, hours)
    window = f"{format_hour(hours[0])}..{format_hour(hours[-1])}" if hours else ""
    store_finding(runtime.redis, settings.queue_name, CatchupFinding(reports, window, time.time()))
    log.info(
        "catchup.completed",
        window=window,
        scan=scan,
        jobs=jobs,
        reports=reports,
        verified_hours=len(record.verified),
        newly_verified=checked,
    )
    return {"window": window, "jobs": jobs, "reports": reports, "scan": scan}


def _incremental_allowed(
    settings: Settings, record: completeness.Record, now: datetime, began: float
) -> bool:
    """Whether the hourly catch-up may read only what is new (else it scans in full).

    Not when the last full scan is older than the safety net's period, nor when the current
    hour is not marked: then the fan-out has not recorded every organization billable now,
    and one the history does not know would be missed.
    """
    if began - record.full_at >= completeness.full_scan_every(settings).total_seconds():
        return False
    return bool(completeness.marked_hours([hour_start(now)]))


@dataclass(frozen=True)
class CatchupFinding:
    """What a completed catch-up found, kept for ``sensormeter metrics`` to read cheaply."""

    missing: int  # billable organization-hours of the window with no covered hourly report
    window: str  # first..last hour looked at
    checked_at: float  # unix time the scan completed


def store_finding(connection: redis.Redis, queue_name: str, finding: CatchupFinding) -> None:
    """Keep the finding in Redis (a metrics scrape must not scan the fleet's ledger itself)."""
    connection.set(catchup_found_key(queue_name), json.dumps(asdict(finding)))


def last_finding(connection: redis.Redis, queue_name: str) -> CatchupFinding | None:
    """The finding of the last completed catch-up, or None (none yet, or Redis lost it)."""
    raw = connection.get(catchup_found_key(queue_name))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return CatchupFinding(int(data["missing"]), str(data["window"]), float(data["checked_at"]))
    except (ValueError, KeyError, TypeError):
        return None  # written by another release: the next catch-up replaces it


def enqueue_catch_up(
    settings: Settings, connection: redis.Redis, *, include_current: bool
) -> str | None:
    """Queue a catch-up job (None when catch-up is turned off); returns its job id."""
    if not settings.catchup_hours:
        return None
    options = job_options(settings)
    # It scans the ledger of the whole fleet over the window (docs/performance.md: 56 s for
    # 1,000,000 organizations when nothing is missing; gaps spread widely cost about 4x).
    options["job_timeout"] = max(settings.job_timeout_seconds, CATCHUP_TIMEOUT_SECONDS)
    job = make_queue(settings, connection).enqueue(
        catch_up,
        include_current=include_current,
        job_id=f"catchup-{uuid.uuid4().hex}",
        description="catch up hours without delivered hourly reports",
        **options,
    )
    return str(job.id)


def backfill_window(since: datetime, until: datetime, now: datetime) -> list[datetime]:
    """Hours for ``backfill``: since..until, refusing the future and Stripe's 35-day limit."""
    check_reportable_hour(format_hour(since), now)
    check_reportable_hour(format_hour(until), now)
    if since > until:
        raise ValueError(f"--since {format_hour(since)} is after --until {format_hour(until)}")
    return hours_between(since, until)
