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

The search over the whole fleet and window (gaps.py, the *full scan*) runs at start-up,
for backfill, and once a day; the hourly catch-up otherwise checks only what is new,
remembering the hours verified complete (completeness.py).

An hour counts as covered when its row is sent, rejected (Stripe's answer is final) or
pending and touched recently enough that a live job may still own it; a failed row, and a
pending row older than any job and its retries can keep it (``recovery.stale_after``), are
sent again.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from rq import Queue

from ..defaults import CATCHUP_TIMEOUT_SECONDS, ENQUEUE_BATCH
from ..hours import check_reportable_hour, format_hour, hour_start
from ..keys import catchup_found_key
from ..logs import get_logger
from ..models import utcnow
from ..settings import Settings
from . import completeness
from .envelope import JobRun, run_job
from .gaps import DONE, catchup_window, find_gaps, hours_between, iter_gaps
from .queue import enqueue_batch, job_options, make_queue
from .recovery import stale_after
from .report import process_meter_report

log = get_logger(__name__)

# The search lives in gaps.py; its names stay importable from here (backfill, explain, tests).
__all__ = [
    "DONE",
    "CatchupFinding",
    "backfill_window",
    "catch_up",
    "catchup_window",
    "enqueue_catch_up",
    "find_gaps",
    "hours_between",
    "iter_gaps",
    "last_finding",
    "store_finding",
]


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
        # The marks noted before stay valid: the next check reads only the rows after them.
        noted = completeness.load(runtime.redis, settings)
        record = completeness.Record(began, verified, noted.marks if noted else [])
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
    # A full scan reads the ledger of the whole fleet over the window (docs/performance.md:
    # 56 s for 1,000,000 organizations when nothing is missing; gaps spread widely cost
    # about 4x); the hourly check, which reads only what is new, a few seconds.
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
