"""Sending again what was left behind: failed rows, and pending rows whose job was lost.

A pending row normally belongs to a job that is running or waiting for its retry. When that
job is gone (Redis lost its data, a worker was killed after its last retry), the row would
stay pending forever; :func:`sweep_stale_reports` finds such rows and resends them with the
identifier and value they already have, which Stripe deduplicates if they had landed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
import structlog
from rq import Queue, get_current_job

from .. import ledger
from ..defaults import STALE_MARGIN_SECONDS
from ..models import utcnow
from ..reporter import Reporter
from ..runtime import get_runtime
from ..settings import Settings
from .queue import enqueue_batch, job_options, make_queue

log = structlog.get_logger("sensormeter.recovery")


def stale_after(settings: Settings) -> timedelta:
    """How long a pending row may go untouched before it counts as abandoned."""
    live = settings.job_timeout_seconds * (settings.max_retries + 1) + sum(
        settings.retry_intervals()
    )
    return timedelta(seconds=live + STALE_MARGIN_SECONDS)


def resend_reports(report_ids: list[int]) -> dict[str, Any]:
    """RQ job: send the given ledger rows again (same identifier and value); safe to rerun."""
    runtime = get_runtime()
    job = get_current_job()
    job_id = job.id if job is not None else None
    final_attempt = job is None or not job.retries_left
    reporter = Reporter(runtime.source, runtime.meter, runtime.settings.meter_event_name)
    with runtime.database.connection_context():
        result = reporter.resend(
            runtime.database, report_ids, job_id=job_id, final_attempt=final_attempt
        )
    summary = result.as_dict()
    log.info("resend.completed", job_id=job_id, reports=len(report_ids), outcomes=summary["counts"])
    result.raise_for_retry()
    return summary


def enqueue_resend(settings: Settings, connection: redis.Redis, report_ids: list[int]) -> int:
    """Queue resend jobs for the rows, ``chunk_size`` rows per job; returns the job count."""
    queue = make_queue(settings, connection)
    chunks = [
        report_ids[i : i + settings.chunk_size]
        for i in range(0, len(report_ids), settings.chunk_size)
    ]
    enqueue_batch(
        queue,
        [
            Queue.prepare_data(
                resend_reports,
                args=(chunk,),
                description=f"resend {len(chunk)} ledger rows",
                **job_options(settings, "timeout"),
            )
            for chunk in chunks
        ],
    )
    return len(chunks)


def sweep_stale_reports() -> dict[str, Any]:
    """RQ job (scheduled): resend pending rows that no job will finish."""
    runtime = get_runtime()
    settings = runtime.settings
    with runtime.database.connection_context():
        ids = ledger.ids_to_resend(failed=False, stale_before=utcnow() - stale_after(settings))
    jobs = enqueue_resend(settings, runtime.redis, ids)
    if ids:
        log.warning("sweep.found_stale_pending", reports=len(ids), jobs=jobs)
    return {"stale_pending": len(ids), "jobs": jobs}
