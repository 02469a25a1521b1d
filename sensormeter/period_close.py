"""Period close: the last value a `last` meter bills is the count at the end of the period.

The hourly report can be up to an hour old when a billing period ends. A scheduled check,
every minute, finds billable subscriptions whose ``current_period_end`` falls within the next
``SENSORMETER_PERIOD_CLOSE_MINUTES`` and queues one report per organization and period end
with the current count, stamped inside the period. Its identifier derives from the period
end, so the repeated checks of those minutes send it once. A period that ended in the last
hour without its close report (the scheduler was down) gets it stamped at the period's last
second with the count as of then.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import structlog
from rq import Queue, get_current_job

from . import ledger
from .jobs import _job_options, _valid_ids, enqueue_batch, make_queue
from .models import MeterReport, utcnow
from .reporter import Reporter
from .runtime import get_runtime

log = structlog.get_logger("sensormeter.period_close")

LOOK_BACK = timedelta(hours=1)
MARKER_TTL = 2 * 3600  # longer than the lead time plus the look-back


def queued_key(queue_name: str, organization_id: str, period_end: datetime) -> str:
    """Redis key marking a close report as queued."""
    return f"sensormeter:{queue_name}:close:{organization_id}:{period_end:%Y%m%dT%H%M%S}"


def close_request_id(period_end: datetime) -> str:
    """The request id of a period-close report: fixed by the period's end."""
    return f"close-{period_end:%Y%m%dT%H%M%S}"


def report_period_close(organization_ids: list[str], period_end: str) -> dict[str, Any]:
    """RQ job: report the current count of organizations whose period ends at ``period_end``."""
    runtime = get_runtime()
    job = get_current_job()
    job_id = job.id if job is not None else None
    end = datetime.fromisoformat(period_end)
    reporter = Reporter(runtime.source, runtime.meter, runtime.settings.meter_event_name)
    with runtime.database.connection_context():
        result = reporter.run(
            runtime.database,
            organization_ids,
            request_id=close_request_id(end),
            job_id=job_id,
            final_attempt=job is None or not job.retries_left,
            deadline=end - timedelta(seconds=1),
            kind=MeterReport.PERIOD_CLOSE,
        )
    log.info(
        "period_close.reported",
        period_end=period_end,
        organizations=len(organization_ids),
        outcomes=result.as_dict()["counts"],
        job_id=job_id,
    )
    result.raise_for_retry()
    return result.as_dict()


def close_periods() -> dict[str, Any]:
    """RQ job (every minute): queue close reports for periods ending within the lead time."""
    runtime = get_runtime()
    settings = runtime.settings
    if not settings.period_close_minutes:
        return {"organizations": 0, "jobs": 0}
    periods_ending = getattr(runtime.source, "periods_ending", None)
    if periods_ending is None:
        log.warning("period_close.unsupported", reason="the usage source has no periods_ending")
        return {"organizations": 0, "jobs": 0}
    now = utcnow()
    with runtime.database.connection_context():
        found: dict[str, datetime] = periods_ending(
            now - LOOK_BACK, now + timedelta(minutes=settings.period_close_minutes)
        )
        # A host's source may hand back a malformed id: skip it (logged), keep the others.
        valid = _valid_ids(list(found), None, runtime.redis, settings.queue_name)
        ending = {org: found[org] for org in valid}
        identifiers = {
            org: ledger.on_demand_identifier(
                org, settings.meter_event_name, close_request_id(end)
            )
            for org, end in ending.items()
        }
        done = ledger.find(list(identifiers.values()))
    todo = sorted(org for org in ending if identifiers[org] not in done)
    # A queued close report has no ledger row until it runs: a marker per organization and
    # period end keeps the next minutes' checks from queueing it again.
    with runtime.redis.pipeline(transaction=False) as pipe:
        for org in todo:
            pipe.set(queued_key(settings.queue_name, org, ending[org]), 1, nx=True, ex=MARKER_TTL)
        fresh = pipe.execute()
    by_end: dict[datetime, list[str]] = defaultdict(list)
    for org, new in zip(todo, fresh, strict=True):
        if new:
            by_end[ending[org]].append(org)
    queue = make_queue(settings, runtime.redis)
    jobs = []
    for end, orgs in by_end.items():
        for i in range(0, len(orgs), settings.chunk_size):
            chunk = orgs[i : i + settings.chunk_size]
            jobs.append(
                Queue.prepare_data(
                    report_period_close,
                    args=(chunk, end.isoformat()),
                    job_id=f"close-{end:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}",
                    description=f"period close {end.isoformat()}, {len(chunk)} organizations",
                    **_job_options(settings, "timeout"),
                )
            )
    enqueue_batch(queue, jobs)
    if jobs:
        log.info(
            "period_close.queued",
            organizations=sum(len(v) for v in by_end.values()),
            jobs=len(jobs),
        )
    return {"organizations": sum(len(v) for v in by_end.values()), "jobs": len(jobs)}
